"""benchmarks/speedup.py's data mix: which ShareGPT turns join the training set."""

import importlib.util
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
