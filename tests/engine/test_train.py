"""Draft training: TTT alignment and masks, the loss mask, overfitting, resume, checkpoints, CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from draftvocab.cli import app
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.checkpoints import latest_checkpoint
from draftvocab.engine.drafters import build_draft, load_draft
from draftvocab.engine.drafters.eagle3 import ttt_forward, ttt_loss
from draftvocab.engine.labels import ttt_targets
from draftvocab.engine.train import TrainConfig, collate, encode_conversations, train_draft
from draftvocab.vocab.mapping import mapping_from_ids, write_mapping_files
from tests.conftest import make_peaked_target, make_tiny_target

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": f"Tell me about topic number {i}."},
     {"role": "assistant", "content": f"Topic {i} is a fine topic with facts such as {i * 7}."},
     {"role": "user", "content": "And more?"},
     {"role": "assistant", "content": f"Also fact {i * 3}, and that is all."}]
    for i in range(4)
]


@pytest.fixture(scope="module")
def target():
    return make_peaked_target()


@pytest.fixture(scope="module")
def examples(target):
    ex, skipped = encode_conversations(CONVERSATIONS, target.tokenizer, max_len=128)
    assert len(ex) == 4 and not skipped
    return ex


def _target_argmax_ids(target, examples) -> np.ndarray:
    batch = collate(examples)
    return np.unique(target.forward(batch.ids).logits.argmax(-1).numpy())


@pytest.fixture(scope="module")
def full_cover_mapping(target, examples):
    """Every id of the data and every target argmax kept: all supervised positions count."""
    ids = np.concatenate([e.ids for e in examples] + [_target_argmax_ids(target, examples),
                                                       np.arange(100)])
    return mapping_from_ids(np.unique(ids), target.vocab_size)


@pytest.fixture(scope="module")
def half_mapping(target, examples):
    """Half of the target's argmax ids left out: some supervised positions must be masked."""
    tops = _target_argmax_ids(target, examples)
    keep = np.union1d(np.concatenate([e.ids for e in examples]), tops[::2])
    return mapping_from_ids(keep, target.vocab_size)


def _tensors(m):
    return torch.tensor(m.d2t, dtype=torch.long), torch.tensor(m.t2d, dtype=torch.bool)


def _config(**kw) -> TrainConfig:
    base = {"ttt_steps": 3, "batch_size": 2, "lr": 3e-3, "max_len": 128, "warmup_steps": 2}
    return TrainConfig(**{**base, **kw})


# --- (a) overfitting ---------------------------------------------------------------------------


def test_overfits_a_few_conversations(target, examples, full_cover_mapping, tmp_path):
    d2t, t2d = _tensors(full_cover_mapping)
    res = train_draft(target, examples, tmp_path, d2t=d2t, t2d=t2d,
                      config=_config(max_steps=40, batch_size=4, lr=1e-2))
    log = json.loads((tmp_path / "train_log.json").read_text())["steps"]
    assert len(log) == res.steps == 40
    first, last = log[0], log[-1]
    assert last["loss"] < 0.3 * first["loss"]
    assert first["acc"][0] < 0.2
    assert last["acc"][0] >= 0.5
    assert last["acc"][2] > first["acc"][2] + 0.2  # later TTT steps learn too
    assert last["positions"] == sum(int(e.supervised[2:].sum()) for e in examples)


# --- (b) the TTT attention: alignment and causality --------------------------------------------


def _chain_reference(draft, hidden, ids, t0: int, steps: int) -> list[torch.Tensor]:
    """Chain drafting at t0 as decoding does it: a causal prefix pass, then one token at a
    time at position t0 with a growing KV cache (draft.py's convention)."""
    n = t0 + 1
    causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    logits, h, k, v = draft.step(draft.fuse(hidden[:, :n]), ids[:, 1:n + 1],
                                 torch.arange(n)[None], None, None, causal)
    out = [logits[:, t0]]
    h = h[:, t0:t0 + 1]
    for j in range(1, steps):
        logits, h, k_new, v_new = draft.step(h, ids[:, t0 + 1 + j:t0 + 2 + j],
                                             torch.tensor([[t0 + j]]), k, v, None)
        k, v = torch.cat([k, k_new], dim=2), torch.cat([v, v_new], dim=2)
        out.append(logits[:, 0])
    return out


def test_ttt_step_j_equals_chain_drafting(target, examples):
    draft = build_draft(target, seed=1)
    ids = torch.from_numpy(examples[0].ids)[None]
    hidden = target.forward(ids).hidden
    steps = 4
    with torch.no_grad():
        ttt = ttt_forward(draft, hidden, ids, torch.tensor([ids.shape[1]]), steps)
        for t0 in (0, 5, ids.shape[1] - 1 - steps):
            ref = _chain_reference(draft, hidden, ids, t0, steps)
            for j in range(steps):
                torch.testing.assert_close(ttt[j][:, t0], ref[j], atol=2e-4, rtol=1e-4)


def test_ttt_is_causal(target, examples):
    """Changing tokens from position c on leaves step j's outputs at t with t+1+j < c alone
    (the last token step j at t reads is t+1+j) and changes the first position that reads one."""
    draft = build_draft(target, seed=1)
    ids = torch.from_numpy(examples[1].ids)[None]
    n, c, steps = ids.shape[1], 30, 4
    changed = ids.clone()
    changed[:, c:] = torch.randint(100, 1000, (1, n - c), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([n])
    with torch.no_grad():
        a = ttt_forward(draft, target.forward(ids).hidden, ids, lengths, steps)
        b = ttt_forward(draft, target.forward(changed).hidden, changed, lengths, steps)
    for j in range(steps):
        keep = c - 1 - j  # positions < keep read only tokens < c
        torch.testing.assert_close(a[j][:, :keep], b[j][:, :keep], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(a[j][:, keep], b[j][:, keep], atol=1e-3)


def test_padding_does_not_change_outputs(target, examples):
    draft = build_draft(target, seed=2)
    short, long = sorted(examples[:2] + examples[2:3], key=lambda e: len(e.ids))[::2]
    batch = collate([short, long], pad_id=17)
    assert batch.lengths[0] < batch.lengths[1]
    n = int(batch.lengths[0])
    with torch.no_grad():
        both = ttt_forward(draft, target.forward(batch.ids).hidden, batch.ids, batch.lengths, 3)
        ids = batch.ids[:1, :n]
        alone = ttt_forward(draft, target.forward(ids).hidden, ids, batch.lengths[:1], 3)
    for j in range(3):
        valid = n - 1 - j  # positions whose input token is real
        torch.testing.assert_close(both[j][:1, :valid], alone[j][:, :valid], atol=1e-5,
                                   rtol=1e-5)


# --- (c) labels and the loss mask ---------------------------------------------------------------


def test_labels_are_restricted_to_the_draft_vocabulary(target, examples, half_mapping):
    _d2t, t2d = _tensors(half_mapping)
    batch = collate(examples[:3])
    logits = target.forward(batch.ids).logits
    steps = 3
    labels = ttt_targets(logits, batch, t2d, steps)
    kept = half_mapping.draft_ids
    assert labels.probs.shape == (*batch.ids.shape, half_mapping.k)
    torch.testing.assert_close(labels.probs, torch.softmax(logits[..., kept], dim=-1))
    top = logits.argmax(-1).numpy()
    sup = batch.supervised.numpy()
    lengths = batch.lengths.numpy()
    masked_out_by_vocab = 0
    for j in range(steps):
        got = labels.masks[j].numpy()
        for b in range(len(lengths)):
            for t in range(batch.ids.shape[1]):
                inside = t + 2 + j < lengths[b]
                in_vocab = inside and bool(half_mapping.t2d[top[b, t + 1 + j]])
                expect = inside and sup[b, t + 2 + j] and in_vocab
                assert got[b, t] == expect, (j, b, t)
                masked_out_by_vocab += bool(inside and sup[b, t + 2 + j] and not in_vocab)
    assert masked_out_by_vocab > 0


def test_only_masked_positions_get_gradient(target, examples, half_mapping):
    """User/system text, padding and out-of-vocabulary labels contribute nothing."""
    d2t, t2d = _tensors(half_mapping)
    batch = collate(examples[:2])
    out = target.forward(batch.ids)
    labels = ttt_targets(out.logits, batch, t2d, 2)
    draft = build_draft(target, d2t, t2d)
    step_logits = [x.detach().requires_grad_() for x in
                   ttt_forward(draft, out.hidden, batch.ids, batch.lengths, 2)]
    loss, _, _, counted = ttt_loss(step_logits, labels, 0.8)
    loss.backward()
    for j, x in enumerate(step_logits):
        touched = x.grad.abs().sum(-1) > 0
        assert torch.equal(touched, labels.masks[j]), j
        assert counted[j] == int(labels.masks[j].sum()) > 0
        # no label position lies in user or system text
        assert not (labels.masks[j] & ~torch.roll(batch.supervised, -(2 + j), 1)).any()


# --- (d) resume ---------------------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def _stop_after(n: int):
    def progress(step, total, entry):
        if step == n:
            raise _Interrupt
    return progress


def test_resume_gives_the_same_weights(target, examples, half_mapping, tmp_path):
    d2t, t2d = _tensors(half_mapping)
    cfg = _config(max_steps=6, save_every=2)  # 2 batches per epoch: crosses epochs
    full = tmp_path / "full"
    train_draft(target, examples, full, d2t=d2t, t2d=t2d, config=cfg)
    part = tmp_path / "part"
    with pytest.raises(_Interrupt):
        train_draft(target, examples, part, d2t=d2t, t2d=t2d, config=cfg,
                    progress=_stop_after(5))
    assert latest_checkpoint(part).name == "checkpoint-4"
    assert not (part / "model.safetensors").exists()
    res = train_draft(target, examples, part, d2t=d2t, t2d=t2d, config=cfg, resume=True)
    assert res.resumed_from.endswith("checkpoint-4") and res.steps == 6
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = json.loads((full / "train_log.json").read_text())["steps"]
    log_b = json.loads((part / "train_log.json").read_text())["steps"]
    assert [e["loss"] for e in log_a] == [e["loss"] for e in log_b]
    # ... and a run that differs from the checkpoint's is refused, as is a silent restart
    with pytest.raises(DraftVocabError, match="lr"):
        train_draft(target, examples, part, d2t=d2t, t2d=t2d, config=_config(
            max_steps=6, save_every=2, lr=1e-3), resume=True)
    with pytest.raises(DraftVocabError, match="--resume"):
        train_draft(target, examples, part, d2t=d2t, t2d=t2d, config=cfg)


def test_init_from_starts_at_a_finished_drafts_weights(target, examples, half_mapping,
                                                       tmp_path):
    """--init-from: the run starts at the draft's weights (one step at lr 1e-9 leaves them
    there), with a fresh schedule; tokens go on from the draft's log; the draft is recorded."""
    d2t, t2d = _tensors(half_mapping)
    first = tmp_path / "first"
    train_draft(target, examples, first, d2t=d2t, t2d=t2d, config=_config(max_steps=20, lr=1e-2))
    first_log = json.loads((first / "train_log.json").read_text())
    again = tmp_path / "again"
    train_draft(target, examples, again, d2t=d2t, t2d=t2d, init_from=first,
                config=_config(max_steps=1, lr=1e-9, seed=1))
    a, b = load_file(str(first / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    fresh = build_draft(target, d2t, t2d, seed=1).fc.weight.detach()
    assert not torch.allclose(fresh, b["fc.weight"], atol=1e-3)  # not the seed's fresh init
    log = json.loads((again / "train_log.json").read_text())
    tokens = first_log["steps"][-1]["tokens"]
    assert log["init_from"]["tokens"] == tokens > 0
    assert log["steps"][0]["tokens"] > tokens
    assert log["init_from"]["sha256"] == hashlib.sha256(
        (first / "model.safetensors").read_bytes()).hexdigest()
    # the warm start's first step already predicts what the draft learned; a fresh one does not
    cont = tmp_path / "cont"
    train_draft(target, examples, cont, d2t=d2t, t2d=t2d, init_from=first,
                config=_config(max_steps=1, lr=1e-2))
    scratch = tmp_path / "scratch"
    train_draft(target, examples, scratch, d2t=d2t, t2d=t2d, config=_config(max_steps=1, lr=1e-2))
    warm_loss = json.loads((cont / "train_log.json").read_text())["steps"][0]["loss"]
    cold_loss = json.loads((scratch / "train_log.json").read_text())["steps"][0]["loss"]
    assert warm_loss < 0.5 * cold_loss


def test_init_from_another_vocabulary_keeps_every_trained_row(target, examples, half_mapping,
                                                              full_cover_mapping, tmp_path):
    """--init-from a draft of another mapping (another k, or the same k with other ids): every
    weight but the LM head as trained, the head row of each token both keep as trained, the
    rows of newly kept tokens the target's own (a fresh draft's), and the log says so."""
    d2t, t2d = _tensors(half_mapping)
    train_draft(target, examples, tmp_path / "half", d2t=d2t, t2d=t2d,
                config=_config(max_steps=20, lr=1e-2))
    old = load_file(str(tmp_path / "half" / "model.safetensors"))
    ids = half_mapping.draft_ids.copy()  # same k, one id swapped for one not kept
    ids[-1] = np.setdiff1d(np.arange(target.vocab_size), ids)[-1]
    swapped = mapping_from_ids(np.sort(ids), target.vocab_size)
    for name, m in (("wide", full_cover_mapping), ("swapped", swapped)):
        n_d2t, n_t2d = _tensors(m)
        out = tmp_path / name
        train_draft(target, examples, out, d2t=n_d2t, t2d=n_t2d, init_from=tmp_path / "half",
                    config=_config(max_steps=1, lr=1e-9, seed=1))
        new = load_file(str(out / "model.safetensors"))
        for key in old.keys() - {"lm_head.weight", "d2t", "t2d"}:
            torch.testing.assert_close(new[key], old[key], rtol=0, atol=1e-6)
        assert torch.equal(new["d2t"], n_d2t) and torch.equal(new["t2d"], n_t2d)
        row = {int(t): i for i, t in enumerate(half_mapping.draft_ids)}
        fresh = build_draft(target, n_d2t, n_t2d, seed=1).lm_head.weight.detach()
        shared = [(i, row[int(t)]) for i, t in enumerate(m.draft_ids) if int(t) in row]
        added = [i for i, t in enumerate(m.draft_ids) if int(t) not in row]
        assert shared and added
        mine, theirs = zip(*shared)
        torch.testing.assert_close(new["lm_head.weight"][list(mine)],
                                   old["lm_head.weight"][list(theirs)], rtol=0, atol=1e-6)
        torch.testing.assert_close(new["lm_head.weight"][added], fresh[added], rtol=0, atol=1e-6)
        log = json.loads((out / "train_log.json").read_text())
        assert log["init_from"]["retrim"] == {
            "from_k": len(half_mapping.draft_ids), "to_k": len(m.draft_ids),
            "rows_kept": len(shared), "rows_new": len(added)}


def test_init_from_refuses_another_draft(target, examples, half_mapping, tmp_path):
    d2t, t2d = _tensors(half_mapping)
    train_draft(target, examples, tmp_path / "half", d2t=d2t, t2d=t2d,
                config=_config(max_steps=1))
    with pytest.raises(DraftVocabError, match="another draft .*drafter"):
        train_draft(target, examples, tmp_path / "x", d2t=d2t, t2d=t2d,
                    init_from=tmp_path / "half", config=_config(max_steps=1, drafter="specblock"))
    assert not (tmp_path / "x").exists()


# --- (e) checkpoints ----------------------------------------------------------------------------

SPECFORGE_KEYS = {
    "fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
    "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight",
    "midlayer.post_attention_layernorm.weight",
    *(f"midlayer.self_attn.{p}_proj.weight" for p in "qkvo"),
    *(f"midlayer.mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
}


def test_checkpoints_load_with_specforge_names(target, examples, half_mapping, tmp_path):
    d2t, t2d = _tensors(half_mapping)
    train_draft(target, examples, tmp_path, d2t=d2t, t2d=t2d, config=_config(
        max_steps=3, save_every=2))
    for path in (tmp_path, tmp_path / "checkpoint-2"):
        assert set(load_file(str(path / "model.safetensors"))) == SPECFORGE_KEYS
        draft = load_draft(path, target)
        assert draft.config.draft_vocab_size == half_mapping.k
        assert torch.equal(draft.d2t, d2t)
        config = json.loads((path / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLMEagle3"]
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["step"] == 2 and len(state["log"]) == 2


def test_lm_head_starts_as_the_targets_rows(target, half_mapping):
    d2t, t2d = _tensors(half_mapping)
    draft = build_draft(target, d2t, t2d)
    torch.testing.assert_close(draft.lm_head.weight,
                               target.model.lm_head.weight[half_mapping.draft_ids])
    assert build_draft(target).config.draft_vocab_size == target.vocab_size


def test_bad_config_is_one_error(target, examples, tmp_path):
    with pytest.raises(DraftVocabError, match="ttt_steps"):
        train_draft(target, examples, tmp_path, config=TrainConfig(ttt_steps=0))


# --- (f) CLI ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_target_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf-target")
    t = make_tiny_target()
    t.model.save_pretrained(d)
    t.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CONVERSATIONS))
    return path


def test_cli_train_json(hf_target_dir, data_file, examples, tmp_path):
    ids = np.unique(np.concatenate([e.ids for e in examples] + [np.arange(300)]))
    m = mapping_from_ids(ids, len(make_tiny_target().tokenizer))
    write_mapping_files(tmp_path / "map", m)
    out = tmp_path / "draft"
    r = CliRunner().invoke(app, [
        "train", str(data_file), "--target", str(hf_target_dir), "--mapping",
        str(tmp_path / "map"), "-o", str(out), "--max-steps", "3", "--batch-size", "2",
        "--ttt-steps", "2", "--max-len", "64", "--save-every", "2", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["steps"] == 3 and summary["examples"] == 4
    assert summary["draft_vocab_size"] == m.k and len(summary["final_acc"]) == 2
    assert {"config.json", "model.safetensors", "train_log.json", "checkpoint-2"} <= {
        p.name for p in out.iterdir()}


def test_cli_train_target_layers(hf_target_dir, data_file, tmp_path):
    """--target-layers: the draft reads those layers, says so in config.json (what SGLang and
    vLLM read), and decodes on a target loaded from that config."""
    out = tmp_path / "draft"
    r = CliRunner().invoke(app, [
        "train", str(data_file), "--target", str(hf_target_dir), "-o", str(out),
        "--max-steps", "2", "--batch-size", "2", "--ttt-steps", "2", "--max-len", "64",
        "--target-layers", "0,1,2", "--json"])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    assert make_tiny_target().layers != (0, 1, 2)  # not the default: the option did it
    r = CliRunner().invoke(app, ["generate", "Hello", "--target", str(hf_target_dir),
                                 "--draft", str(out), "--max-new-tokens", "4", "--json"])
    assert r.exit_code == 0, r.output


def test_cli_mapping_vocab_mismatch(hf_target_dir, data_file, tmp_path):
    v = len(make_tiny_target().tokenizer)
    write_mapping_files(tmp_path / "map", mapping_from_ids([1, 2, 3], v + 5))
    r = CliRunner().invoke(app, [
        "train", str(data_file), "--target", str(hf_target_dir), "--mapping",
        str(tmp_path / "map"), "-o", str(tmp_path / "draft"), "--max-steps", "1"])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert f"V={v + 5:,}" in lines[0] and "Traceback" not in r.output
    assert not (tmp_path / "draft").exists()


@pytest.mark.parametrize("args, words", [
    (["--ttt-steps", "0"], "ttt_steps"),
    (["--dtype", "fp16"], "dtype"),
    (["--mapping", "nowhere.pt"], "not found"),
    (["--target-layers", "1,2"], "three comma-separated"),
    (["--target-layers", "1,x,2"], "three comma-separated"),
    (["--target-layers", "0,1,9"], "[0, 4)"),
    (["--init-from", "nowhere"], "not a draft checkpoint"),
])
def test_cli_bad_values(hf_target_dir, data_file, tmp_path, args, words):
    r = CliRunner().invoke(app, ["train", str(data_file), "--target", str(hf_target_dir),
                                 "-o", str(tmp_path / "d"), *args])
    assert r.exit_code == 1 and r.output.startswith("error:"), r.output
    assert words in r.output and len(r.output.strip().splitlines()) == 1


def test_cli_missing_data(tmp_path):
    r = CliRunner().invoke(app, ["train", str(tmp_path / "none.jsonl"), "-o", str(tmp_path)])
    assert r.exit_code == 1 and r.output.startswith("error:") and "none.jsonl" in r.output
