"""The generated-token rule on real reasoning and tool-use templates, token by token.

Each expected value is the text the target writes after its generation prompt, spelled out by
hand from the model's documented output format and tokenised on its own by the tokenizer: a
reference independent of how `spans.py` finds it. Templates without a matching tokenizer here
(gpt-oss, Hermes-3, DeepSeek, Mistral-Small) get the Qwen or Llama-3 tokenizer with the
template's own special tokens added, as the model's real tokenizer has them.
"""

from __future__ import annotations

from collections import Counter

import pytest

from draftvocab.chat.messages import DEFAULT_ROLES, ColumnMap, record_to_chat
from draftvocab.chat.spans import ChatSpans, SpanError

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"}}, "required": ["city"]}}}]
Q = {"role": "user", "content": "What is 2+2?"}
GPT_OSS = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>")
CHATML = ("<|im_start|>", "<|im_end|>")
DEEPSEEK = ("<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>")
MISTRAL = ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]",
           "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
           "[TOOL_RESULTS]", "[TOOL_CONTENT]", "[/TOOL_RESULTS]")


def chat(record: dict):
    """A record as the reader gives it to the counter (reasoning names, tool-call shapes)."""
    return record_to_chat(record, "test record", ColumnMap(), DEFAULT_ROLES)


def supervised(spans: ChatSpans, record: dict) -> list[int]:
    c = chat(record)
    ids, mask = spans.supervised_tokens(c.messages, tools=c.tools,
                                        template_kwargs=c.template_kwargs)
    return ids[mask].tolist()


def reference(tok, *texts: str) -> list[int]:
    return [i for t in texts for i in tok.encode(t, add_special_tokens=False)]


@pytest.fixture(scope="module")
def qwen3(load_tok):
    tok = load_tok("qwen", "Qwen-Qwen3")
    return tok, ChatSpans(tok)


QWEN3_4 = "<think>\nAdd them.\n</think>\n\n4.<|im_end|>"


@pytest.mark.parametrize("assistant", [
    {"role": "assistant", "reasoning_content": "Add them.", "content": "4."},
    {"role": "assistant", "reasoning": "Add them.", "content": "4."},
    {"role": "assistant", "thinking": "Add them.", "content": "4."},
    {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4."},  # inline, R1 style
    {"role": "assistant", "reasoning_content": "Add them.",
     "content": [{"type": "text", "text": "4"}, {"type": "text", "text": "."}]},
], ids=["reasoning_content", "reasoning", "thinking", "inline", "content_parts"])
def test_qwen3_reasoning_in_a_field_or_inline(qwen3, assistant):
    tok, spans = qwen3
    assert supervised(spans, {"messages": [Q, assistant]}) == reference(tok, QWEN3_4)


def test_qwen3_multi_turn_counts_every_turns_reasoning_once(qwen3):
    tok, spans = qwen3
    record = {"messages": [
        Q, {"role": "assistant", "reasoning_content": "Add them.", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "reasoning_content": "Add again.", "content": "6."}]}
    c = chat(record)
    sup = spans.supervise(c.messages)
    # Qwen3 drops turn 1's reasoning once turn 2 follows: turn 1 keeps its own text.
    assert len(sup.chats) == 2 and sup.notes == ()
    assert supervised(spans, record) == reference(
        tok, QWEN3_4, "<think>\nAdd again.\n</think>\n\n6.<|im_end|>")
    old = ChatSpans(tok, supervise="content")
    with pytest.raises(SpanError, match="rewritten"):  # the content rule could not count it
        old.supervise(chat({"messages": [
            Q, {"role": "assistant", "content": "<think>\nx\n</think>\n\n4."},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}).messages)


PARALLEL = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "reasoning_content": "Two calls.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "24C"},
    {"role": "assistant", "content": "Paris 18C, Rome 24C."}]}


def test_qwen3_parallel_tool_calls_results_and_final_answer(qwen3):
    tok, spans = qwen3
    call = '<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "{}"}}}}\n</tool_call>'
    assert supervised(spans, PARALLEL) == reference(
        tok, "<think>\nTwo calls.\n</think>\n\n" + call.format("Paris") + "\n"
        + call.format("Rome") + "<|im_end|>",
        "<think>\n\n</think>\n\nParis 18C, Rome 24C.<|im_end|>")


def test_template_kwargs_per_record_win_over_the_datasets(load_tok):
    tok = load_tok("qwen", "Qwen-Qwen3")
    no_think = ChatSpans(tok, template_kwargs={"enable_thinking": False})
    record = {"messages": [Q, {"role": "assistant", "content": "4."}]}
    # With thinking off, the empty think block is part of the prompt, not generated.
    assert supervised(no_think, record) == reference(tok, "4.<|im_end|>")
    thinking = {**record, "chat_template_kwargs": {"enable_thinking": True}}
    assert supervised(no_think, thinking) == reference(
        tok, "<think>\n\n</think>\n\n4.<|im_end|>")


def test_llama31_tool_call_ipython_result_and_answer(load_tok):
    tok = load_tok("llama3", "meta-llama")
    spans = ChatSpans(tok)
    record = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": '{"city": "Paris"}'}}]},
        {"role": "ipython", "content": "18C"},
        {"role": "assistant", "content": "It is 18C."}]}
    assert supervised(spans, record) == reference(
        tok, '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
        "It is 18C.<|eot_id|>")
    parallel = {**PARALLEL, "messages": PARALLEL["messages"]}
    c = chat(parallel)
    with pytest.raises(SpanError) as exc:  # the template's own refusal, reported as such
        spans.supervise(c.messages, tools=c.tools)
    assert exc.value.reason == "template_error" and "single tool-calls" in str(exc.value)


def test_gpt_oss_channels_and_a_tool_call_whose_analysis_later_turns_drop(load_tok):
    tok = load_tok("qwen", "openai-gpt-oss", GPT_OSS)
    spans = ChatSpans(tok)
    analysis = "<|channel|>analysis<|message|>{}<|end|><|start|>assistant"
    assert supervised(spans, {"messages": [
        Q, {"role": "assistant", "thinking": "Add them.", "content": "4."}]}) == reference(
        tok, analysis.format("Add them.") + "<|channel|>final<|message|>4.<|return|>")
    record = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "reasoning_content": "Need the weather.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C"},
        {"role": "assistant", "content": "It is 18C."}]}
    # gpt-oss renders a tool call's analysis only while no final answer follows it: the
    # generation prompt of the answer is then no prefix of the full render.
    assert supervised(spans, record) == reference(
        tok, analysis.format("Need the weather.") + " to=functions.get_weather<|channel|>"
        'commentary json<|message|>{"city": "Paris"}<|call|>',
        "<|channel|>final<|message|>It is 18C.<|return|>")


def test_hermes3_tool_use_template_with_per_record_tools(load_tok):
    tok = load_tok("llama3", "NousResearch-Hermes-3", CHATML)
    spans = ChatSpans(tok)  # its probe needs tools: checked with one
    record = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C"},
        {"role": "assistant", "content": "It is 18C."}]}
    assert supervised(spans, record) == reference(
        tok, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>", "It is 18C.<|im_end|>")
    with pytest.raises(SpanError, match="refused"):  # no tools: Hermes-3 cannot render
        spans.supervise(chat({"messages": record["messages"]}).messages)


def test_mistral_small_tool_call_ids_and_args(load_tok):
    tok = load_tok("qwen", "Mistral-Small", MISTRAL)
    tok.bos_token, tok.eos_token = "<s>", "</s>"  # the template writes them by these names
    spans = ChatSpans(tok)
    record = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "abc123def", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "abc123def", "content": "18C"},
        {"role": "assistant", "content": "It is 18C."}]}
    assert supervised(spans, record) == reference(
        tok, '[TOOL_CALLS]get_weather[CALL_ID]abc123def[ARGS]{"city": "Paris"}</s>',
        "It is 18C.</s>")


def test_deepseek_reasoning_the_template_never_renders_is_reported(load_tok):
    tok = load_tok("llama3", "deepseek-ai-DeepSeek-R1", DEEPSEEK)
    spans = ChatSpans(tok)
    c = chat({"messages": [Q, {"role": "assistant",
                               "content": "<think>\nAdd them.\n</think>\n\n4."}]})
    sup = spans.supervise(c.messages)
    # Its prompt opens <think>, its render strips the reasoning even from the last turn:
    # what remains is counted, and the turn is noted, never silently short.
    assert sup.notes == ("reasoning_not_rendered",)
    ids, mask = spans.supervised_tokens(c.messages)
    assert ids[mask].tolist() == reference(tok, "\n\n4.<｜end▁of▁sentence｜>")


def test_glm_has_no_end_of_turn_token(load_tok):
    tok = load_tok("qwen", "GLM-4.6", ("[gMASK]", "<sop>", "<|user|>", "<|assistant|>",
                                       "<|system|>", "<|observation|>"))
    spans = ChatSpans(tok)
    record = {"messages": [Q, {"role": "assistant", "reasoning_content": "Add them.",
                               "content": "4."}]}
    # GLM's turn ends where the model writes the next role token (<|user|>), which the
    # template renders as the next message's: nothing after the answer is supervised.
    assert supervised(spans, record) == reference(tok, "\n<think>Add them.</think>\n4.")


def test_counting_reports_unrendered_turns_and_template_refusals(load_tok):
    from draftvocab.vocab.counts import count_tokens

    tok = load_tok("qwen", "Qwen-Qwen2.5")  # Qwen2.5 has no reasoning at all
    spans = ChatSpans(tok)
    convs = [chat({"messages": [Q, {"role": "assistant", "reasoning_content": "R",
                                    "content": "4."}]}).messages] * 3
    c = count_tokens(convs, spans, len(tok), workers=1)
    assert c.metadata["turn_notes"] == {"reasoning_not_rendered": 3}
    assert c.total == 3 * len(reference(tok, "4.<|im_end|>"))


def test_counts_by_rule_on_a_reasoning_and_tool_set(load_tok):
    """The numbers the issue named, on the kinds of record it named: the content rule misses
    reasoning, think tags, tool-call markup and JSON; the generated rule counts them."""
    from draftvocab.vocab.counts import count_tokens

    tok = load_tok("qwen", "Qwen-Qwen3")
    records = [PARALLEL, {"messages": [Q, {"role": "assistant", "reasoning_content":
                                           "Add them.", "content": "4."}]}]
    convs = [chat(r) for r in records]
    new = count_tokens(convs, ChatSpans(tok), len(tok), workers=1)
    old = count_tokens(convs, ChatSpans(tok, supervise="content"), len(tok), workers=1)
    think, call = tok.convert_tokens_to_ids(["<think>", "<tool_call>"])
    assert new.counts[think] == 3 and new.counts[call] == 2
    assert old.counts[think] == 0 and old.counts[call] == 0
    assert new.total > 2 * old.total
    assert Counter(new.metadata["turn_notes"]) == Counter()


@pytest.mark.parametrize("template, special", [
    ("Qwen-Qwen3", ()), ("Qwen-Qwen2.5", ()), ("meta-llama", ()), ("google-gemma", ()),
    ("openai-gpt-oss", GPT_OSS), ("NousResearch-Hermes-3", CHATML), ("GLM-4.6", ()),
    ("deepseek-ai-DeepSeek-V3.1", DEEPSEEK), ("Mistral-Small", MISTRAL),
])
def test_direct_rendering_equals_apply_chat_template(load_tok, template, special):
    """`ChatSpans` renders with transformers' compiled template but skips its per-call
    copying; what it renders must stay exactly what `apply_chat_template` renders."""
    from draftvocab.chat.supervision import prepare_messages

    tok = load_tok("qwen", template, special)
    spans = ChatSpans(tok, check=False)
    one_call = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "reasoning_content": "Look.",
                 "tool_calls": [{"id": "abc123def", "type": "function", "function": {
                     "name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "tool_call_id": "abc123def", "content": "18C"},
                {"role": "assistant", "content": "It is 18C."}]
    cases = [([Q, {"role": "assistant", "reasoning_content": "Add.", "content": "4."}], None),
             (one_call, TOOLS), (one_call[:2], TOOLS)]
    rendered = 0
    for messages, tools in cases:
        for generation in (False, True):
            try:
                want = tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                               add_generation_prompt=generation)
            except Exception:  # noqa: BLE001 - a template refusing a case refuses it in both
                with pytest.raises(Exception):  # noqa: B017
                    spans._render(prepare_messages(messages), generation, tools, {})
                continue
            assert spans._render(prepare_messages(messages), generation, tools, {}) == want
            rendered += 1
    assert rendered >= 2


def test_kimi_drops_the_reasoning_of_its_last_plain_answer_and_it_is_noted(load_tok):
    tok = load_tok("qwen", "Kimi-K2-Thinking", ("<|im_user|>", "<|im_assistant|>",
                                                "<|im_system|>", "<|im_middle|>"))
    spans = ChatSpans(tok)
    c = chat({"messages": [Q, {"role": "assistant", "reasoning_content": "Add them.",
                               "content": "4."}]})
    sup = spans.supervise(c.messages)
    assert sup.notes == ("reasoning_not_rendered",)
    ids, mask = spans.supervised_tokens(c.messages)
    assert ids[mask].tolist() == reference(tok, "<think></think>4.<|im_end|>")
