"""benchmarks/speedup.py's data: which ShareGPT turns join the training set, which earlier answers
are reused."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speedup.py"


@pytest.fixture(scope="module")
def speedup():
    spec = importlib.util.spec_from_file_location("speedup_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _m(role, content):
    return {"role": role, "content": content}


def test_first_exchange_drops_leading_assistant_turns(speedup):
    chunk = [_m("assistant", "…the end of an earlier answer"), _m("user", "Why?"),
             _m("assistant", "Because."), _m("user", "And then?"), _m("assistant", "Done.")]
    assert speedup._first_exchange(chunk) == chunk[1:3]
    # the system prompt is part of what the target answers; two user turns are one prompt
    two_users = [_m("system", "Be brief."), _m("assistant", "Hello!"), _m("user", "Hi."),
                 _m("user", "Still there?"), _m("assistant", "Yes.")]
    assert speedup._first_exchange(two_users) == [two_users[0], *two_users[2:]]
    assert speedup._first_exchange([_m("assistant", "No prompt at all.")]) is None
    assert speedup._first_exchange([_m("user", "No reply.")]) is None


def test_leaks_finds_a_held_out_prompts_text(speedup):
    passage = "Solar panels turn sunlight into electricity through the photovoltaic effect."
    held = [f"Summarize: {passage}", "How many legs does a spider have?"]
    assert speedup._leaks([_m("user", "Explain solar."), _m("assistant", passage)], held)
    # short turns ("Yes.", "Thanks!") are everywhere and say nothing about a prompt
    assert not speedup._leaks([_m("user", "Yes."), _m("assistant", "Thanks!")], held)
    other = "Wind turbines turn the kinetic energy of moving air into electricity."
    assert not speedup._leaks([_m("user", "Explain wind."), _m("assistant", other)], held)
    assert not speedup._leaks([_m("assistant", None)], held)


def test_reuse_takes_earlier_answers_to_the_same_prompts(speedup, tmp_path):
    def prompts(*texts):
        return [{"messages": [_m("user", t), _m("assistant", "-")]} for t in texts]

    earlier, out = tmp_path / "earlier", tmp_path / "out"
    earlier.mkdir()
    out.mkdir()
    speedup.write_jsonl(earlier / "prompts.jsonl", prompts("a?", "b?", "c?", "a?"))
    answers = [{"id": f"{earlier / 'prompts.jsonl'}:{i}", "generated_tokens": 2,
                "messages": [_m("user", t), _m("assistant", t.upper())]}
               for i, t in ((3, "c?"), (1, "a?"), (2, "b?"), (4, "a?"))]  # not in input order
    speedup.write_jsonl(earlier / "regen.jsonl", answers)
    speedup.write_jsonl(out / "prompts.jsonl", prompts("b?", "d?", "a?", "a?", "a?"))
    speedup.reuse_regenerations(out, earlier)
    got = [json.loads(line) for line in (out / "regen.jsonl").read_text().splitlines()]
    # "c?" is not asked here; "a?" and "b?" keep their answers under this run's ids, each id
    # once: "a?" was answered twice, so its third asking is left to regenerate
    new = f"{out / 'prompts.jsonl'}"
    assert [(r["id"], r["messages"][1]["content"]) for r in got] == [
        (f"{new}:3", "A?"), (f"{new}:1", "B?"), (f"{new}:4", "A?")]
    speedup.write_jsonl(out / "regen.jsonl", got[:1])
    speedup.reuse_regenerations(out, earlier)  # a started regen.jsonl is left as it is
    assert len((out / "regen.jsonl").read_text().splitlines()) == 1
