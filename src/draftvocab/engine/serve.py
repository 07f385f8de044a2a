"""An OpenAI-compatible HTTP server over the built-in engine: the target, plus an optional
EAGLE-3 or SpecBlock draft (lossless speculative decoding).

Owns the HTTP surface — `/v1/chat/completions` and `/v1/completions`, streamed as server-sent
events or not, `/v1/models`, `/health` — and the serving discipline: the engine decodes one
request at a time, waiting requests queue up to `queue_size`, and one more gets 429 at once.
A request the API cannot serve (malformed JSON, wrong types, n > 1, a prompt longer than the
context, a chat template that refuses the messages) gets a 4xx with an OpenAI-style error body.
Every response carries the decoder's speculative statistics in an extra `draftvocab` field
(`SPEC_FIELDS`). Decoding is `decode.py`'s; HTTP is FastAPI's and uvicorn's; running the
server as a child process is `server_process.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from draftvocab.core.errors import DraftVocabError

# The extra per-response field: what one request's speculative decoding did.
SPEC_FIELDS = {
    "accept_length": "generated tokens per target forward (1.0 without a draft)",
    "target_forwards": "target forwards after the prefill (verify rounds)",
    "drafted_tokens": "draft tokens sent to the verifier",
    "accepted_tokens": "draft tokens the verifier accepted",
    "draft_forwards": "drafter forwards",
    "decode_seconds": "wall time of the decode, prefill included",
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields this engine ignores

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1)
    return_token_ids: bool = False


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(_Request):
    prompt: str | list[int]


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": kind, "param": param, "code": status}})


@dataclass
class _Generation:
    text: str
    token_ids: list[int]  # generated ids, less a final stop token
    completion_tokens: int
    finish_reason: str
    stats: dict[str, Any]


class _Text:
    """Incremental text of generated ids: stop strings end it, a final stop id is not text,
    and streaming holds back what a stop string or an unfinished UTF-8 sequence may still
    change."""

    def __init__(self, tokenizer, stop_ids: set[int], stops: list[str]):
        self.tokenizer, self.stop_ids, self.stops = tokenizer, stop_ids, stops
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, ids: list[int]) -> bool:
        """Add a round's ids; True when a stop string (or the stop id) ends the text."""
        self.ids += ids
        body = self.ids[:-1] if self.ids and self.ids[-1] in self.stop_ids else self.ids
        self.text = self.tokenizer.decode(body, skip_special_tokens=False)
        for stop in self.stops:
            at = self.text.find(stop)
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
        return self.stopped

    def fresh(self, final: bool = False) -> str:
        """Text not yet sent that no later token can change."""
        end = len(self.text)
        if not final and not self.stopped:
            hold = max((len(s) - 1 for s in self.stops), default=0)
            end = max(self.sent, end - hold)
            while end > self.sent and self.text[end - 1] == "\ufffd":
                end -= 1
        piece, self.sent = self.text[self.sent:end], max(self.sent, end)
        return piece


def engine_thread() -> ThreadPoolExecutor:
    """The single thread that loads the model and runs every decode."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")


class ServingEngine:
    """The target and its decoder behind a one-at-a-time gate and a bounded wait queue.

    >>> engine = ServingEngine(target, decoder_for(target, draft), "smollm2", queue_size=8)
    >>> app = create_app(engine)
    """

    def __init__(self, target, decoder, model_name: str, *, queue_size: int = 16,
                 default_max_tokens: int = 256, template_kwargs: dict | None = None,
                 executor: ThreadPoolExecutor | None = None):
        if queue_size < 0:
            raise DraftVocabError(f"queue size must be >= 0, got {queue_size}")
        # Every decode runs on this one thread — best the thread that loaded the model
        # (`engine_thread`): torch's OpenMP pool belongs to the thread that uses it, and on a
        # small CPU a second thread's pool competing for the cores made speculative decoding
        # ~1.7x slower than in-process.
        self.executor = executor or engine_thread()
        self.target, self.decoder, self.model_name = target, decoder, model_name
        self.queue_size, self.default_max_tokens = queue_size, default_max_tokens
        self.template_kwargs = dict(template_kwargs or {})
        self._gate = threading.Lock()  # one decode at a time
        self._admitted = 0  # running + waiting, changed on the event loop only
        self.served = 0

    def admit(self) -> bool:
        if self._admitted >= 1 + self.queue_size:
            return False
        self._admitted += 1
        return True

    def release(self) -> None:
        self._admitted -= 1

    # -- requests -> token ids ------------------------------------------------------------------

    def chat_prompt(self, req: ChatRequest) -> list[int]:
        from draftvocab.chat.messages import DEFAULT_ROLES, ColumnMap, RecordError, record_to_chat

        try:
            chat = record_to_chat({"messages": req.messages, "tools": req.tools}, "the request",
                                  ColumnMap(), DEFAULT_ROLES)
        except RecordError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        kwargs = {**self.template_kwargs, **(req.chat_template_kwargs or {})}
        try:
            return self.target.prompt_ids(chat.messages, tools=chat.tools, **kwargs)
        except Exception as exc:  # noqa: BLE001 - jinja / transformers refuse in many ways
            raise ApiError(400, f"the chat template refused the messages: {exc}",
                           param="messages") from None

    def completion_prompt(self, req: CompletionRequest) -> list[int]:
        if isinstance(req.prompt, list):
            if not req.prompt or min(req.prompt) < 0 or max(req.prompt) >= \
                    self.target.vocab_size:
                raise ApiError(400, "prompt token ids must be in [0, vocab_size)", param="prompt")
            return list(req.prompt)
        if not req.prompt:
            raise ApiError(400, "prompt is empty", param="prompt")
        return self.target.tokenizer.encode(req.prompt)

    def check(self, req: _Request, prompt: list[int]) -> int:
        """The max new tokens this request may have; 400 if its prompt leaves no room."""
        if req.model not in (None, self.model_name):
            raise ApiError(404, f"model '{req.model}' is not served here (this server "
                           f"serves '{self.model_name}')", "not_found_error", "model")
        room = self.target.max_length - len(prompt)
        if room < 1:
            raise ApiError(400, f"the prompt has {len(prompt)} tokens; the model's context is "
                           f"{self.target.max_length}", param="messages")
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if asked is None:
            return min(self.default_max_tokens, room)
        if asked > room:
            raise ApiError(400, f"max_tokens {asked} + the prompt's {len(prompt)} tokens exceed "
                           f"the model's context of {self.target.max_length}",
                           param="max_tokens")
        return asked

    # -- decoding -----------------------------------------------------------------------------

    def generate(self, req: _Request, prompt: list[int], max_new: int,
                 emit: Callable[[str], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> _Generation:
        """Decode one request (blocking, one at a time); `emit` receives text as it is final."""
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        text = _Text(self.target.tokenizer, set(self.target.stop_ids), [s for s in stops if s])

        def on_tokens(ids: list[int]) -> bool:
            done = text.add(ids)
            if emit is not None:
                piece = text.fresh()
                if piece:
                    emit(piece)
            return done or cancelled()

        with self._gate:
            t0 = time.perf_counter()
            res = self.decoder.generate(prompt, max_new, temperature=req.temperature,
                                        top_p=req.top_p, seed=req.seed, on_tokens=on_tokens)
            seconds = time.perf_counter() - t0
            self.served += 1
        if emit is not None:
            piece = text.fresh(final=True)
            if piece:
                emit(piece)
        ended_by_stop = text.stopped or (res.tokens and res.tokens[-1] in text.stop_ids)
        forwards = res.target_forwards
        accepted = max(0, len(res.tokens) - 1 - forwards)  # each forward yields one of its own
        stats = {"accept_length": round((len(res.tokens) - 1) / forwards, 4) if forwards
                 else 1.0, "target_forwards": forwards, "drafted_tokens": res.drafted_tokens,
                 "accepted_tokens": accepted if self.decoder.draft is not None else 0,
                 "draft_forwards": res.draft_forwards, "decode_seconds": round(seconds, 4)}
        ids = res.tokens[:-1] if res.tokens and res.tokens[-1] in text.stop_ids else res.tokens
        return _Generation(text.text, list(ids), len(res.tokens),
                           "stop" if ended_by_stop else "length", stats)


def create_app(engine: ServingEngine) -> FastAPI:
    """The FastAPI application serving `engine`."""
    app = FastAPI(title="draftvocab serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(400, f"{where or 'request'}: {first.get('msg', 'invalid request')}",
                      "invalid_request_error", where or None)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.kind, exc.param)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": engine.model_name, "served": engine.served}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model",
                                            "created": 0, "owned_by": "draftvocab"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        prompt = engine.chat_prompt(req)
        return await _respond(engine, req, prompt, "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompt = engine.completion_prompt(req)
        return await _respond(engine, req, prompt, "text")

    return app


async def _respond(engine: ServingEngine, req: _Request, prompt: list[int], kind: str):
    max_new = engine.check(req, prompt)
    if not engine.admit():
        raise ApiError(429, f"the server is busy: {engine.queue_size} requests are already "
                       "waiting; retry later", "rate_limit_error")
    head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()), "model": engine.model_name}
    if not req.stream:
        try:
            gen = await asyncio.get_running_loop().run_in_executor(
                engine.executor, engine.generate, req, prompt, max_new)
        finally:
            engine.release()
        return _complete(head, kind, req, prompt, gen)
    return StreamingResponse(_stream(engine, head, kind, req, prompt, max_new),
                             media_type="text/event-stream")


def _complete(head: dict, kind: str, req: _Request, prompt: list[int], gen: _Generation) -> dict:
    choice: dict[str, Any] = {"index": 0, "finish_reason": gen.finish_reason}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": gen.text}
    else:
        choice["text"] = gen.text
    if req.return_token_ids:
        choice["token_ids"] = gen.token_ids
    return {**head, "object": "chat.completion" if kind == "chat" else "text_completion",
            "choices": [choice], "usage": _usage(prompt, gen), "draftvocab": gen.stats}


def _usage(prompt: list[int], gen: _Generation) -> dict:
    return {"prompt_tokens": len(prompt), "completion_tokens": gen.completion_tokens,
            "total_tokens": len(prompt) + gen.completion_tokens}


async def _stream(engine: ServingEngine, head: dict, kind: str, req: _Request,
                  prompt: list[int], max_new: int) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece of final text, then the finish chunk (with the
    speculative statistics), the usage chunk if asked for, and [DONE]."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    def chunk(delta: dict | None = None, finish: str | None = None,
              token_ids: list[int] | None = None, **extra) -> str:
        if kind == "chat":
            choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": (delta or {}).get("content", ""),
                      "finish_reason": finish}
        if token_ids is not None:  # where vLLM puts them: in the choice
            choice["token_ids"] = token_ids
        return f"data: {json.dumps({**head, 'object': obj, 'choices': [choice], **extra})}\n\n"

    def work() -> _Generation:
        return engine.generate(req, prompt, max_new,
                               emit=lambda piece: loop.call_soon_threadsafe(
                                   queue.put_nowait, piece),
                               cancelled=gone.is_set)

    task = asyncio.ensure_future(loop.run_in_executor(engine.executor, work))
    task.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
    try:
        if kind == "chat":
            yield chunk({"role": "assistant", "content": ""})
        while (piece := await queue.get()) is not None:
            yield chunk({"content": piece})
        gen = await task
        yield chunk(finish=gen.finish_reason, draftvocab=gen.stats,
                    token_ids=gen.token_ids if req.return_token_ids else None)
        if (req.stream_options or {}).get("include_usage"):
            yield f"data: {json.dumps({**head, 'object': obj, 'choices': [], 'usage': _usage(prompt, gen)})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        gone.set()  # a client that went away stops the decode at its next round
        with contextlib.suppress(Exception):
            await task
        engine.release()
