"""SpecBlock: the parallel training forward equals what the decoder computes row by row, greedy
decoding is lossless for every policy and block count (with long acceptances forced by an
oracle), sampled output follows the target's distribution (chi-square), the valid-prefix mask and rank classes do what they say, training saves, loads and
resumes bit-exactly, and the CLI trains one."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from draftvocab.cli import app
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.blockdecode import SpecBlockDecoder
from draftvocab.engine.checkpoints import latest_checkpoint
from draftvocab.engine.decode import SpeculativeDecoder, decoder_for
from draftvocab.engine.drafters import build_draft, load_draft
from draftvocab.engine.drafters.specblock import (
    SpecBlockConfig,
    SpecBlockDraft,
    block_forward,
    rank_class,
)
from draftvocab.engine.train import TrainConfig, collate, encode_conversations, train_draft
from tests.conftest import chi2_critical, exact_joint, make_peaked_target, make_tiny_target

V = 8
CONVERSATIONS = [
    [{"role": "user", "content": f"Tell me about topic number {i}."},
     {"role": "assistant", "content": f"Topic {i} is a fine topic with facts such as {i * 7}."}]
    for i in range(4)
]


@pytest.fixture(scope="module")
def target():
    """As test_decode's: float64 (argmaxes never flip between forwards of different shapes),
    a tiny vocabulary (random drafts accept now and then) and a wide init."""
    return make_tiny_target(dtype=torch.float64, vocab_size=V, eos_token_id=None,
                            bos_token_id=None, initializer_range=0.5)


def _draft(target, keep=None, **kw):
    d2t = t2d = None
    if keep is not None:
        t2d = torch.zeros(V, dtype=torch.bool)
        t2d[keep] = True
        d2t = torch.nonzero(t2d).flatten() - torch.arange(len(keep))
    d = build_draft(target, d2t, t2d, seed=3, config=TrainConfig(drafter="specblock", **kw))
    d = d.double()
    with torch.no_grad():  # a non-zero shift, so the tests see it
        for lin in getattr(d, "shifts", []):
            lin.weight.normal_(0, 0.05)
    return d


def _prompt(target, i=0):
    g = torch.Generator().manual_seed(i)
    return torch.randint(0, V, (14 + i,), generator=g).tolist()


@pytest.mark.parametrize("inherit", [True, False])
def test_training_forward_equals_decoder(target, inherit):
    """Block 1 at anchor n-1 and block 2 anchored at block-1 row K-1 (chain policy), computed
    by the decoder over two rounds (its context cache grown incrementally), equal the rows of
    the parallel training forward over the same tokens."""
    d = _draft(target, inherit=inherit)
    k = d.config.block_size
    dec = SpecBlockDecoder(target, d, blocks=2, policy="chain")
    seen = []
    orig = d.logits
    d.logits = lambda h: seen.append(orig(h)) or seen[-1]
    ids = _prompt(target)
    n1, n2 = 6, len(ids) - 1
    hidden = target.forward(torch.tensor([ids])).hidden[0]
    dec._sampling = None
    dec._reset_draft()
    dec._propose(hidden[:n1], ids[:n1 + 1], 0, n1)
    seen.clear()
    nodes = dec._propose(hidden[n1:n2], ids[:n2 + 1], n1, n2)
    block1, block2 = seen[0][0], seen[1][0]
    assert [x.depth for x in nodes] == list(range(1, 2 * k + 1))
    # The training sequence continues with the drafted chain: block 2's teacher-forced token
    # (at depth K) is then the one the decoder drafted.
    seq = ids[:n2 + 1] + [x.token for x in nodes]
    feats = target.forward(torch.tensor([seq])).hidden
    rows = block_forward(d, feats, torch.tensor([seq]), torch.tensor([len(seq)]), k - 1)
    by_label = {}
    for i, (s, logits, _) in enumerate(rows):
        by_label.setdefault("b1" if i < k else "b2", []).append(logits[0, n2 - 1])
    torch.testing.assert_close(torch.stack(by_label["b1"]), block1, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.stack(by_label["b2"]), block2, rtol=1e-9, atol=1e-9)


class OracleBlock(SpecBlockDraft):
    """Predicts the target's known greedy continuation (wrong where (p + 2) % wrong == 0): the
    row's rotary position is carried in hidden[..., 0] so `logits` can read it."""

    def __init__(self, base, sequence, wrong=5):
        super().__init__(base.config, base.embed_tokens, base.d2t, base.t2d)
        self.load_state_dict(base.state_dict())
        self.sequence, self.wrong = sequence, wrong
        self.to_draft = base.target_to_draft()

    def run(self, hidden, embeds, positions, src, past=None, mask=None):
        out, kvs = super().run(hidden, embeds, positions, src, past, mask)
        out = out.clone()
        out[..., 0] = positions.to(out.dtype)
        return out, kvs

    def rank_logits(self, h, logits):
        """Class 0 (rank 1) where the oracle is right, 3 (terminate) where it is wrong."""
        p = h[..., 0].long() + 2
        wrong = (p % self.wrong == 0).to(h.dtype)
        return 20 * torch.stack([1 - wrong, 0 * wrong, 0 * wrong, wrong], dim=-1)

    def logits(self, h):
        out = torch.full((*h.shape[:-1], self.config.draft_vocab_size), -5.0, dtype=h.dtype)
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in h.shape[:-1]]).view(
                -1, h.dim() - 1).tolist():
            p = int(h[tuple(idx)][0])
            if p + 2 < len(self.sequence):
                tok = self.sequence[p + 2]
                if (p + 2) % self.wrong == 0:
                    tok = (tok + 1) % V
                for t, value in ((tok, 5.0), ((tok + 3) % V, 4.0)):  # 2nd best: branches
                    if self.to_draft[t] >= 0:
                        out[tuple(idx)][self.to_draft[t]] = value
        return out


@pytest.mark.parametrize("keep", [None, [0, 1, 2, 4, 5, 7]], ids=["full", "trimmed"])
@pytest.mark.parametrize("policy", ["rank", "fixed", "chain"])
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_greedy_lossless(target, policy, blocks, keep):
    plain = SpeculativeDecoder(target)
    base = _draft(target, keep)
    total_accepted = total_forwards = 0
    for i in range(3):
        prompt = _prompt(target, i)
        ref = plain.generate(prompt, 40, stop_at_eos=False).tokens
        for draft in (base, OracleBlock(base, prompt + ref)):
            dec = SpecBlockDecoder(target, draft, blocks=blocks, policy=policy)
            res = dec.generate(prompt, 40, stop_at_eos=False)
            assert res.tokens == ref
            if isinstance(draft, OracleBlock):
                total_accepted += sum(res.accept_lengths)
                total_forwards += res.target_forwards
    # The oracle is right 4 times in 5 (fewer when trimmed): long acceptances.
    assert total_accepted / total_forwards > 2.0


def test_sampling_runs_and_follows_seed(target):
    d = _draft(target)
    dec = SpecBlockDecoder(target, d, blocks=2)
    a = dec.generate(_prompt(target), 20, temperature=0.8, seed=1, stop_at_eos=False)
    b = dec.generate(_prompt(target), 20, temperature=0.8, seed=1, stop_at_eos=False)
    assert a.tokens == b.tokens and len(a.tokens) == 20


@pytest.mark.parametrize("keep", [None, [0, 1, 2, 4, 5, 7]], ids=["full", "trimmed"])
def test_sampling_follows_the_targets_distribution(target, keep):
    """Rejection sampling over a drafted block chain: (x2, x3) come from one speculative round
    (x1 from the prefill), so their joint frequencies must match the target's exact one."""
    prompt, n, temperature, runs = [2, 7, 1], 3, 0.7, 600
    exact = exact_joint(target, prompt, n, temperature)
    dec = SpecBlockDecoder(target, _draft(target, keep), blocks=2)
    seen, accepted = Counter(), 0
    for seed in range(runs):
        res = dec.generate(prompt, n, temperature=temperature, seed=seed, stop_at_eos=False)
        seen[tuple(res.tokens[1:])] += 1
        accepted += max(res.accept_lengths) > 1
    assert accepted > runs // 10  # drafted tokens were accepted, not only resampled
    expected = Counter()
    for seq, p in exact.items():
        expected[seq[1:]] += p * runs
    cells = [k for k in expected if expected[k] >= 5]
    chi2 = sum((seen[k] - expected[k]) ** 2 / expected[k] for k in cells)
    assert chi2 < chi2_critical(len(cells) - 1), chi2


def test_rank_class_edges():
    ranks = torch.tensor([1, 2, 4, 5, 10, 11, 500])
    assert rank_class(ranks).tolist() == [0, 1, 1, 2, 2, 3, 3]


def test_ablation_switches(target):
    no_shift = _draft(target, shift=False, rank_head=False)
    assert not hasattr(no_shift, "shifts") and not hasattr(no_shift, "rank_head")
    with pytest.raises(DraftVocabError, match="no rank head"):
        SpecBlockDecoder(target, no_shift, policy="rank")
    assert decoder_for(target, no_shift).policy == "fixed"
    assert decoder_for(target, no_shift, tree=False).policy == "chain"



def test_decoders_drive_only_their_drafter(target):
    """Each drafter names its decoder (`Drafter.decoder`); a decoder handed the other one
    refuses it instead of failing mid-generation."""
    d = _draft(target)
    assert isinstance(decoder_for(target, d), SpecBlockDecoder)
    with pytest.raises(DraftVocabError, match="SpecBlockDecoder"):
        SpeculativeDecoder(target, d)


@pytest.mark.parametrize("blocks", [1, 2])
def test_heldout_tau_replays_chain_decoding(target, blocks):
    """acceptance.chain_tau takes any drafter: for SpecBlock, gamma = blocks x K replays
    chain decoding (block 2 anchored at block 1's last row) exactly."""
    import numpy as np

    from draftvocab.engine.acceptance import chain_tau, prepare_heldout
    from draftvocab.engine.train import Example

    d = _draft(target)
    k = d.config.block_size
    dec = SpecBlockDecoder(target, d, blocks=blocks, policy="chain")
    plain = SpeculativeDecoder(target)
    examples, lengths = [], []
    for i in range(3):
        prompt = _prompt(target, i)
        reply = plain.generate(prompt, 30, stop_at_eos=False).tokens
        ids = np.array([*prompt, *reply], dtype=np.int64)
        examples.append(Example(ids, np.arange(len(ids)) >= len(prompt)))
        lengths += dec.generate(prompt, 30, stop_at_eos=False).accept_lengths
    held = prepare_heldout(target, examples, batch_size=2)
    got = chain_tau(d, held, blocks * k)
    assert got["rounds"] == len(lengths)
    assert got["tau"] == pytest.approx(sum(lengths) / len(lengths))
    with pytest.raises(DraftVocabError, match="two blocks"):
        chain_tau(d, held, 2 * k + 1)


# --- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_target():
    return make_peaked_target()


@pytest.fixture(scope="module")
def examples(big_target):
    ex, _ = encode_conversations(CONVERSATIONS, big_target.tokenizer, max_len=64)
    return ex


def test_valid_prefix_mask_drops_rows_after_a_miss(big_target, examples):
    """With a fresh draft almost every row 0 is wrong: the valid-prefix mask keeps (nearly)
    nothing of rows >= 1, the plain mask keeps everything."""
    from draftvocab.engine.drafters.specblock import block_loss
    from draftvocab.engine.labels import ttt_targets

    batch = collate(examples)
    out = big_target.forward(batch.ids, use_cache=False)
    labels = ttt_targets(out.logits, batch, torch.ones(big_target.vocab_size, dtype=torch.bool),
                         8)
    d = build_draft(big_target, config=TrainConfig(drafter="specblock"))
    rows = block_forward(d, out.hidden.float(), batch.ids, batch.lengths, 1)
    acc0 = None
    kept = {}
    for vp in (True, False):
        _, log = block_loss(d, rows, labels, batch, step_decay=0.8, valid_prefix=vp,
                            rank_weight=1.0, inherit_from=1)
        kept[vp], acc0 = log["kept"], log["acc"][0]
    assert kept[False] == [1.0] * 8
    assert kept[True][0] == 1.0
    assert kept[True][1] <= acc0 + 1e-9  # row 1 kept only where row 0 was right


def test_train_save_load_and_resume_bit_exact(big_target, examples, tmp_path):
    cfg = {"drafter": "specblock", "max_steps": 4, "batch_size": 2, "lr": 3e-3, "max_len": 64}
    whole = train_draft(big_target, examples, tmp_path / "a", config=TrainConfig(**cfg))
    assert len(whole.final_acc) == 4
    train_draft(big_target, examples, tmp_path / "b", config=TrainConfig(**cfg, save_every=2))
    # interrupted after the checkpoint at step 2: resume and compare with the whole run
    import shutil
    shutil.rmtree(tmp_path / "c", ignore_errors=True)
    shutil.copytree(tmp_path / "b" / "checkpoint-2", tmp_path / "c" / "checkpoint-2")
    resumed = train_draft(big_target, examples, tmp_path / "c", config=TrainConfig(**cfg,
                          save_every=2), resume=True)
    assert resumed.resumed_from and latest_checkpoint(tmp_path / "c")
    a = load_draft(tmp_path / "a", big_target).state_dict()
    c = load_draft(tmp_path / "c", big_target).state_dict()
    assert a.keys() == c.keys() and all(torch.equal(a[x], c[x]) for x in a)
    cfg_json = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg_json["drafter"] == "specblock" and cfg_json["block_size"] == 4
    assert isinstance(load_draft(tmp_path / "a", big_target).config, SpecBlockConfig)
    # a changed ablation switch is a different run: resume refuses
    with pytest.raises(DraftVocabError, match="shift"):
        train_draft(big_target, examples, tmp_path / "c",
                    config=TrainConfig(**cfg, save_every=2, shift=False), resume=True)


def test_cli_trains_specblock_and_refuses_export(tmp_path):
    hf = tmp_path / "hf-target"
    t = make_tiny_target()
    t.model.save_pretrained(hf)
    t.tokenizer.save_pretrained(hf)
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))
    runner = CliRunner()
    out = tmp_path / "sb"
    r = runner.invoke(app, ["train", str(data), "--target", str(hf), "-o", str(out),
                            "--drafter", "specblock", "--block-size", "3", "--no-inherit",
                            "--max-steps", "2", "--max-len", "48", "--json"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["block_size"] == 3 and cfg["inherit"] is False
    r = runner.invoke(app, ["export", str(out), "--to", "sglang", "-o", str(tmp_path / "x")])
    assert r.exit_code != 0 and "SpecBlock" in r.output and "Traceback" not in r.output
