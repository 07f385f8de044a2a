"""Supervised-token masks, proved token by token on hand-checked renders of real templates."""

from __future__ import annotations

import numpy as np
import pytest

from draftvocab.chat.spans import ChatSpans, SpanError
from draftvocab.core.errors import DraftVocabError
from tests.conftest import TEMPLATE_FILES

KW = {"date_string": "26 Jul 2024"}
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": " Hello!\n"},
    {"role": "user", "content": "Say 42"},
    {"role": "assistant", "content": "42"},
]


def marked(tok, messages, **kw):
    """Decoded tokens, supervised ones prefixed with '*'."""
    ids, mask = ChatSpans(tok, **{"template_kwargs": KW, **kw}).supervised_tokens(messages)
    assert ids.dtype == np.int64 and mask.dtype == bool and ids.shape == mask.shape
    return [("*" if m else "") + tok.decode([i]) for i, m in zip(ids.tolist(), mask)]


def supervised(tokens):
    return [t[1:] for t in tokens if t.startswith("*")]


def test_llama31_mask_token_by_token(load_tok):
    toks = marked(load_tok("llama3", "meta-llama"), CONV)
    # Llama-3.1 trims content; headers, system/user text and the date line never count.
    assert toks[-21:] == [
        "<|start_header_id|>", "assistant", "<|end_header_id|>", "\n\n", "*Hello", "*!",
        "*<|eot_id|>", "<|start_header_id|>", "user", "<|end_header_id|>", "\n\n", "Say", " ",
        "42", "<|eot_id|>", "<|start_header_id|>", "assistant", "<|end_header_id|>", "\n\n",
        "*42", "*<|eot_id|>",
    ]
    assert supervised(toks) == ["Hello", "!", "<|eot_id|>", "42", "<|eot_id|>"]
    assert toks[toks.index("*Hello") - 4:toks.index("*Hello")] == [
        "<|start_header_id|>", "assistant", "<|end_header_id|>", "\n\n"]
    assert toks[-2:] == ["*42", "*<|eot_id|>"]


def test_llama31_exclude_eot(load_tok):
    toks = marked(load_tok("llama3", "meta-llama"), CONV, include_eot=False)
    assert supervised(toks) == ["Hello", "!", "42"]


def test_qwen3_think_block_is_generated_unless_the_prompt_holds_it(load_tok):
    tok = load_tok("qwen", "Qwen-Qwen3")
    think = ["<think>", "\n\n", "</think>", "\n\n"]
    # Thinking on (Qwen3's default): after "<|im_start|>assistant\n" the model writes the
    # (empty) think block itself, in every turn.
    assert supervised(marked(tok, CONV)) == [
        *think, " Hello", "!\n", "<|im_end|>", *think, "4", "2", "<|im_end|>"]
    # Thinking off: the template puts the block into the generation prompt.
    toks = marked(tok, CONV, template_kwargs={**KW, "enable_thinking": False})
    assert supervised(toks) == [" Hello", "!\n", "<|im_end|>", "4", "2", "<|im_end|>"]
    # The content rule counts only the content, the injected block being scaffold to it.
    toks = marked(tok, CONV, supervise="content")
    assert supervised(toks) == [" Hello", "!\n", "<|im_end|>", "4", "2", "<|im_end|>"]
    assert toks[-10:] == ["assistant", "\n", "<think>", "\n\n", "</think>", "\n\n", "*4", "*2",
                          "*<|im_end|>", "\n"]


def test_content_rule_reports_a_template_that_rewrites_earlier_reasoning(load_tok):
    conv = [{"role": "user", "content": "a"},
            {"role": "assistant", "content": "<think>hmm</think>\n\nanswer"},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]
    # Qwen3 drops the reasoning of earlier turns: content is rewritten, not just trimmed.
    with pytest.raises(SpanError) as err:
        ChatSpans(load_tok("qwen", "Qwen-Qwen3"), supervise="content").supervise(conv)
    assert err.value.reason == "template_rewrites_content"
    sup = ChatSpans(load_tok("qwen", "Qwen-Qwen3")).supervise(conv)  # generated: each turn's own
    assert len(sup.chats) == 2 and "hmm" in sup.chats[0].text


def test_mistral_nemo_moves_system_next_to_last_user(load_tok):
    tok = load_tok("llama3", "mistralai")
    conv = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Ciao"}, {"role": "user", "content": "Last"}]
    text = ChatSpans(tok, supervise="content").supervise(conv).chats[0].text
    assert text.index("SYS") > text.index("Ciao")  # not prefix-stable: system moved late
    for rule in ("generated", "content"):
        toks = marked(tok, conv, supervise=rule)
        assert supervised(toks) == ["Yo", "<|eot_id|>", "C", "iao", "<|eot_id|>"]
    # Generated: "Ciao" was written after "[INST]SYS\n\nBye[/INST]", but a render ending in
    # the reply has no system prompt at all: the prompt is no prefix of it, and still the
    # reply is found where it starts.
    spans = ChatSpans(tok)
    prompt = spans._render(conv[:4], True, None, {})
    assert "SYS" in prompt and "SYS" not in spans.supervise(conv).chats[-1].text


def test_gemma_without_system_role_folds_system_into_first_user(load_tok):
    tok = load_tok("qwen", "google")
    for rule in ("generated", "content"):
        sup = ChatSpans(tok, supervise=rule).supervise(CONV)
        assert sup.chats[0].text.startswith("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>")
        assert [c.text[a:b] for c in sup.chats for a, b in c.spans] == ["Hello!", "42"]


def test_deepseek_r1_and_phi(load_tok):
    tok = load_tok("llama3", "deepseek")
    assert supervised(marked(tok, CONV)) == [" Hello", "!\n", "42"]  # its EOS is no llama3 token
    tok = load_tok("llama3", "microsoft")
    assert supervised(marked(tok, CONV)) == [" Hello", "!\n", "42"]


@pytest.mark.parametrize("kind", ["llama3", "qwen"])
@pytest.mark.parametrize("template", TEMPLATE_FILES)
def test_every_template_supervises_the_answers_and_nothing_of_the_prompt(load_tok, kind,
                                                                          template):
    tok = load_tok(kind, template.split(".jinja")[0])
    conv = [{"role": "user", "content": "Tell me a joke."},
            {"role": "assistant", "content": "Why did the chicken cross the road?"},
            {"role": "user", "content": "Why?"},
            {"role": "assistant", "content": "To get to the other side. 1234"}]
    answers = ["Why did the chicken cross the road?", "To get to the other side. 1234"]
    content = ChatSpans(tok, template_kwargs=KW, supervise="content").supervise(conv)
    assert [c.text[a:b] for c in content.chats for a, b in c.spans] == answers
    spans = ChatSpans(tok, template_kwargs=KW)
    found = [c.text[a:b] for c in spans.supervise(conv).chats for a, b in c.spans]
    assert len(found) == 2 and all(a in f for a, f in zip(answers, found))
    ids, mask = spans.supervised_tokens(conv)
    text = tok.decode(ids[mask].tolist())
    assert answers[0] in text and "Tell me" not in text and "Why?" not in text
    assert "user" not in text and "assistant" not in text


@pytest.mark.parametrize("case", ["upper", "lower", "title"])
@pytest.mark.parametrize("hex_part", ["000000000000", None])
def test_template_that_rewrites_content(load_tok, monkeypatch, case, hex_part):
    # The probe's answers ("2 + 2 = 4.") have no letters: only the stand-in content can show
    # that the template changes case, whatever its random part draws (all digits included).
    if hex_part is not None:
        monkeypatch.setattr("secrets.token_hex", lambda n: hex_part)
    tok = load_tok("llama3")
    tok = tok.__class__(tokenizer_object=tok.backend_tokenizer)
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content | " + case
                         + " }}{% endfor %}")
    with pytest.raises(DraftVocabError, match="cannot locate assistant spans"):
        ChatSpans(tok, supervise="content")
    # Generated: what the template writes is what the model was trained to write; the turn is
    # noted when its content does not appear as given ("Hello" | title is itself).
    sup = ChatSpans(tok).supervise([{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "Hello"}])
    chat = sup.chats[0]
    written = getattr(str, case)("Hello")
    assert [chat.text[a:b] for a, b in chat.spans] == [f"<assistant>{written}"]
    assert sup.notes == (() if written == "Hello" else ("content_not_rendered",))


def test_tokenizer_without_chat_template(load_tok):
    tok = load_tok("llama3")
    bare = tok.__class__(tokenizer_object=tok.backend_tokenizer)
    with pytest.raises(DraftVocabError, match="has no chat template"):
        ChatSpans(bare)


def test_no_assistant_turn_is_a_span_error(load_tok):
    spans = ChatSpans(load_tok("llama3", "meta-llama"), template_kwargs=KW)
    with pytest.raises(SpanError) as err:
        spans.supervise([{"role": "user", "content": "hello"}])
    assert err.value.reason == "no_assistant_turn"


def test_leading_assistant_turns_answer_no_prompt(load_tok):
    spans = ChatSpans(load_tok("llama3", "meta-llama"), template_kwargs=KW)
    conv = [{"role": "system", "content": "S"}, {"role": "assistant", "content": "Unprompted."},
            {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    sup = spans.supervise(conv)
    assert sup.left_out == ("Unprompted.",)
    assert [c.text[a:b] for c in sup.chats for a, b in c.spans] == ["A"]
    assert "Unprompted." not in sup.chats[0].text  # dropped from the text too, as SpecForge
    keep = ChatSpans(spans.tokenizer, template_kwargs=KW, leading_assistant="keep")
    sup = keep.supervise(conv)
    assert sup.left_out == () and [c.text[a:b] for c in sup.chats for a, b in c.spans] == [
        "Unprompted.", "A"]
    only = spans.supervise(conv[:2])  # nothing answers a prompt: nothing to supervise
    assert only.chats == () and only.left_out == ("Unprompted.",)


def test_content_that_contains_template_markup(load_tok):
    # Content quoting the template's own delimiters must not confuse the span walk.
    tok = load_tok("qwen", "Qwen-Qwen2.5")
    content = "Use <|im_start|>assistant\\n and <|im_end|> literally"
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]
    for rule in ("content", "generated"):
        chat = ChatSpans(tok, supervise=rule).supervise(conv).chats[0]
        assert [chat.text[a:b] for a, b in chat.spans] == [content]


# --- windows: encoding only the slices around assistant contents ------------------------------

# Contents that sit right against added tokens, quote them literally, or are empty/whitespace.
EDGE = [
    [{"role": "system", "content": "Sys <|eot_id|> <|im_end|> text"},
     {"role": "user", "content": "Quote the tokens"},
     {"role": "assistant", "content": "<|eot_id|> and <|im_end|> and <|im_start|>user"}],
    [{"role": "user", "content": "Empty?"}, {"role": "assistant", "content": ""},
     {"role": "user", "content": "Spaces?"}, {"role": "assistant", "content": "  \n "}],
    [{"role": "user", "content": "emoji"}, {"role": "assistant", "content": "done 🎉"},
     {"role": "user", "content": "?"}, {"role": "assistant", "content": "?<b>x</b>\n\n"}],
]


@pytest.fixture(scope="module")
def sharegpt_sample():
    from draftvocab.chat.conversations import read_conversations
    from draftvocab.engine.presets import get_preset

    path = get_preset("llama3.1-8b").dataset_path()
    return [c.messages for c in read_conversations(path, skip_bad_lines=True, max_samples=60,
                                                    seed=1)]


@pytest.mark.parametrize("kind", ["llama3", "qwen"])
@pytest.mark.parametrize("template", TEMPLATE_FILES)
def test_windows_give_exactly_each_turns_own_whole_text_tokens(load_tok, kind, template,
                                                               sharegpt_sample):
    """Counting encodes windows of the grouped texts; the rule is defined on each turn's own
    render, encoded whole. The two must agree token for token."""
    tok = load_tok(kind, template.removesuffix(".jinja"))
    fast = ChatSpans(tok, template_kwargs=KW)
    whole = ChatSpans(tok, template_kwargs=KW, windows=False)
    assert fast._added is not None and whole._added is None
    encode = tok.backend_tokenizer.encode
    skipped_chars = 0
    for messages in [*EDGE, *sharegpt_sample]:
        try:
            grouped = fast.supervise(messages)
        except SpanError:
            continue
        expected = []
        for turn in whole.supervise(messages, grouped=False).chats:
            ids, mask = whole.encode(turn)
            expected += ids[mask].tolist()
        got = []
        for chat in grouped.chats:
            for w in fast.windows(chat):
                enc = encode(w.text, add_special_tokens=False)
                for r in fast.token_ranges(enc, w, enc.ids):
                    got += enc.ids[r.start:r.stop]
            skipped_chars += len(chat.text) - sum(len(w.text) for w in fast.windows(chat))
        assert got == expected, messages
    assert skipped_chars > 0  # user and system text was really left out


def test_windows_fall_back_to_whole_text_for_position_dependent_tokenizers():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁": 1, "h": 2, "i": 3, "▁h": 4, "▁hi": 5, "<eot>": 6}
    backend = Tokenizer(models.BPE(vocab, [("▁", "h"), ("▁h", "i")], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eot>")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<eot>"
                         "{% endfor %}")
    spans = ChatSpans(tok)
    (rendered,) = spans.supervise([{"role": "user", "content": "hi"},
                                   {"role": "assistant", "content": "hi"}]).chats
    assert spans._added is None
    assert spans.windows(rendered) == [rendered]


def test_llama31_generated_tokens_are_the_content_rules_on_sharegpt(load_tok, sharegpt_sample):
    """Content + <|eot_id|> is all Llama-3.1 writes: on real ShareGPT the two rules agree token
    for token (with the leading turns kept, as the content rule always did)."""
    tok = load_tok("llama3", "meta-llama")
    generated = ChatSpans(tok, template_kwargs=KW, leading_assistant="keep")
    content = ChatSpans(tok, template_kwargs=KW, supervise="content", leading_assistant="keep")
    leading = 0
    for messages in sharegpt_sample:
        a_ids, a_mask = generated.supervised_tokens(messages)
        b_ids, b_mask = content.supervised_tokens(messages)
        assert a_ids[a_mask].tolist() == b_ids[b_mask].tolist()
        leading += messages[0]["role"] == "assistant"
    assert leading > 5  # the sample has leading turns, which both rules count under keep
