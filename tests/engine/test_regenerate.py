"""`regenerate` on a tiny random Llama target (SmolLM2's tokenizer and ChatML template).

The reference for every greedy reply is a hand-written loop over `Target.forward` (argmax,
KV cache, stop at <|im_end|>); batching, resuming and the CLI must all agree with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from draftvocab.chat.conversations import Conversation, read_conversations
from draftvocab.cli import app
from draftvocab.core.errors import DraftVocabError
from draftvocab.engine.regenerate import check_options, finished_ids, regenerate
from tests.conftest import make_tiny_target

MAX_NEW = 8
RECORDS = [
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello! How can I help?"}]},
    {"messages": [{"role": "system", "content": "Be terse."},
                  {"role": "user", "content": "Explain speculative decoding in a few words, "
                   "mentioning draft models, verification and the acceptance rate."},
                  {"role": "assistant", "content": "A draft guesses, the target verifies."},
                  {"role": "user", "content": "Shorter?"},
                  {"role": "assistant", "content": "Guess, check."}]},
    {"conversations": [{"from": "human", "value": "Count to five"},
                       {"from": "gpt", "value": "1 2 3 4 5"},
                       {"from": "human", "value": "Thanks"},
                       {"from": "gpt", "value": "You are welcome."},
                       {"from": "human", "value": "Bye"}]},  # trailing turn with no reply
    {"messages": [{"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "user", "content": "Name a colour."},
                  {"role": "assistant", "content": "Blue."},
                  {"role": "user", "content": "Another one, please, a warm one this time."},
                  {"role": "assistant", "content": "Orange."}]},
    {"messages": [{"role": "user", "content": "Tell me a joke about tokenizers."},
                  {"role": "assistant", "content": "They split on the punchline."}]},
]


@pytest.fixture(scope="module")
def target():
    # Untied embeddings: a tied random model just repeats its last input token.
    return make_tiny_target(tie_word_embeddings=False)


def write_jsonl(path: Path, records=RECORDS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def conversations(records=RECORDS) -> list[Conversation]:
    return list(read_conversations(records))


def read_lines(path: Path) -> list[dict]:
    """The output's records in file order: batches of prompts alike in length."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_out(path: Path) -> list[dict]:
    """The output's records in input order."""
    return sorted(read_lines(path), key=lambda r: int(re.search(r"(\d+)\D*$", r["id"])[1]))


def greedy_reply(target, messages: list[dict], max_new: int = MAX_NEW) -> list[int]:
    """Reference: prefill, then argmax one token at a time until <|im_end|> or max_new."""
    tok = target.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    out = target.forward(ids)
    reply: list[int] = []
    while len(reply) < max_new:
        nxt = int(out.logits[0, -1].argmax())
        reply.append(nxt)
        if nxt == tok.eos_token_id:
            break
        out = target.forward(torch.tensor([[nxt]]), past=out.past_key_values)
    return reply


def reply_text(tok, reply: list[int]) -> str:
    """What a reply is kept as: its ids decoded exactly (special tokens too, nothing
    stripped), less the stop token, which the template writes back as the end of the turn."""
    if reply and reply[-1] == tok.eos_token_id:
        reply = reply[:-1]
    return tok.backend_tokenizer.decode(reply, skip_special_tokens=False)


def greedy_conversation(target, messages: list[dict]) -> tuple[list[dict], int]:
    """Reference for a whole conversation: each assistant turn sees the regenerated ones."""
    done, tokens = [], 0
    for m in messages:
        if m["role"] != "assistant":
            done.append(m)
            continue
        reply = greedy_reply(target, done)
        tokens += len(reply)
        eos = target.tokenizer.eos_token_id
        done.append({"role": "assistant", "content": reply_text(target.tokenizer, reply),
                     "token_ids": reply[:-1] if reply and reply[-1] == eos else reply})
    return done, tokens


# --- correctness -------------------------------------------------------------------------------


def test_greedy_equals_hand_written_forward_loop(target, tmp_path):
    convs = conversations()[:2]  # one single-turn, one two-turn with a system prompt
    stats = regenerate(convs, target, tmp_path / "out.jsonl", batch_size=1,
                       max_new_tokens=MAX_NEW)
    records = read_out(tmp_path / "out.jsonl")
    assert stats.written == 2 and [r["id"] for r in records] == [c.source for c in convs]
    for conv, record in zip(convs, records, strict=True):
        messages, tokens = greedy_conversation(target, conv.messages)
        assert record["messages"] == messages
        assert record["generated_tokens"] == tokens
    assert stats.generated_tokens == sum(r["generated_tokens"] for r in records)
    assert all(m["content"] for r in records for m in r["messages"])  # real text, not empty


def test_batched_left_padding_equals_one_at_a_time(target, tmp_path):
    convs = conversations()
    lengths = {len(target.tokenizer.apply_chat_template(c.messages[:1], tokenize=False))
               for c in convs}
    assert len(lengths) > 3  # prompts of different lengths: padding matters
    batched = regenerate(convs, target, tmp_path / "batched.jsonl", batch_size=3,
                         max_new_tokens=MAX_NEW)
    alone = regenerate(convs, target, tmp_path / "alone.jsonl", batch_size=1,
                       max_new_tokens=MAX_NEW)
    assert batched.written == alone.written == len(convs)
    assert read_out(tmp_path / "batched.jsonl") == read_out(tmp_path / "alone.jsonl")
    assert batched.generated_tokens == alone.generated_tokens


def test_batches_hold_prompts_alike_in_length(target, tmp_path, monkeypatch):
    import draftvocab.engine.regenerate as engine

    widths: list[list[int]] = []
    generate = engine._generate

    def spy(target, prompts, settings):
        widths.append([len(p) for p in prompts])
        return generate(target, prompts, settings)

    monkeypatch.setattr(engine, "_generate", spy)
    convs = conversations()
    first = [len(target.prompt_ids(c.messages[:next(i for i, m in enumerate(c.messages)
                                                      if m["role"] == "assistant")]))
             for c in convs]
    assert first != sorted(first)  # input order would pad short prompts to long ones
    regenerate(convs, target, tmp_path / "out.jsonl", batch_size=2, max_new_tokens=MAX_NEW,
               turns="first")
    assert [w for batch in widths for w in batch] == sorted(first)
    # Resumed, the unfinished conversations come back in the very batches they were cut into.
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_text("".join(lines[:2] + lines[4:]), encoding="utf-8")
    widths.clear()
    regenerate(convs, target, tmp_path / "cut.jsonl", batch_size=2, max_new_tokens=MAX_NEW,
               turns="first")
    assert widths == [sorted(first)[2:4]]
    assert read_out(tmp_path / "cut.jsonl") == read_out(tmp_path / "out.jsonl")
    # A window of one batch keeps the input's batches.
    widths.clear()
    regenerate(convs, target, tmp_path / "input.jsonl", batch_size=2, max_new_tokens=MAX_NEW,
               turns="first", sort_window=1)
    assert widths == [sorted(first[i:i + 2]) for i in range(0, len(first), 2)]
    with pytest.raises(DraftVocabError, match="sort window"):
        regenerate(convs, target, tmp_path / "none.jsonl", sort_window=0)


def test_stops_at_end_of_turn_while_the_batch_goes_on(tmp_path):
    target = make_tiny_target(tie_word_embeddings=False)
    tok = target.tokenizer
    convs = conversations()
    # Make <|im_end|> beat the third greedy token of the first conversation.
    third = greedy_reply(target, convs[0].messages[:1])[2]
    head = target.model.lm_head.weight
    head[tok.eos_token_id] = head[third] * 1.05
    reference = greedy_reply(target, convs[0].messages[:1])
    assert reference[-1] == tok.eos_token_id and len(reference) < MAX_NEW
    regenerate(convs[:3], target, tmp_path / "out.jsonl", batch_size=3, max_new_tokens=MAX_NEW)
    records = read_out(tmp_path / "out.jsonl")
    assert records[0]["generated_tokens"] == len(reference)  # the stop token counts
    assert records[0]["messages"][1]["content"] == reply_text(tok, reference)
    assert "truncated_turns" not in records[0]  # stopped: nothing truncated
    assert all(r["truncated_turns"] >= 1 for r in records[1:])  # cut at MAX_NEW
    for conv, record in zip(convs[:3], records, strict=True):
        assert record["messages"] == greedy_conversation(target, conv.messages)[0]
    assert max(r["generated_tokens"] for r in records) > len(reference)  # others went on


def test_keeps_other_turns_and_replaces_assistant_ones(target, tmp_path):
    convs = conversations()
    regenerate(convs, target, tmp_path / "all.jsonl", batch_size=4, max_new_tokens=MAX_NEW)
    regenerate(convs, target, tmp_path / "first.jsonl", batch_size=4, max_new_tokens=MAX_NEW,
               turns="first")
    for conv, full, first in zip(convs, read_out(tmp_path / "all.jsonl"),
                                 read_out(tmp_path / "first.jsonl"), strict=True):
        got = full["messages"]
        assert [m["role"] for m in got] == [m["role"] for m in conv.messages]
        for old, new in zip(conv.messages, got, strict=True):
            if old["role"] == "assistant":
                assert new["content"] != old["content"]
            else:
                assert new == old
        cut = next(i for i, m in enumerate(conv.messages) if m["role"] == "assistant")
        assert first["messages"] == got[:cut + 1]  # the first turn is the same either way


def test_too_long_prompts_are_skipped_and_counted(tmp_path):
    target = make_tiny_target(tie_word_embeddings=False, max_position_embeddings=64)
    long = {"messages": [{"role": "user", "content": "word " * 40},
                         {"role": "assistant", "content": "ok"}]}
    convs = conversations([RECORDS[0], long])
    stats = regenerate(convs, target, tmp_path / "out.jsonl", batch_size=2,
                       max_new_tokens=MAX_NEW)
    assert stats.written == 1 and stats.skipped == {"too_long": 1}
    assert [r["id"] for r in read_out(tmp_path / "out.jsonl")] == [convs[0].source]


def test_max_prompt_tokens_skips_longer_prompts(target, tmp_path):
    convs = conversations()[:2]
    lengths = [len(target.tokenizer.apply_chat_template(c.messages[:1], tokenize=False,
                                                        add_generation_prompt=True))
               for c in convs]
    assert lengths[0] != lengths[1]
    stats = regenerate(convs, target, tmp_path / "out.jsonl", batch_size=2,
                       max_new_tokens=MAX_NEW, max_prompt_tokens=0)
    assert stats.written == 0 and stats.skipped == {"too_long": 2}
    stats = regenerate(convs, target, tmp_path / "all.jsonl", batch_size=2,
                       max_new_tokens=MAX_NEW, max_prompt_tokens=10_000)
    assert stats.written == 2 and not stats.skipped


def test_opening_assistant_turns_are_dropped(target, tmp_path):
    opening = {"messages": [{"role": "assistant", "content": "Welcome!"},
                            {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello."}]}
    only = {"messages": [{"role": "assistant", "content": "Anyone there?"}]}
    convs = conversations([opening, only])
    stats = regenerate(convs, target, tmp_path / "out.jsonl", batch_size=2,
                       max_new_tokens=MAX_NEW)
    assert stats.written == 1 and stats.skipped == {"no_prompt": 1}
    (record,) = read_out(tmp_path / "out.jsonl")
    assert record["messages"] == greedy_conversation(target, opening["messages"][1:])[0]


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(target, tmp_path):
    convs = conversations()[:3]
    kwargs = {"batch_size": 3, "max_new_tokens": MAX_NEW, "temperature": 1.0, "top_p": 0.95}
    state = torch.get_rng_state()
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        regenerate(convs, target, tmp_path / f"{name}.jsonl", seed=seed, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    regenerate(convs, target, tmp_path / "greedy.jsonl", batch_size=3, max_new_tokens=MAX_NEW)
    a, b, c, greedy = (read_out(tmp_path / f"{n}.jsonl") for n in ("a", "b", "c", "greedy"))
    assert a == b
    assert a != c and a != greedy


# --- resuming ----------------------------------------------------------------------------------


def test_resume_skips_finished_and_repairs_a_cut_line(target, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl")
    out = tmp_path / "out.jsonl"
    kwargs = {"batch_size": 2, "max_new_tokens": MAX_NEW}
    first = regenerate(read_conversations(data, max_samples=3, seed=0), target, out, **kwargs)
    assert first.written == 3 and len(read_out(out)) == 3
    second = regenerate(read_conversations(data), target, out, **kwargs)
    assert (second.written, second.already_done) == (3, 3)
    records = read_out(out)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == 6
    # Same conversations as one uninterrupted run (greedy replies do not depend on batching).
    regenerate(read_conversations(data), target, tmp_path / "fresh.jsonl", **kwargs)
    by_id = {r["id"]: r for r in read_out(tmp_path / "fresh.jsonl")}
    assert {r["id"]: r for r in records} == by_id

    finished = out.read_bytes()
    again = regenerate(read_conversations(data), target, out, **kwargs)
    assert (again.written, again.already_done) == (0, 6)
    assert out.read_bytes() == finished

    out.write_bytes(finished[:-15])  # killed mid-write of the last line
    assert finished_ids(out) == {json.loads(line)["id"] for line in finished.splitlines()[:-1]}
    assert out.read_bytes() == finished[:finished.rstrip(b"\n").rfind(b"\n") + 1]
    repaired = regenerate(read_conversations(data), target, out, **kwargs)
    assert (repaired.written, repaired.already_done) == (1, 5)
    assert out.read_bytes() == finished


def test_output_that_is_not_a_regenerate_file_is_refused(target, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "x", "messages": []}\n{"messages": []}\n')
    with pytest.raises(DraftVocabError, match="line 2 is not a regenerate record"):
        regenerate(conversations()[:1], target, out, max_new_tokens=2)
    assert out.read_text() == '{"id": "x", "messages": []}\n{"messages": []}\n'


@pytest.mark.parametrize(("option", "value", "words"), [
    ("batch_size", 0, "batch size"), ("max_new_tokens", 0, "max new tokens"),
    ("temperature", -0.1, "temperature"), ("temperature", float("nan"), "temperature"),
    ("top_p", 0.0, "top_p"), ("top_p", 1.5, "top_p"), ("turns", "last", "turns"),
])
def test_bad_options_are_user_errors(option, value, words):
    options = {"batch_size": 1, "max_new_tokens": 1, "temperature": 0.0, "top_p": 1.0,
               "turns": "all"}
    check_options(**options)
    with pytest.raises(DraftVocabError, match=words):
        check_options(**{**options, option: value})


# --- CLI ---------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def target_dir(target, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-target")
    target.model.save_pretrained(path)
    target.tokenizer.save_pretrained(path)
    return path


def invoke(*args):
    return runner.invoke(app, ["regenerate", *(str(a) for a in args)])


def test_cli_json_and_resume(target, target_dir, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl")
    out = tmp_path / "out.jsonl"
    args = (data, "--target", target_dir, "-o", out, "--max-new-tokens", MAX_NEW,
            "--batch-size", 4, "--json")
    result = invoke(*args, "--max-samples", 2)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["written"], summary["already_done"]) == (2, 0)
    assert summary["generated_tokens"] > 0 and summary["out"] == str(out)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["written"], summary["already_done"]) == (4, 2)
    records = read_out(out)
    assert len({r["id"] for r in records}) == len(records) == 6
    # The saved and reloaded model writes what the in-memory one does.
    regenerate(read_conversations(data), target, tmp_path / "lib.jsonl", batch_size=1,
               max_new_tokens=MAX_NEW)
    by_id = {r["id"]: r for r in read_out(tmp_path / "lib.jsonl")}
    assert {r["id"]: r for r in records} == by_id


def test_cli_human_output(target_dir, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", RECORDS[:2])
    out = tmp_path / "out.jsonl"
    result = invoke(data, "--target", target_dir, "-o", out, "--max-new-tokens", 2)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "regenerated 2 conversations (0 already done)" in result.stderr
    assert len(read_out(out)) == 2


@pytest.mark.parametrize(("extra", "words"), [
    (("--temperature", "-1"), ("temperature",)),
    (("--top-p", "0"), ("top_p",)),
    (("--top-p", "1.5"), ("top_p",)),
    (("--turns", "last"), ("turns",)),
    (("--batch-size", "0"), ("batch size",)),
    (("--max-new-tokens", "0"), ("max new tokens",)),
    (("--max-samples", "0"), ("max_samples",)),
    (("--target", "no/such/model"), ("not found",)),
    (("--target", "llama3.1-8b"), ("no model weights",)),
])
def test_cli_bad_input_is_one_error_line(target_dir, tmp_path, extra, words):
    data = write_jsonl(tmp_path / "chats.jsonl", RECORDS[:1])
    args = [data, "--target", target_dir, "-o", tmp_path / "out.jsonl", *extra]
    assert_one_error(invoke(*args), words)
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_bad_paths_are_one_error_line(target_dir, tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", RECORDS[:1])
    assert_one_error(invoke(tmp_path / "missing.jsonl", "--target", target_dir,
                            "-o", tmp_path / "o.jsonl"), ("no such file",))
    assert_one_error(invoke(data, "--target", target_dir, "-o", tmp_path), ("directory",))
    assert_one_error(invoke(data, "--target", target_dir, "-o", data / "o.jsonl"),
                     ("cannot write",))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert_one_error(invoke(data, "--target", target_dir, "-o", bad), ("not a regenerate",))
    assert bad.read_text() == "not json\n"


def assert_one_error(result, words: tuple[str, ...]) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


# --- one rule through the pipeline: counting a regenerated file gives back what was generated --


def test_counting_the_output_gives_back_the_generated_ids(tmp_path, monkeypatch):
    import numpy as np

    import draftvocab.engine.regenerate as regen
    from draftvocab.chat.spans import ChatSpans
    from draftvocab.engine.target import load_target
    from draftvocab.vocab.counts import count_tokens

    target = load_target("smollm2-135m")  # the real model: real text, not random ids
    generated: list[list[int]] = []

    def recording(*args, **kwargs):
        replies = real_generate(*args, **kwargs)
        generated.extend(replies)
        return replies

    real_generate = regen._generate
    monkeypatch.setattr(regen, "_generate", recording)
    records = [
        {"messages": [{"role": "user", "content": "What is 2+2? Answer in one line."},
                      {"role": "assistant", "content": "x"},
                      {"role": "user", "content": "And 10 times that, as a number?"},
                      {"role": "assistant", "content": "y"}]},
        {"conversations": [{"from": "gpt", "value": "Hi! I'm a leading turn."},
                           {"from": "system", "value": "Answer briefly."},
                           {"from": "human", "value": "Name three primary colours."},
                           {"from": "gpt", "value": "z"}]},
        {"messages": [{"role": "user", "content": "Write one haiku about tokens, with an "
                       "emoji and the digits 2024."}, {"role": "assistant", "content": "w"}]},
    ]
    out = tmp_path / "regen.jsonl"
    stats = regenerate(conversations(records), target, out, batch_size=2, max_new_tokens=48)
    assert stats.written == 3 and len(generated) == 4
    lines = read_lines(out)  # in the order counting and training read them
    truncated = sum(r.get("truncated_turns", 0) for r in lines)
    counted = count_tokens(read_conversations(out), ChatSpans(target.tokenizer),
                           target.vocab_size, workers=1)
    expected = np.bincount(np.concatenate([np.array(r) for r in generated]),
                           minlength=target.vocab_size)
    expected[target.stop_ids[0]] += truncated  # a cut reply still ends its turn when rendered
    np.testing.assert_array_equal(counted.counts, expected)
    assert counted.metadata["left_out"] == {}  # regenerate dropped the leading turn itself
    assert read_out(out)[1]["messages"][0]["role"] == "system"
    # Training supervises the very same ids, spliced after prompts encoded as they were.
    from draftvocab.engine.train import encode_conversations

    examples, skipped = encode_conversations(read_conversations(out), target.tokenizer, 4096)
    assert not skipped
    trained = np.bincount(np.concatenate([e.ids[e.supervised] for e in examples]),
                          minlength=target.vocab_size)
    np.testing.assert_array_equal(trained, expected)
    for e, record in zip(examples, lines, strict=True):  # the prompt is what generate saw
        turn = record["messages"]
        cut = next(i for i, m in enumerate(turn) if m["role"] == "assistant")
        prompt = target.prompt_ids(turn[:cut])
        assert e.ids[:len(prompt)].tolist() == prompt


def test_token_ids_that_do_not_decode_to_the_text_are_not_used(tmp_path):
    from draftvocab.chat.spans import ChatSpans
    from draftvocab.engine.presets import get_preset
    from draftvocab.vocab.counts import count_tokens

    tok = get_preset("smollm2-135m").load_tokenizer()
    text = " ava"
    records = [{"messages": [{"role": "user", "content": "q"},
                             {"role": "assistant", "content": text, "token_ids": ids}]}
               for ids in (tok.encode(" a") + tok.encode("va"), [5, 6])]
    spans = ChatSpans(tok)
    good, bad = (count_tokens(conversations([r]), spans, len(tok), workers=1) for r in records)
    assert good.counts[tok.encode(" a")[0]] == 1  # the ids as written, not re-tokenised
    assert bad.metadata["turn_notes"] == {"token_ids_not_used": 1}
    assert bad.counts[tok.encode(" av")[0]] == 1  # the text's own tokens instead
