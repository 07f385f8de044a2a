"""Chat records -> template-ready messages, keeping every field a chat template reads.

Owns the message schema. A message keeps its role (system, developer, user, assistant, tool,
ipython), `content` (a string, or None where the record has none, e.g. a turn that only calls
tools; a list of content parts becomes its text), its reasoning (`reasoning_content`,
`reasoning` or `thinking` in the record, kept as `reasoning_content`: the renderer hands it on
under the names templates read), `tool_calls` (OpenAI format; `arguments` as a JSON string or
an object, given to templates as an object, as vLLM and SGLang do), `tool_call_id` and `name`;
an assistant message may carry the `token_ids` its target generated (`regenerate` writes them).
A record keeps `tools` (a list, or a JSON string of one), `chat_template_kwargs` and a
LLaMA-Factory-style `system` column. ShareGPT function-calling turns (`function_call`,
`observation`) become tool calls and tool results. Whatever is not read is counted by name in
`dropped`, never discarded silently; a malformed field raises `RecordError` with a reason.

Knows nothing about files (`sources.py`, `conversations.py`) or templates (`template_spans.py`,
`spans.py`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from draftvocab.core.errors import DraftVocabError

__all__ = ["DEFAULT_ROLES", "ROLES", "ColumnMap", "RecordError", "parse_role_map",
           "parse_template_kwargs", "record_to_chat"]

ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")
_TOOL_CALL = "tool_call"  # pseudo-role: an assistant turn whose text *is* a tool call (JSON)

# Role names seen in public chat datasets, mapped onto the roles chat templates know.
DEFAULT_ROLES: dict[str, str] = {
    "system": "system",
    "developer": "developer",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",  # OpenAI's legacy function-result role (carries `name`)
    "observation": "tool",  # LLaMA-Factory ShareGPT
    "ipython": "ipython",  # Llama 3.x tool results
    "function_call": _TOOL_CALL,  # LLaMA-Factory ShareGPT: the assistant's call, as JSON
}

REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_COLUMN_KEYS = ("messages", "role", "content", "group", "tools", "system", "reasoning")
_FORBIDDEN_KWARGS = ("messages", "add_generation_prompt", "continue_final_message",
                     "add_special_tokens", "tokenize")


class RecordError(DraftVocabError):
    """A record that cannot be read; `reason` is the skip-count key under --skip-bad-lines."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ColumnMap:
    """Field names for datasets that use neither the OpenAI nor the ShareGPT schema.

    `messages` names the record field holding the message list; `role`, `content` and
    `reasoning` name keys inside each message; `tools` and `system` name record fields; `group`
    names a record field that labels a conversation (category, domain). None: detected as usual.

    >>> ColumnMap.parse("messages=chat,role=speaker,content=text")
    ColumnMap(messages='chat', role='speaker', content='text', group=None, tools=None, system=None, reasoning=None)
    """

    messages: str | None = None
    role: str | None = None
    content: str | None = None
    group: str | None = None
    tools: str | None = None
    system: str | None = None
    reasoning: str | None = None

    @classmethod
    def parse(cls, text: str) -> ColumnMap:
        """Parse the CLI's `--columns key=value,...` form."""
        values: dict[str, str] = {}
        for item in (part.strip() for part in text.split(",")):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or not value or key not in _COLUMN_KEYS or key in values:
                raise DraftVocabError(
                    f"bad --columns '{text}': expected key=value pairs with keys "
                    f"{', '.join(_COLUMN_KEYS)}, e.g. messages=chat,role=speaker,content=text"
                )
            values[key] = value
        return cls(**values)


def parse_role_map(items: str | Iterable[str]) -> dict[str, str]:
    """Parse CLI `--role-map` values ("narrator=user", possibly comma-joined) into a dict.

    A role can also map to `tool_call`: an assistant turn whose text is a JSON tool call.

    >>> parse_role_map(["narrator=user", "bot=assistant"])
    {'narrator': 'user', 'bot': 'assistant'}
    """
    pairs = [items] if isinstance(items, str) else list(items)
    role_map: dict[str, str] = {}
    for item in (p.strip() for text in pairs for p in text.split(",") if p.strip()):
        name, sep, role = (s.strip() for s in item.partition("="))
        if not sep or not name or not role:
            raise DraftVocabError(
                f"bad --role-map '{item}': expected NAME=ROLE, e.g. bot=assistant"
            )
        role_map[name] = role
    return checked_role_map(role_map)


def checked_role_map(role_map: dict[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, role in (role_map or {}).items():
        if role.strip().lower() not in (*ROLES, _TOOL_CALL):
            raise DraftVocabError(
                f"--role-map {name}={role}: the role must be one of {', '.join(ROLES)} "
                f"or {_TOOL_CALL}"
            )
        checked[name.strip().lower()] = role.strip().lower()
    return checked


def parse_template_kwargs(text: str | dict | None, what: str = "--template-kwargs") -> dict:
    """Chat-template arguments from a JSON object (CLI) or a dict; refuse what we set ourselves.

    >>> parse_template_kwargs('{"enable_thinking": false}')
    {'enable_thinking': False}
    """
    if text is None:
        return {}
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DraftVocabError(f"{what} is not valid JSON ({exc.msg} at column {exc.colno}); "
                                  """expected an object, e.g. '{"enable_thinking": false}'""") from None
    else:
        value = text
    if not isinstance(value, dict):
        raise DraftVocabError(f"{what} must be a JSON object, got {type(value).__name__}")
    bad = [k for k in value if k in _FORBIDDEN_KWARGS]
    if bad:
        raise DraftVocabError(f"{what} cannot set {', '.join(bad)}: draftvocab sets it per render")
    return dict(value)


# --------------------------------------------------------------------------------------------
# One record.


@dataclass
class Chat:
    """A record read: template-ready messages plus the record's tools and template arguments."""

    messages: list[dict[str, Any]]
    tools: list[dict] | None = None
    template_kwargs: dict[str, Any] | None = None


def record_to_chat(record: dict, where: str, columns: ColumnMap, roles: dict[str, str],
                   dropped: Counter | None = None) -> Chat:
    """Read one record; `where` names it in errors ("data.jsonl line 7"). Fields not read are
    counted in `dropped` as "record.<field>" / "message.<key>" / "content.<part type>"."""
    dropped = Counter() if dropped is None else dropped
    name, items = _messages_field(record, columns, where)
    read = {name}
    tools = None
    tools_key = columns.tools or "tools"
    if tools_key in record:
        read.add(tools_key)
        tools = _tools(record[tools_key], where)
    kwargs = None
    if "chat_template_kwargs" in record:
        read.add("chat_template_kwargs")
        raw = record["chat_template_kwargs"]
        if raw is not None:
            try:
                kwargs = parse_template_kwargs(raw, f"chat_template_kwargs in {where}")
            except DraftVocabError as exc:
                raise RecordError("bad_template_kwargs", str(exc)) from None
    system_key = columns.system or "system"
    system = record.get(system_key)
    if system_key in record:
        read.add(system_key)
        if system is not None and not isinstance(system, str):
            raise RecordError("bad_message", f"field '{system_key}' in {where} is a "
                              f"{type(system).__name__}, expected a string")
    if columns.group is not None:
        read.add(columns.group)
    dropped.update(f"record.{k}" for k in record if k not in read)

    if items is None:
        return Chat([], tools, kwargs)
    if not isinstance(items, list | tuple):
        raise RecordError("bad_message", f"field '{name}' in {where} is a "
                          f"{type(items).__name__}, expected a list of messages")
    messages = [_message(item, f"{name}[{i}] in {where}", columns, roles, dropped)
                for i, item in enumerate(items)]
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return Chat(messages, tools, kwargs)


def _messages_field(record: dict, columns: ColumnMap, where: str) -> tuple[str, Any]:
    if columns.messages is not None:
        if columns.messages not in record:
            raise RecordError(
                "bad_message", f"{where} has no field '{columns.messages}' (fields: "
                f"{_names(record)}); check --columns messages=FIELD")
        return columns.messages, record[columns.messages]
    for name in ("messages", "conversations"):
        if name in record:
            return name, record[name]
    raise RecordError(
        "bad_message", f"{where} has no 'messages' or 'conversations' field (fields: "
        f"{_names(record)}); name the message list with --columns messages=FIELD,role=KEY,"
        "content=KEY")


def _names(mapping: dict) -> str:
    return ", ".join(map(str, mapping)) or "none"


def _message(item: Any, where: str, columns: ColumnMap, roles: dict[str, str],
             dropped: Counter) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise RecordError("bad_message", f"{where} is a {type(item).__name__}, expected an object")
    role_key = columns.role or ("role" if "role" in item else "from")
    if role_key not in item:
        raise RecordError("bad_message", f"{where} has no '{role_key}' key (keys: "
                          f"{_names(item)}); name it with --columns role=KEY")
    raw = item[role_key]
    role = roles.get(raw.strip().lower()) if isinstance(raw, str) else None
    if role is None:
        raise RecordError("unknown_role", f"unknown role '{raw}' in {where}; map it with "
                          f"--role-map {raw}=user|assistant|system|tool")
    content_key = columns.content or next((k for k in ("content", "value") if k in item), None)
    calls_key = "tool_calls" if "tool_calls" in item else (
        "function_call" if "function_call" in item else None)
    if (content_key is None or content_key not in item) and calls_key is None \
            and not any(k in item for k in REASONING_KEYS):
        raise RecordError("bad_message", f"{where} has no '{content_key or 'content'}' key "
                          f"(keys: {_names(item)}); name it with --columns content=KEY")
    read = {role_key, content_key}
    content = item.get(content_key) if content_key else None
    message: dict[str, Any] = {"role": "assistant" if role == _TOOL_CALL else role}
    if role == _TOOL_CALL:  # ShareGPT function_call turn: its text is the call
        message["content"] = None
        message["tool_calls"] = _tool_calls(_json_value(content, where, "bad_tool_call"), where)
    else:
        message["content"] = _content_text(content, where, role, dropped)

    reasoning_keys = [columns.reasoning] if columns.reasoning else REASONING_KEYS
    for key in reasoning_keys:
        if key in item:
            read.add(key)
            value = item[key]
            if value is None:
                continue
            if not isinstance(value, str):
                raise RecordError("bad_reasoning", f"{where} has '{key}' of type "
                                  f"{type(value).__name__}; reasoning must be a string")
            if "reasoning_content" not in message:
                message["reasoning_content"] = value
    if calls_key is not None:
        read.add(calls_key)
        value = item[calls_key]
        if value is not None:
            if calls_key == "function_call":  # OpenAI's legacy single call
                value = [value]
            calls = _tool_calls(value, where)
            if calls:
                message["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if key in item:
            read.add(key)
            value = item[key]
            if value is not None:
                message[key] = str(value)
    if "token_ids" in item and role == "assistant":  # the ids a target wrote (`regenerate`)
        read.add("token_ids")
        ids = item["token_ids"]
        if not isinstance(ids, list) or not all(type(i) is int and i >= 0 for i in ids):
            raise RecordError("bad_message", f"{where} has token_ids that are not a list of "
                              "token ids")
        message["token_ids"] = ids
    dropped.update(f"message.{k}" for k in item if k not in read)
    return message


def _content_text(value: Any, where: str, role: str, dropped: Counter) -> str | None:
    """A string, None, or content parts joined into their text; a tool result that is JSON
    (an object or list, not parts) becomes its JSON text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, str | dict) for p in value):
        texts = []
        parts = True
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif "type" not in part:
                parts = False
                break
            elif part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise RecordError("bad_message", f"{where} has a text part without a string "
                                      "'text'")
                texts.append(part["text"])
            else:  # images, audio, files: no text for a text-only template
                dropped[f"content.{part['type']}"] += 1
        if parts:
            return "".join(texts)
    if role in ("tool", "ipython") and isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    raise RecordError("bad_message", f"{where} has content of type {type(value).__name__}; "
                      "expected a string or a list of {'type': 'text', 'text': ...} parts")


def _json_value(value: Any, where: str, reason: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise RecordError(reason, f"{where}: {value[:60]!r} is not JSON ({exc.msg})") from None


def _tools(value: Any, where: str) -> list[dict] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RecordError("bad_tools", f"tools in {where} is neither a list nor a JSON "
                              f"string of one: {value[:60]!r}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RecordError("bad_tools", f"tools in {where} is a {type(value).__name__}; expected "
                          "a list of tool objects (or a JSON string of one)")
    return value or None


def _tool_calls(value: Any, where: str) -> list[dict]:
    """OpenAI-format tool calls, arguments as objects: {"type": "function", "function":
    {"name", "arguments"}} (+ "id" when given). Bare {"name", "arguments"} calls are wrapped."""
    value = _json_value(value, where, "bad_tool_call")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RecordError("bad_tool_call", f"tool_calls in {where} is a {type(value).__name__}, "
                          "expected a list")
    calls = []
    for j, call in enumerate(value):
        at = f"tool call {j} in {where}"
        if not isinstance(call, dict):
            raise RecordError("bad_tool_call", f"{at} is a {type(call).__name__}, expected an "
                              "object")
        fn = call.get("function", call)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RecordError("bad_tool_call", f"{at} has no function name")
        args = fn.get("arguments", fn.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise RecordError("bad_tool_call", f"{at}: arguments are not JSON ({exc.msg}): "
                                  f"{args[:60]!r}") from None
        out: dict[str, Any] = {"type": call.get("type") or "function",
                               "function": {"name": fn["name"], "arguments": args}}
        if call.get("id") is not None:
            out["id"] = str(call["id"])
        calls.append(out)
    return calls
