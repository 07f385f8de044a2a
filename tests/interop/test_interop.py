"""Round trips against the real libraries (installed by `make setup` from
requirements-interop.txt, with --no-deps; never sglang, vllm or a CUDA torch): our mapping equals
speculators' own, and our exported drafts load in SpecForge and speculators and give the same
logits as our engine on the same input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from draftvocab.engine.drafters import load_draft, save_draft
from draftvocab.interop import formats
from draftvocab.vocab.mapping import build_mapping
from tests.conftest import make_tiny_target
from tests.interop.test_formats import random_draft

T = 7


@pytest.fixture(scope="module")
def target():
    # Untied head: speculators reads the verifier's lm_head.weight from its safetensors.
    return make_tiny_target(seed=3, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def ours(tmp_path_factory, target):
    path = save_draft(random_draft(target, seed=1), tmp_path_factory.mktemp("d") / "ours")
    return path, load_draft(path, target, int8=False)  # the checkpoint's own weights, exactly


def _inputs(target):
    g = torch.Generator().manual_seed(0)
    aux = torch.randn(1, T, 3 * target.hidden_size, generator=g)
    ids = torch.randint(0, target.vocab_size, (1, T), generator=g)
    return aux, ids


def _fresh_rotary(model):
    """transformers 5.23 loads on the meta device and leaves SpecForge's non-persistent rotary
    caches (not in any checkpoint) uninitialised; SpecForge pins transformers 5.8.1, where
    they survive. Rebuild them as SpecForge's constructor does."""
    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3

    fresh = dict(LlamaForCausalLMEagle3(model.config, attention_backend="sdpa").named_buffers())
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "rotary_emb" in name:
                buf.copy_(fresh[name])


def _our_logits(draft, aux, ids):
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        logits, *_ = draft.step(draft.fuse(aux), ids, torch.arange(T)[None], mask=mask)
    return logits


@pytest.mark.parametrize("k", [1, 50, 300, 1000, 4999])
def test_mapping_equals_speculators(k):
    from speculators.train.vocab_mapping import build_vocab_mappings_from_distribution

    rng = np.random.default_rng(k)
    counts = np.zeros(5000, dtype=np.int64)
    seen = rng.choice(5000, 700, replace=False)
    counts[seen] = rng.zipf(1.3, 700).clip(max=10_000)  # many ties, 4,300 unseen ids
    d2t, t2d = build_vocab_mappings_from_distribution(
        {int(i): int(counts[i]) for i in seen}, k, 5000)
    ours = build_mapping(counts, k)
    assert torch.equal(d2t, torch.from_numpy(ours.d2t.copy()))
    assert torch.equal(t2d, torch.from_numpy(ours.t2d.copy()))


@pytest.fixture()
def no_compile():
    """SpecForge wraps its norm and rotary functions in torch.compile; eager is what we test."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


def test_specforge_loads_our_draft_with_the_same_logits(tmp_path, target, ours, no_compile):
    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3

    path, draft = ours
    out = tmp_path / "specforge"
    formats.export_specforge(path, out)
    model, info = LlamaForCausalLMEagle3.from_pretrained(
        str(out), attention_backend="sdpa", output_loading_info=True)
    assert set(info["missing_keys"]) == {"embed_tokens.weight"}  # the target's, by design
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    _fresh_rotary(model)
    model.eval().load_vocab_mapping(str(out / "vocab_mapping.pt"))
    assert torch.equal(model.d2t, draft.d2t) and torch.equal(model.t2d, draft.t2d)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(target.model.get_input_embeddings().weight)
        aux, ids = _inputs(target)
        hidden = model.project_hidden_states(aux)
        mask = model.prepare_decoder_attention_mask(torch.ones(1, T, dtype=torch.bool), hidden,
                                                    1, T, 0)
        h = model.backbone(model.embed_input_ids(ids), hidden, cache_hidden=None,
                           attention_mask=mask, position_ids=torch.arange(T)[None])
        theirs = model.compute_logits(h)
    torch.testing.assert_close(theirs, _our_logits(draft, aux, ids), rtol=1e-4, atol=1e-4)


def test_specforge_loads_the_sglang_export(tmp_path, target, ours, no_compile):
    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3

    path, draft = ours
    formats.export_sglang(path, tmp_path / "sglang")
    model = LlamaForCausalLMEagle3.from_pretrained(str(tmp_path / "sglang"),
                                                   attention_backend="sdpa")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(model.d2t, draft.d2t) and torch.equal(model.t2d, draft.t2d)
    torch.testing.assert_close(model.fc.weight.float(), draft.fc.weight, rtol=1e-2, atol=1e-2)


def test_speculators_loads_our_draft_with_the_same_logits(tmp_path, target, ours):
    from speculators import SpeculatorModel, SpeculatorModelConfig

    path, draft = ours
    verifier = tmp_path / "verifier"
    target.model.save_pretrained(str(verifier))
    out = tmp_path / "vllm"
    formats.export_speculators(path, out, verifier=str(verifier))
    config = SpeculatorModelConfig.from_pretrained(str(out))
    config.transformer_layer_config._attn_implementation = "eager"  # CPU: no flex attention
    model = SpeculatorModel.from_pretrained(str(out), config=config).eval()
    assert torch.equal(model.d2t, draft.d2t) and torch.equal(model.t2d, draft.t2d)
    # The embedding is the verifier's (vLLM shares the target's). speculators copies it in only
    # over a NaN-initialised tensor, which transformers 5.23 (speculators pins <= 5.19) no
    # longer leaves behind; share it as vLLM does.
    with torch.no_grad():
        model.embed_tokens.weight.copy_(target.model.get_input_embeddings().weight)
    aux, ids = _inputs(target)
    captured = []
    hook = model.lm_head.register_forward_hook(lambda _m, _i, o: captured.append(o))
    with torch.no_grad():
        model(hidden_states=aux, input_ids=ids, document_ids=torch.zeros_like(ids), ttt_steps=1)
    hook.remove()
    torch.testing.assert_close(captured[0], _our_logits(draft, aux, ids), rtol=1e-4, atol=1e-4)


def test_import_reads_checkpoints_saved_by_specforge_and_speculators(tmp_path, target, ours,
                                                                       no_compile):
    """Checkpoints written by the libraries' own save_pretrained (embeddings, their buffers
    and config fields included) import into our engine with the same logits."""
    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3
    from speculators import SpeculatorModel, SpeculatorModelConfig

    path, draft = ours
    aux, ids = _inputs(target)
    want = _our_logits(draft, aux, ids)
    formats.export_specforge(path, tmp_path / "sf")
    model = LlamaForCausalLMEagle3.from_pretrained(str(tmp_path / "sf"), attention_backend="sdpa")
    model.save_pretrained(str(tmp_path / "sf-saved"))
    formats.import_draft(tmp_path / "sf-saved", tmp_path / "a")
    torch.testing.assert_close(_our_logits(load_draft(tmp_path / "a", target, int8=False), aux, ids), want)

    target.model.save_pretrained(str(tmp_path / "verifier"))
    formats.export_speculators(path, tmp_path / "vllm", verifier=str(tmp_path / "verifier"))
    config = SpeculatorModelConfig.from_pretrained(str(tmp_path / "vllm"))
    model = SpeculatorModel.from_pretrained(str(tmp_path / "vllm"), config=config)
    model.save_pretrained(str(tmp_path / "vllm-saved"))
    summary = formats.import_draft(tmp_path / "vllm-saved", tmp_path / "b")
    assert summary["format"] == "speculators"
    torch.testing.assert_close(_our_logits(load_draft(tmp_path / "b", target, int8=False), aux, ids), want)


# --- supervision parity with SpecForge's own preprocessing ----------------------------------


def _specforge_supervised(tok, template: str, messages: list[dict], tools=None,
                          **kwargs) -> list[int] | None:
    """SpecForge's loss-masked ids for one conversation (one at a time: its batch function
    zips `tools` with the conversations and drops empty ones, which would misalign a batch)."""
    import warnings

    from specforge.data.preprocessing import preprocess_conversations
    from specforge.data.template import TEMPLATE_REGISTRY

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dropping leading 'assistant' message", ...
        res = preprocess_conversations(tok, [messages], TEMPLATE_REGISTRY.get(template),
                                       max_length=1_000_000, tools=[tools or []],
                                       **{k: [v] for k, v in kwargs.items()})
    if not res["input_ids"]:
        return None
    return res["input_ids"][0][0][res["loss_mask"][0][0].bool()].tolist()


def _with_newline_after(tok, ids: list[int], token: str) -> list[int]:
    """SpecForge's qwen templates end a turn with "<|im_end|>\\n": the newline is supervised
    too, though generation stops at <|im_end|> and the model never writes it."""
    end, nl = tok.convert_tokens_to_ids(token), tok.encode("\n", add_special_tokens=False)
    out = []
    for t in ids:
        out += [t, *nl] if t == end else [t]
    return out


@pytest.fixture(scope="module")
def sharegpt_200():
    from draftvocab.chat.conversations import read_conversations
    from draftvocab.engine.presets import get_preset

    path = get_preset("llama3.1-8b").dataset_path()
    convs = [c.messages for c in read_conversations(path, skip_bad_lines=True,
                                                    max_samples=200, seed=7)]
    # The case must be in the sample: ShareGPT splits long chats, so about a third of
    # its conversations open with an assistant turn that answers no prompt.
    assert sum(c[0]["role"] == "assistant" for c in convs) > 30
    return convs


@pytest.mark.parametrize("kind, template, specforge_name, kwargs", [
    ("llama3", "meta-llama", "llama3", {"date_string": "26 Jul 2024"}),
    ("qwen", "Qwen-Qwen2.5", "qwen", {}),
])
def test_sharegpt_supervision_matches_specforge(load_tok, sharegpt_200, kind, template,
                                                specforge_name, kwargs):
    from draftvocab.chat.spans import ChatSpans

    tok = load_tok(kind, template)
    spans = ChatSpans(tok, template_kwargs=kwargs)
    for messages in sharegpt_200:
        ids, mask = spans.supervised_tokens(messages)
        ours = ids[mask].tolist()
        theirs = _specforge_supervised(tok, specforge_name, messages, **kwargs)
        if kind == "qwen":
            ours = _with_newline_after(tok, ours, "<|im_end|>")
        assert ours == theirs
    # Keeping the leading turns (the old default) is what made the two disagree.
    keep = ChatSpans(tok, template_kwargs=kwargs, leading_assistant="keep")
    leading = next(m for m in sharegpt_200 if m[0]["role"] == "assistant")
    ids, mask = keep.supervised_tokens(leading)
    assert mask.sum() > spans.supervised_tokens(leading)[1].sum()


def test_specforge_thinking_parser_differs_only_where_documented(load_tok):
    from draftvocab.chat.spans import ChatSpans
    from tests.chat.test_spans_generated import PARALLEL, Q, chat

    tok = load_tok("qwen", "Qwen-Qwen3")
    spans = ChatSpans(tok)
    think = {"role": "assistant", "reasoning_content": "Add them.", "content": "4."}
    same = [{"messages": [Q, think]}, PARALLEL,
            {"messages": [Q, {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4."}]}]
    for record in same:
        c = chat(record)
        ids, mask = spans.supervised_tokens(c.messages, tools=c.tools)
        assert _with_newline_after(tok, ids[mask].tolist(), "<|im_end|>") == \
            _specforge_supervised(tok, "qwen3-thinking", c.messages, c.tools)
    # Multi-turn: SpecForge renders the conversation once, and Qwen3's template drops turn 1's
    # reasoning there; the target did write it, so we count it (from turn 1's own render).
    multi = chat({"messages": [Q, think, {"role": "user", "content": "And 3+3?"},
                               {**think, "reasoning_content": "Add again.", "content": "6."}]})
    theirs = _specforge_supervised(tok, "qwen3-thinking", multi.messages)
    enc = lambda t: tok.encode(t, add_special_tokens=False)
    assert theirs == enc("4.<|im_end|>\n<think>\nAdd again.\n</think>\n\n6.<|im_end|>\n")
    ids, mask = spans.supervised_tokens(multi.messages)
    assert ids[mask].tolist() == enc("<think>\nAdd them.\n</think>\n\n4.<|im_end|>"
                                     "<think>\nAdd again.\n</think>\n\n6.<|im_end|>")
