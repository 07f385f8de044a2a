"""Records -> template-ready messages: every field a template reads, the rest counted."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from draftvocab.chat.conversations import read_conversations
from draftvocab.chat.messages import (
    DEFAULT_ROLES,
    ColumnMap,
    RecordError,
    parse_role_map,
    parse_template_kwargs,
    record_to_chat,
)
from draftvocab.core.errors import DraftVocabError


def read(record: dict, dropped: Counter | None = None, **columns):
    return record_to_chat(record, "data.jsonl line 3", ColumnMap(**columns),
                          {**DEFAULT_ROLES}, dropped)


def test_openai_fields_are_kept_and_arguments_become_objects():
    chat = read({"messages": [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None, "reasoning": "Call it.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "f", "arguments": '{"a": [1, 2]}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "f", "content": {"ok": True}},
        {"role": "assistant", "content": "Done.", "weight": 0}]})
    dev, user, call, result, answer = chat.messages
    assert dev == {"role": "developer", "content": "Be terse."}
    assert user == {"role": "user", "content": "Hi there"}
    assert call == {"role": "assistant", "content": None, "reasoning_content": "Call it.",
                    "tool_calls": [{"type": "function", "id": "c1", "function": {
                        "name": "f", "arguments": {"a": [1, 2]}}}]}
    assert result == {"role": "tool", "content": '{"ok": true}', "tool_call_id": "c1",
                      "name": "f"}
    assert answer == {"role": "assistant", "content": "Done."}


def test_what_is_not_read_is_counted_by_name():
    dropped = Counter()
    read({"id": 7, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": "b", "weight": 0, "loss": False}]}, dropped)
    assert dropped == {"record.id": 1, "content.image_url": 1, "message.weight": 1,
                       "message.loss": 1}


def test_sharegpt_function_calling_turns_and_record_tools_and_system():
    tools = [{"name": "f", "description": "d", "parameters": {"type": "object"}}]
    chat = read({"system": "Use tools.", "tools": json.dumps(tools), "conversations": [
        {"from": "human", "value": "go"},
        {"from": "function_call", "value": '{"name": "f", "arguments": {"x": 1}}'},
        {"from": "observation", "value": "42"},
        {"from": "gpt", "value": "It is 42."}]})
    assert chat.tools == tools
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "tool",
                                                  "assistant"]
    assert chat.messages[0]["content"] == "Use tools."
    assert chat.messages[2]["tool_calls"] == [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]


def test_legacy_function_call_field_and_role_map_to_tool_call():
    chat = read({"messages": [{"role": "user", "content": "q"},
                              {"role": "assistant", "content": None,
                               "function_call": {"name": "f", "arguments": "{}"}}]})
    assert chat.messages[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {}}
    roles = {**DEFAULT_ROLES, **parse_role_map("call=tool_call")}
    chat = record_to_chat({"conversations": [{"from": "human", "value": "q"},
                                             {"from": "call", "value": '[{"name": "g"}]'}]},
                          "r", ColumnMap(), roles)
    assert chat.messages[1]["tool_calls"][0]["function"]["name"] == "g"


def test_template_kwargs_per_record_and_global():
    chat = read({"chat_template_kwargs": '{"enable_thinking": false}',
                 "messages": [{"role": "user", "content": "q"}]})
    assert chat.template_kwargs == {"enable_thinking": False}
    assert parse_template_kwargs('{"reasoning_effort": "high"}') == {"reasoning_effort": "high"}
    for bad, match in (("[1]", "must be a JSON object"), ("{nope", "not valid JSON"),
                       ('{"add_generation_prompt": true}', "cannot set")):
        with pytest.raises(DraftVocabError, match=match):
            parse_template_kwargs(bad)


@pytest.mark.parametrize("record, reason, match", [
    ({"tools": "not json", "messages": []}, "bad_tools", "neither a list nor a JSON"),
    ({"tools": 5, "messages": []}, "bad_tools", "is a int"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"function": {"name": "f", "arguments": "{oops"}}]}]}, "bad_tool_call",
     "arguments are not JSON"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}, "bad_tool_call",
     "no function name"),
    ({"messages": [{"role": "assistant", "content": "a", "reasoning_content": ["x"]}]},
     "bad_reasoning", "reasoning must be a string"),
    ({"chat_template_kwargs": [1], "messages": []}, "bad_template_kwargs", "JSON object"),
    ({"messages": [{"role": "wizard", "content": "a"}]}, "unknown_role", "unknown role"),
    ({"messages": [{"role": "user", "content": 5}]}, "bad_message", "content of type int"),
])
def test_bad_fields_name_the_record_and_a_reason(record, reason, match):
    with pytest.raises(RecordError, match=match) as exc:
        read(record)
    assert exc.value.reason == reason and "data.jsonl line 3" in str(exc.value)


def test_reader_stops_at_a_bad_record_or_skips_and_counts_it(tmp_path):
    lines = [{"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a"}], "tools": "{bad"},
             {"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a"}], "extra": 1}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(DraftVocabError, match=r"d.jsonl line 1.*--skip-bad-lines"):
        list(read_conversations(path))
    reader = read_conversations(path, skip_bad_lines=True)
    assert len(list(reader)) == 1
    assert reader.stats.skipped == {"bad_tools": 1}
    assert reader.stats.dropped_fields == {"record.extra": 1}


def test_columns_name_tools_system_and_reasoning():
    chat = read({"chat": [{"speaker": "user", "text": "q"},
                          {"speaker": "assistant", "text": "a", "thought": "r"}],
                 "functions": [{"name": "f"}], "sys": "S"},
                messages="chat", role="speaker", content="text", tools="functions",
                system="sys", reasoning="thought")
    assert chat.tools == [{"name": "f"}]
    assert chat.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                             {"role": "assistant", "content": "a", "reasoning_content": "r"}]
    with pytest.raises(DraftVocabError, match="keys messages, role, content, group, tools"):
        ColumnMap.parse("weights=w")
