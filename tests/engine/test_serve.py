"""`draftvocab serve` as a real subprocess with the SmolLM2 target, driven by the `openai`
client, and `regenerate --endpoint` / `bench --endpoint` against it.

Greedy text through the server must be what in-process plain decoding and in-process
speculative decoding (a random, untrained EAGLE-3 draft: it is rarely right, so nearly every
round exercises rejection) produce for the same messages.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import numpy as np
import openai
import pytest

from draftvocab.engine.decode import SpeculativeDecoder, decoder_for
from draftvocab.engine.drafters import build_draft, load_draft, save_draft
from draftvocab.engine.serve import SPEC_FIELDS, ChatRequest, ServingEngine
from draftvocab.engine.server_process import ServerProcess
from draftvocab.engine.target import load_target
from draftvocab.engine.train import TrainConfig
from draftvocab.vocab.mapping import mapping_from_ids
from tests.conftest import make_tiny_target

MAX_NEW = 20
QUESTIONS = ["What is the capital of France?", "Name three primary colours.",
             "Write a haiku about the sea."]


class Server(ServerProcess):
    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key="unused", **kw)


@pytest.fixture(scope="module")
def smol():
    return load_target("smollm2-135m")


@pytest.fixture(scope="module")
def draft_dir(smol, tmp_path_factory):
    """A random EAGLE-3 draft over a trimmed vocabulary (ids 0-7,999 and the stop ids)."""
    ids = np.union1d(np.arange(8000), np.asarray(smol.stop_ids))
    mapping = mapping_from_ids(ids, smol.vocab_size)
    import torch

    draft = build_draft(smol, torch.tensor(mapping.d2t), torch.tensor(mapping.t2d), seed=0)
    return save_draft(draft, tmp_path_factory.mktemp("serve") / "draft")


@pytest.fixture(scope="module")
def plain():
    server = Server("--queue", "1", "--max-tokens", str(MAX_NEW))
    yield server
    server.kill()


@pytest.fixture(scope="module")
def spec(draft_dir):
    server = Server("--draft", str(draft_dir), "--model-name", "smol-eagle3", "--chain",
                    "--gamma", "3")
    yield server
    server.kill()


@pytest.fixture(scope="module")
def reference(smol, draft_dir):
    """In-process greedy text per question: plain decoding and speculative decoding."""
    decoders = {"plain": SpeculativeDecoder(smol, None),
                "spec": SpeculativeDecoder(smol, load_draft(draft_dir, smol), tree=False,
                                           gamma=3)}
    out = {}
    for name, dec in decoders.items():
        for q in QUESTIONS:
            res = dec.generate(smol.prompt_ids([{"role": "user", "content": q}]), MAX_NEW)
            ids = [t for t in res.tokens if t not in smol.stop_ids]
            out[name, q] = smol.tokenizer.decode(ids, skip_special_tokens=False)
    return out


def _chat(client, q: str, **kw):
    return client.chat.completions.create(
        model=kw.pop("model", "smollm2-135m"), messages=[{"role": "user", "content": q}],
        max_tokens=MAX_NEW, temperature=0, **kw)


def test_greedy_through_the_server_is_in_process_plain_and_speculative(plain, spec, reference,
                                                                        smol):
    assert reference["plain", QUESTIONS[0]] == reference["spec", QUESTIONS[0]]
    for q in QUESTIONS:
        a = _chat(plain.client(), q)
        b = _chat(spec.client(), q, model="smol-eagle3")
        assert a.choices[0].message.content == reference["plain", q]
        assert b.choices[0].message.content == reference["plain", q] == reference["spec", q]
        prompt = len(smol.prompt_ids([{"role": "user", "content": q}]))
        assert a.usage.prompt_tokens == b.usage.prompt_tokens == prompt
        assert a.usage.completion_tokens == b.usage.completion_tokens
        assert a.usage.total_tokens == prompt + a.usage.completion_tokens
        sa, sb = a.model_extra["draftvocab"], b.model_extra["draftvocab"]
        assert set(sa) == set(sb) == set(SPEC_FIELDS)
        assert sa["accept_length"] == 1.0 and sa["drafted_tokens"] == 0
        assert sb["drafted_tokens"] > 0 and sb["draft_forwards"] > 0
        assert 0 <= sb["accepted_tokens"] <= sb["drafted_tokens"]
        assert sb["accept_length"] == pytest.approx(
            (b.usage.completion_tokens - 1) / sb["target_forwards"], abs=1e-3)


def test_streaming_gives_the_same_text_usage_and_statistics(spec, reference):
    q = QUESTIONS[2]
    stream = _chat(spec.client(), q, model="smol-eagle3", stream=True,
                   stream_options={"include_usage": True})
    pieces, finish, stats, usage, roles = [], None, None, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            roles += [c.delta.role] if c.delta.role else []
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
            stats = (chunk.model_extra or {}).get("draftvocab") or stats
    assert roles == ["assistant"]
    assert "".join(pieces) == reference["plain", q]
    assert sum(bool(p) for p in pieces) > 1  # text arrives as it is decoded, not at the end
    assert finish in ("stop", "length") and set(stats) == set(SPEC_FIELDS)
    assert usage.completion_tokens == _chat(spec.client(), q, model="smol-eagle3"
                                            ).usage.completion_tokens


def test_text_completions_stop_strings_token_prompts_and_seeded_sampling(plain, smol):
    c = plain.client()
    full = c.completions.create(model="smollm2-135m", prompt="The capital of France is",
                                max_tokens=12, temperature=0)
    text = full.choices[0].text
    assert full.choices[0].finish_reason == "length" and len(text) > 3
    stop = text[2:4]
    cut = c.completions.create(model="smollm2-135m", prompt="The capital of France is",
                               max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="smollm2-135m", prompt="The capital of France is", max_tokens=12, temperature=0,
        stop=[stop], stream=True) if ch.choices)
    assert streamed == cut.choices[0].text  # a stop string split over chunks is held back
    ids = smol.tokenizer.encode("The capital of France is")
    by_ids = c.completions.create(model="smollm2-135m", prompt=ids, max_tokens=12,
                                  temperature=0)
    assert by_ids.choices[0].text == text and by_ids.usage.prompt_tokens == len(ids)
    kw = {"model": "smollm2-135m", "prompt": "Once upon a time", "max_tokens": 12,
          "temperature": 1.0, "top_p": 0.9}
    a, b = (c.completions.create(seed=7, **kw).choices[0].text for _ in range(2))
    others = {c.completions.create(seed=s, **kw).choices[0].text for s in (8, 9, 10)}
    assert a == b and others != {a}


def test_models_health_and_malformed_requests(plain):
    c = plain.client(max_retries=0)
    assert [m.id for m in c.models.list()] == ["smollm2-135m"]
    health = httpx2.get(plain.url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["model"] == "smollm2-135m"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        _chat(c, "hi", model="gpt-4")
    for kw, what in [({"temperature": -1}, "temperature"), ({"n": 2}, "n"),
                     ({"max_tokens": 10**6}, "max_tokens"), ({"top_p": 0}, "top_p")]:
        with pytest.raises(openai.BadRequestError, match=what):
            c.chat.completions.create(model="smollm2-135m",
                                      messages=[{"role": "user", "content": "hi"}], **kw)
    with pytest.raises(openai.BadRequestError, match="messages"):
        c.chat.completions.create(model="smollm2-135m", messages=[])
    with pytest.raises(openai.BadRequestError, match="vocab_size"):
        c.completions.create(model="smollm2-135m", prompt=[1, 10**7], max_tokens=4)
    raw = httpx2.post(plain.url + "/chat/completions", content=b"{not json",
                      headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    bad_role = httpx2.post(plain.url + "/chat/completions", json={
        "messages": [{"role": "wizard", "content": "hi"}]})
    assert bad_role.status_code == 400 and "wizard" in bad_role.json()["error"]["message"]


def test_a_full_queue_answers_429_and_a_dropped_stream_frees_the_engine(plain):
    """--queue 1: one request decodes, one waits, the rest are refused at once."""
    c = plain.client(max_retries=0)

    def ask(i: int) -> int:
        try:
            _chat(c, QUESTIONS[i % 3])
            return 200
        except openai.RateLimitError:
            return 429

    with ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(ask, range(5)))
    assert codes.count(200) >= 2 and codes.count(429) >= 1, codes
    stream = _chat(c, "Count from one to one hundred.", stream=True)
    next(iter(stream))
    stream.close()  # the client goes away mid-decode
    assert _chat(c, QUESTIONS[0]).choices[0].message.content  # the engine serves again


def _conversations(path: Path, n: int) -> list[str]:
    """n one-question chats; their ids in a regenerate output (file:line)."""
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Tell me one fact about the number {i}."},
                {"role": "assistant", "content": "old"}]}) + "\n")
    return [f"{path}:{i + 1}" for i in range(n)]


def _regenerate(url: str, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "draftvocab", "regenerate", str(data), "--endpoint", url,
         "--target", "smollm2-135m", "--max-new-tokens", "16", "--concurrency", "2",
         "-o", str(out), "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _wait_for(cond, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_regenerate_through_a_server_killed_restarted_and_resumed(tmp_path, smol):
    data, out = tmp_path / "chats.jsonl", tmp_path / "regen.jsonl"
    ids = _conversations(data, 12)
    server = Server()
    try:
        run = _regenerate(server.url, data, out)
        _wait_for(lambda: _lines(out) >= 2)
        server.kill()  # the server dies mid-run; the client retries with back-off ...
        server = Server(port=server.port)  # ... until it is back
        _wait_for(lambda: _lines(out) >= 5 or run.poll() is not None)
        run.send_signal(signal.SIGKILL)  # then the client itself is killed
        run.wait()
        done = _lines(out)
        assert 5 <= done < 12
        rerun = _regenerate(server.url, data, out)
        stdout, stderr = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, stderr
        summary = json.loads(stdout)
        assert summary["already_done"] == done and summary["written"] == 12 - done
        assert summary["concurrency"] == 2
        rc, log = server.stop(signal.SIGTERM)
    finally:
        server.kill()
    assert rc == 0 and "Traceback" not in log and "stopped (SIGTERM)" in log
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(ids)  # no duplicate, no gap
    for r in records:
        reply = r["messages"][-1]
        assert reply["role"] == "assistant" and reply["content"] not in ("", "old")
        # the server's ids were kept because they decode to exactly the reply
        assert smol.tokenizer.decode(reply["token_ids"]) == reply["content"]
    first = next(r for r in records if r["id"] == ids[0])["messages"][-1]["content"]
    res = SpeculativeDecoder(smol, None).generate(
        smol.prompt_ids([{"role": "user", "content": "Tell me one fact about the number 0."}]),
        16)
    assert first == smol.tokenizer.decode(
        [t for t in res.tokens if t not in smol.stop_ids], skip_special_tokens=False)


def test_regenerate_endpoint_errors_are_one_line(tmp_path):
    data = tmp_path / "chats.jsonl"
    _conversations(data, 1)
    run = subprocess.run(
        [sys.executable, "-m", "draftvocab", "regenerate", str(data), "--endpoint",
         "http://127.0.0.1:9/v1", "--model", "m", "-o", str(tmp_path / "out.jsonl")],
        check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "127.0.0.1:9" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_bench_endpoints_side_by_side_with_in_process_decoding(plain, spec, tmp_path):
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, "-m", "draftvocab", "bench", "--endpoint", f"served={plain.url}",
         "--endpoint", f"served-eagle3={spec.url}", "--local", "--per-category", "1",
         "--turns", "1", "--max-new-tokens", "12", "--runs", "1", "-o", str(out), "--json"],
        check=False, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["variants"] == ["plain", "served", "served-eagle3"]
    assert report["greedy_mismatches"] == {"plain": 0, "served": 0, "served-eagle3": 0}
    overall = report["table"]["overall"]
    for name in ("plain", "served", "served-eagle3"):
        assert overall[name]["tokens_per_s"][0] > 0 and overall[name]["ttft_s"][0] > 0
        assert overall[name]["requests"] == 6
    assert overall["served"]["accept_length"][0] == pytest.approx(1.0)
    assert overall["served-eagle3"]["accept_length"] is not None
    rows = [r for r in report["rows"] if r["variant"] == "served"]
    assert len(rows) == 6 and all(r["tokens"] > 0 and r["seconds"] > 0 for r in rows)
    assert report["endpoints"]["served"]["model"] == "smollm2-135m"
    assert report["endpoints"]["served-eagle3"]["model"] == "smol-eagle3"
    text = (out / "report.md").read_text()
    assert "| **overall** | served-eagle3 |" in text and "identical to `plain`: yes" in text


def test_servers_stop_cleanly_on_sigint_and_sigterm(plain, spec):
    for server, sig, name in ((plain, signal.SIGINT, "SIGINT"), (spec, signal.SIGTERM,
                                                                   "SIGTERM")):
        rc, log = server.stop(sig)
        assert rc == 0 and "Traceback" not in log, log
        assert re.search(rf"stopped \({name}\): [1-9][\d,]* requests served", log), log


def test_engine_serves_a_specblock_draft_losslessly_and_streams_what_it_returns():
    """In process (no HTTP): the engine over a random SpecBlock draft gives plain decoding's
    text, streamed pieces add up to it, and a stop string cuts both the same way."""
    import torch

    tiny = make_tiny_target(seed=1)
    torch.manual_seed(0)
    block = build_draft(tiny, seed=2, config=TrainConfig(drafter="specblock"))
    plain = ServingEngine(tiny, SpeculativeDecoder(tiny), "tiny")
    engine = ServingEngine(tiny, decoder_for(tiny, block), "tiny")
    req = ChatRequest(messages=[{"role": "user", "content": "Hello"}], temperature=0)
    prompt = engine.chat_prompt(req)
    want = plain.generate(req, prompt, 24)
    pieces: list[str] = []
    got = engine.generate(req, prompt, 24, emit=pieces.append)
    assert got.text == want.text and got.token_ids == want.token_ids
    assert "".join(pieces) == got.text and got.stats["draft_forwards"] > 0
    stop = want.text[len(want.text) // 2:][:3]
    cut = ChatRequest(messages=req.messages, temperature=0, stop=[stop])
    pieces = []
    short = engine.generate(cut, prompt, 24, emit=pieces.append)
    assert short.text == want.text[:want.text.index(stop)] == "".join(pieces)
    assert short.finish_reason == "stop"
