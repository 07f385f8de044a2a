"""The client side of the OpenAI-compatible API, against a scripted server speaking what vLLM
and SGLang send: streamed reasoning and tool calls, token ids in the choice, usage, 429 with
Retry-After, 5xx, 400, Prometheus counters and SGLang's server info; and `regenerate_remote`
keeping reasoning, tool calls and (only exact) token ids."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from draftvocab.chat.conversations import read_conversations
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.endpoint import (
    Endpoint,
    RequestRejected,
    served_models,
    server_accept_length,
    server_counters,
)
from draftvocab.engine.regenerate import regenerate_remote
from draftvocab.engine.target import load_target_tokenizer

CALL = {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}


def _chunks(kind: str, tok) -> list[dict]:
    """The `data:` events vLLM streams for one scripted reply."""
    if kind == "reason":
        deltas = [{"role": "assistant", "content": ""}, {"reasoning_content": "Two plus "},
                  {"reasoning_content": "two is four."}, {"content": "It is "},
                  {"content": "4."}]
        ids = tok.encode("It is 4.") if tok else []
    elif kind == "tool":
        deltas = [{"role": "assistant"},
                  {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": CALL["name"], "arguments": ""}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": CALL["arguments"][:9]}}]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": CALL["arguments"][9:]}}]}]
        ids = []
    else:  # plain text; its ids plus the end-of-turn id, as vLLM returns them
        deltas = [{"role": "assistant", "content": ""}, {"content": "Hello"},
                  {"content": " there!"}]
        ids = tok.encode("Hello there!") + [tok.convert_tokens_to_ids("<|im_end|>")] \
            if tok else []
        if kind == "wrong-ids":
            ids = ids[:-2] + ids[-1:]  # the ids of other text: must not be kept
    out = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    out.append({"choices": [{"index": 0, "delta": {}, "token_ids": ids,
                             "finish_reason": "tool_calls" if kind == "tool" else "stop"}]})
    out.append({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7,
                                         "total_tokens": 18}})
    return out


def fake_app(tok) -> tuple[FastAPI, Counter]:
    hits: Counter = Counter()
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"data": [{"id": "fake-model", "object": "model"}]}

    @app.get("/metrics")
    async def metrics():
        n = hits["metrics"]
        hits["metrics"] += 1
        return PlainTextResponse(
            f'vllm:spec_decode_num_drafts_total{{model_name="m"}} {100 + 10 * n}.0\n'
            f'vllm:spec_decode_num_accepted_tokens_total{{model_name="m"}} {250 + 25 * n}.0\n')

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        command = body["messages"][-1]["content"] if body["messages"][-1]["role"] == "user" \
            else "text"
        hits[command] += 1
        if command.startswith("busy") and hits[command] <= 2:
            return JSONResponse({"error": {"message": "queue full"}}, 429,
                                headers={"Retry-After": "0"})
        if command.startswith("busy") and hits[command] == 3:
            return JSONResponse({"error": {"message": "overloaded"}}, 503)
        if command == "down":
            return JSONResponse({"error": {"message": "engine dead"}}, 500)
        if command == "bad":
            return JSONResponse({"error": {"message": "prompt is too long",
                                           "type": "BadRequestError"}}, 400)
        kind = "reason" if "reason" in command else "tool" if "weather" in command else \
            "wrong-ids" if "wrong" in command else "text"
        events = _chunks(kind, tok)
        if not body.get("stream"):
            msg = {"role": "assistant", "content": "", "tool_calls": []}
            for e in events[:-2]:
                d = e["choices"][0]["delta"]
                msg["content"] += d.get("content") or ""
                if "reasoning_content" in d:
                    msg["reasoning_content"] = msg.get("reasoning_content", "") + \
                        d["reasoning_content"]
            return {"choices": [{"index": 0, "message": msg, "finish_reason": "stop",
                                 "token_ids": events[-2]["choices"][0]["token_ids"]}],
                    "usage": events[-1]["usage"],
                    "meta_info": {"spec_verify_ct": 4, "completion_tokens": 7}}

        async def sse():
            for e in events:
                yield f"data: {json.dumps(e)}\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(sse(), media_type="text/event-stream")

    return app, hits


@pytest.fixture(scope="module")
def tok():
    return load_target_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def fake(tok):
    app, hits = fake_app(tok)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", hits
    server.should_exit = True
    thread.join(10)


def ask(url: str, content: str, **kw):
    async def go():
        async with Endpoint(url, "fake-model", backoff=0.01, max_backoff=0.05,
                            retries=kw.pop("retries", 8)) as ep:
            return await ep.chat([{"role": "user", "content": content}], max_tokens=16, **kw)
    return asyncio.run(go())


def test_streamed_reasoning_text_ids_and_usage(fake, tok):
    url, _ = fake
    r = ask(url, "reason about 2+2")
    assert r.reasoning == "Two plus two is four." and r.content == "It is 4."
    assert r.token_ids == tok.encode("It is 4.") and r.finish_reason == "stop"
    assert (r.prompt_tokens, r.completion_tokens, r.tokens) == (11, 7, 7)
    assert 0 < r.ttft <= r.seconds and r.attempts == 1
    assert r.message() == {"role": "assistant", "content": "It is 4.",
                           "reasoning_content": "Two plus two is four."}
    same = ask(url, "reason about 2+2", stream=False)
    assert (same.content, same.reasoning, same.token_ids) == (r.content, r.reasoning,
                                                              r.token_ids)
    assert same.spec == {"target_forwards": 4, "accept_length": 7 / 4}  # SGLang's meta_info


def test_streamed_tool_call_pieces_are_joined(fake):
    url, _ = fake
    r = ask(url, "what is the weather in Paris?")
    assert r.tool_calls == [{"id": "call_1", "type": "function", "function": CALL}]
    assert r.finish_reason == "tool_calls" and r.content == ""
    assert r.message()["tool_calls"] == r.tool_calls and "token_ids" not in r.message()


def test_429_and_5xx_are_retried_other_4xx_are_not(fake):
    url, hits = fake
    r = ask(url, "busy once")
    assert r.attempts == 4 and hits["busy once"] == 4 and r.content == "Hello there!"
    with pytest.raises(RequestRejected, match="HTTP 400: prompt is too long"):
        ask(url, "bad")
    assert hits["bad"] == 1
    with pytest.raises(DraftVocabError, match=r"no answer after 3 attempts \(HTTP 500: engine"):
        ask(url, "down", retries=2)
    assert hits["down"] == 3


def test_models_and_speculative_counters(fake):
    url, _ = fake
    ep = Endpoint(url, "")
    assert served_models(ep) == ["fake-model"]

    async def around():
        async with ep:
            return await server_counters(ep), await server_counters(ep)
    before, after = asyncio.run(around())
    assert before == {"vllm:spec_decode_num_drafts_total": 100.0,
                      "vllm:spec_decode_num_accepted_tokens_total": 250.0}
    assert server_accept_length(before, after) == pytest.approx(1 + 25 / 10)
    assert server_accept_length({}, {"sglang_avg_spec_accept_length": 2.7}) == 2.7
    assert server_accept_length({}, {}) is None
    with pytest.raises(DraftVocabError, match="cannot list the models of http://127.0.0.1:9"):
        served_models(Endpoint("http://127.0.0.1:9/v1", ""))


def test_regenerate_remote_keeps_reasoning_tool_calls_and_only_exact_ids(fake, tok, tmp_path):
    url, _ = fake
    data = tmp_path / "chats.jsonl"
    records = [
        {"messages": [{"role": "user", "content": "reason about 2+2"},
                      {"role": "assistant", "content": "4"}]},
        {"tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
         "messages": [{"role": "user", "content": "what is the weather in Paris?"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "x", "type": "function", "function": {
                              "name": "get_weather", "arguments": {"city": "Rome"}}}]},
                      {"role": "tool", "tool_call_id": "x", "content": "21 C"},
                      {"role": "assistant", "content": "It is warm."}]},
        {"messages": [{"role": "user", "content": "say hello"},
                      {"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "say something wrong"},
                      {"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "bad"},
                      {"role": "assistant", "content": "hi"}]},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "regen.jsonl"
    stats = regenerate_remote(read_conversations(data), Endpoint(url, "fake-model"), out,
                              concurrency=3, tokenizer=tok)
    assert stats.written == 4 and stats.skipped == {"rejected": 1}
    assert "HTTP 400: prompt is too long" in stats.skipped_examples["rejected"]
    got = {json.loads(line)["id"].rsplit(":", 1)[1]: json.loads(line)
           for line in out.read_text().splitlines()}
    assert got["1"]["messages"][-1] == {"role": "assistant", "content": "It is 4.",
                                        "reasoning_content": "Two plus two is four."}
    tool = got["2"]["messages"]
    assert tool[1]["tool_calls"] == [{"id": "call_1", "type": "function", "function": CALL}]
    assert tool[2] == records[1]["messages"][2]  # the tool's result is the input's
    assert tool[3]["content"] == "Hello there!" and got["2"]["tools"] == records[1]["tools"]
    # ids kept when they decode to exactly the text (the end-of-turn id dropped) ...
    assert got["3"]["messages"][-1]["token_ids"] == tok.encode("Hello there!")
    # ... and not when they do not
    assert "token_ids" not in got["4"]["messages"][-1]
    assert got["3"]["generated_tokens"] == 7 and stats.generated_tokens == 7 * 5
    assert "5" not in got
