"""Talking to OpenAI-compatible servers — vLLM, SGLang, llama.cpp, `draftvocab serve`: one chat
request with retries and back-off, streamed with timestamps, and what the server reports about
speculative decoding.

Owns the wire protocol only: `Endpoint.chat` sends one chat completion and gathers the reply
(content, `reasoning_content`, tool calls, token ids when the server returns them, usage,
time to first token, total time). 429, 5xx, time-outs and broken connections are retried with
exponential back-off (honouring `Retry-After`), so a server restarted mid-run is waited for;
any other 4xx raises `RequestRejected` at once. Speculative statistics are read where servers
put them: `draftvocab serve`'s `draftvocab` field, SGLang's `meta_info` (`spec_verify_ct`), and
between runs SGLang's `/get_server_info` or vLLM's Prometheus counters (`server_accept_length`).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Self

from draftvocab.core.errors import DraftVocabError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RequestRejected(DraftVocabError):
    """The server refused this request (a 4xx other than 429): retrying will not help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class Reply:
    content: str = ""
    reasoning: str | None = None
    tool_calls: list[dict] | None = None
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seconds: float = 0.0  # request sent -> last byte
    ttft: float | None = None  # request sent -> first generated text
    spec: dict[str, Any] = field(default_factory=dict)  # accept_length, target_forwards, ...
    attempts: int = 1

    @property
    def tokens(self) -> int:
        """Generated tokens: the usage count, else the token ids, else 0."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        return len(self.token_ids or [])

    def message(self) -> dict[str, Any]:
        """The assistant message as `regenerate` writes it (reasoning and tool calls kept)."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            out["reasoning_content"] = self.reasoning
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        if self.token_ids is not None and not self.reasoning and not self.tool_calls:
            out["token_ids"] = self.token_ids  # the ids of exactly this text
        return out


def base_url(url: str) -> str:
    """`http://host:8000`, `.../v1` or `.../v1/` -> `http://host:8000`."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        raise DraftVocabError(f"endpoint must be an http(s) URL, got {url!r}")
    return url.removesuffix("/v1")


class Endpoint:
    """One OpenAI-compatible server and model.

    >>> ep = Endpoint("http://127.0.0.1:8000/v1", "smollm2-135m")
    >>> reply = asyncio.run(ep.chat([{"role": "user", "content": "Hi"}], max_tokens=32))
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None,
                 timeout: float = 600.0, retries: int = 8, backoff: float = 0.5,
                 max_backoff: float = 20.0):
        self.url, self.model = base_url(url), model
        self.headers = {"Authorization": f"Bearer {api_key or 'none'}"}
        self.timeout, self.retries = timeout, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self._client = None

    async def __aenter__(self) -> Self:
        import httpx2

        self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(self.timeout, connect=10.0),
                                          headers=self.headers)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._client.aclose()
        self._client = None

    async def chat(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int | None = None, tools: list | None = None,
                   template_kwargs: dict | None = None, stream: bool = True) -> Reply:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "max_tokens": max_tokens, "temperature": temperature,
                                "top_p": top_p, "stream": stream, "return_token_ids": True}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if seed is not None:
            body["seed"] = seed
        if tools:
            body["tools"] = tools
        if template_kwargs:
            body["chat_template_kwargs"] = template_kwargs
        return await self._with_retries(body)

    async def _with_retries(self, body: dict) -> Reply:
        import httpx2

        last = ""
        for attempt in range(self.retries + 1):
            wait = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random())
            try:
                reply = await (self._stream(body) if body["stream"] else self._once(body))
                reply.attempts = attempt + 1
                return reply
            except _Retry as exc:
                last, wait = str(exc), exc.after if exc.after is not None else wait
            except (httpx2.TransportError, httpx2.TimeoutException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(wait)
        raise DraftVocabError(f"{self.url}: no answer after {self.retries + 1} attempts "
                              f"({last})")

    async def _once(self, body: dict) -> Reply:
        t0 = time.perf_counter()
        r = await self._client.post(f"{self.url}/v1/chat/completions", json=body)
        _raise_for(r.status_code, r.text, r.headers)
        data = r.json()
        reply = Reply(seconds=time.perf_counter() - t0)
        choice = (data.get("choices") or [{}])[0]
        msg = choice.get("message") or {}
        reply.content = msg.get("content") or ""
        reply.reasoning = msg.get("reasoning_content") or msg.get("reasoning") or None
        reply.tool_calls = msg.get("tool_calls") or None
        reply.finish_reason = choice.get("finish_reason")
        reply.token_ids = choice.get("token_ids")
        _usage(reply, data.get("usage"))
        _spec(reply, data)
        return reply

    async def _stream(self, body: dict) -> Reply:
        t0 = time.perf_counter()
        reply = Reply()
        calls: dict[int, dict] = {}
        ids: list[int] = []
        async with self._client.stream("POST", f"{self.url}/v1/chat/completions",
                                       json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                _raise_for(r.status_code, text, r.headers)
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    data = json.loads(payload)
                except json.JSONDecodeError:
                    raise _Retry(f"malformed event from the server: {payload[:80]!r}") from None
                if "error" in data:
                    raise _Retry(f"server error mid-stream: {data['error']}")
                _usage(reply, data.get("usage"))
                _spec(reply, data)
                for choice in data.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content") or ""
                    thought = delta.get("reasoning_content") or delta.get("reasoning") or ""
                    if (text or thought or delta.get("tool_calls")) and reply.ttft is None:
                        reply.ttft = time.perf_counter() - t0
                    reply.content += text
                    if thought:
                        reply.reasoning = (reply.reasoning or "") + thought
                    for call in delta.get("tool_calls") or []:
                        _merge_call(calls, call)
                    ids += choice.get("token_ids") or []
                    if choice.get("finish_reason"):
                        reply.finish_reason = choice["finish_reason"]
        reply.seconds = time.perf_counter() - t0
        reply.tool_calls = [calls[i] for i in sorted(calls)] or None
        reply.token_ids = ids or None
        return reply

    async def get_json(self, path: str) -> Any:
        r = await self._client.get(f"{self.url}{path}")
        return r.json() if r.status_code == 200 else None

    async def get_text(self, path: str) -> str | None:
        r = await self._client.get(f"{self.url}{path}")
        return r.text if r.status_code == 200 else None


class _Retry(Exception):
    def __init__(self, message: str, after: float | None = None):
        super().__init__(message)
        self.after = after


def _raise_for(status: int, text: str, headers) -> None:
    if status == 200:
        return
    try:
        message = json.loads(text).get("error") or text
        message = message.get("message", message) if isinstance(message, dict) else message
    except (json.JSONDecodeError, AttributeError):
        message = text
    message = str(message).strip()[:300]
    if status in RETRY_STATUS:
        after = headers.get("retry-after")
        raise _Retry(f"HTTP {status}: {message}",
                     float(after) if after and after.replace(".", "", 1).isdigit() else None)
    raise RequestRejected(status, message)


def _usage(reply: Reply, usage: dict | None) -> None:
    if usage:
        reply.prompt_tokens = usage.get("prompt_tokens", reply.prompt_tokens)
        reply.completion_tokens = usage.get("completion_tokens", reply.completion_tokens)


def _spec(reply: Reply, data: dict) -> None:
    """Per-response speculative statistics: ours, or SGLang's meta_info."""
    if isinstance(data.get("draftvocab"), dict):
        reply.spec.update(data["draftvocab"])
    meta = data.get("meta_info") or next(
        (c.get("meta_info") for c in data.get("choices") or [] if c.get("meta_info")), None)
    if isinstance(meta, dict) and meta.get("spec_verify_ct"):
        verify, tokens = meta["spec_verify_ct"], meta.get("completion_tokens")
        reply.spec["target_forwards"] = verify
        if tokens:
            reply.spec["accept_length"] = tokens / verify


def _merge_call(calls: dict[int, dict], delta: dict) -> None:
    """Streamed tool calls arrive in pieces: id and name once, arguments as string parts."""
    call = calls.setdefault(delta.get("index", len(calls)),
                            {"id": None, "type": "function",
                             "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    fn = delta.get("function") or {}
    call["function"]["name"] += fn.get("name") or ""
    args = fn.get("arguments")
    call["function"]["arguments"] += json.dumps(args) if isinstance(args, dict) else args or ""


def served_models(ep: Endpoint) -> list[str]:
    """The model names the server lists at /v1/models (raises if it cannot be reached)."""
    import httpx2

    try:
        r = httpx2.get(f"{ep.url}/v1/models", headers=ep.headers, timeout=30.0)
        r.raise_for_status()
        return [m["id"] for m in r.json().get("data", []) if isinstance(m, dict) and "id" in m]
    except (httpx2.HTTPError, json.JSONDecodeError, AttributeError, KeyError) as exc:
        raise DraftVocabError(f"cannot list the models of {ep.url}: {exc}") from None


_VLLM = re.compile(r"^(vllm:spec_decode_num_(?:drafts|accepted_tokens|draft_tokens)_total)"
                   r"(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", re.MULTILINE)


async def server_counters(ep: Endpoint) -> dict[str, float]:
    """Server-wide speculative counters, read before and after a run: vLLM's Prometheus
    `/metrics` (drafts, accepted tokens) or SGLang's `/get_server_info` (its running average
    accept length). Empty for servers that report neither."""
    import httpx2

    try:
        text = await ep.get_text("/metrics")
        if text and "vllm:spec_decode" in text:
            out: dict[str, float] = {}
            for name, value in _VLLM.findall(text):
                out[name] = out.get(name, 0.0) + float(value)
            return out
        info = await ep.get_json("/get_server_info")
        states = (info or {}).get("internal_states") or []
        if states and states[0].get("avg_spec_accept_length") is not None:
            return {"sglang_avg_spec_accept_length": float(states[0]["avg_spec_accept_length"])}
    except (httpx2.HTTPError, json.JSONDecodeError, AttributeError, TypeError, ValueError):
        pass
    return {}


def server_accept_length(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Mean accept length over a run from the counters around it (tokens per target forward:
    1 + accepted draft tokens per draft round), or SGLang's own average."""
    if "sglang_avg_spec_accept_length" in after:
        return after["sglang_avg_spec_accept_length"]
    drafts = after.get("vllm:spec_decode_num_drafts_total", 0) - before.get(
        "vllm:spec_decode_num_drafts_total", 0)
    accepted = after.get("vllm:spec_decode_num_accepted_tokens_total", 0) - before.get(
        "vllm:spec_decode_num_accepted_tokens_total", 0)
    return 1 + accepted / drafts if drafts > 0 else None
