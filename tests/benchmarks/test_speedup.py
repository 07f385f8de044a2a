"""benchmarks/speedup.py's data: which ShareGPT turns join the training set, which earlier answers
are reused."""

import importlib.util
import json
from pathlib import Path

import numpy as np
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


def _steps(commands: list[list[str]]) -> list[str]:
    """Each command's step: the draftvocab subcommand, or the script's name."""
    return [c[c.index("-m") + 2] if "-m" in c else Path(c[1]).name for c in commands]


def test_continue_from_trains_the_earlier_draft_on_its_data(speedup, tmp_path, monkeypatch):
    """--continue-from: no prompts, regenerate or sweep; the draft starts from the earlier one
    (`train --init-from`) on the earlier run's data and feature cache, then the bench."""
    earlier, out = tmp_path / "speedup-10", tmp_path / "speedup-11"
    commands = []
    monkeypatch.setattr(speedup, "run", lambda cmd, done=None: commands.append(
        [str(c) for c in cmd]))
    monkeypatch.setattr(speedup, "ceiling", lambda out: None)
    monkeypatch.setattr("sys.argv", [
        "speedup.py", "--out", str(out), "--continue-from", str(earlier), "--lrs", "1.5e-3,3e-3",
        "--ttts", "3,5", "--steps", "3000", "--seed", "1"])
    speedup.main()
    steps = _steps(commands)
    assert steps == ["optimize", "train", "bench"]
    train = commands[1]
    after = {flag: train[train.index(flag) + 1] for flag in (
        "--init-from", "--cache-features", "--eval-data", "--lr", "--ttt-steps", "-o", "--seed")}
    assert train[train.index("train") + 1] == str(earlier / "train.jsonl")
    assert after == {"--init-from": str(earlier / "draft"),
                     "--cache-features": str(earlier / "features"),
                     "--eval-data": str(earlier / "heldout.jsonl"), "--lr": "1.5e-3",
                     "--ttt-steps": "3", "-o": str(out / "draft"), "--seed": "1"}
    bench = commands[2]
    assert f"fixed={out / 'draft'}" in bench
    # by default the setting the README's latest bench measured: bf16, γ = 1, 128 new tokens,
    # transformers' prompt lookup and plain generate beside ours
    assert [bench[bench.index(flag) + 1] for flag in ("--dtype", "--gamma", "--max-new-tokens")
            ] == ["bf16", "1", "128"]
    assert {"prompt-lookup", "hf-generate"} <= {bench[i + 1] for i, c in enumerate(bench)
                                                if c == "--peer"}
    assert not (out / "train.jsonl").exists() and not (out / "sweep.jsonl").exists()


def test_grow_from_regenerates_only_new_prompts_and_reuses_the_earlier_cache(
        speedup, tmp_path, monkeypatch):
    """--grow-from: only the prompts the earlier run lacks are regenerated; train.jsonl is the
    earlier one then the new answers (so its feature cache is reused, `--reuse-features`),
    held-out is the earlier one; its draft trains on (`--init-from`), no sweep."""
    earlier, out = tmp_path / "speedup-17", tmp_path / "speedup-18"
    earlier.mkdir()

    def prompts(*texts):
        return [{"messages": [_m("user", t), _m("assistant", "-")]} for t in texts]

    speedup.write_jsonl(earlier / "prompts.jsonl", prompts("a?", "b?"))
    speedup.write_jsonl(earlier / "train.jsonl", [{"messages": [_m("user", "b?"),
                                                                _m("assistant", "B")]}])
    speedup.write_jsonl(earlier / "heldout.jsonl", [{"messages": [_m("user", "a?"),
                                                                  _m("assistant", "A")]}])
    commands = []

    def fake_run(cmd, done=None):
        cmd = [str(c) for c in cmd]
        commands.append(cmd)
        if cmd[1].endswith("onpolicy_prompts.py"):
            speedup.write_jsonl(Path(cmd[-1]), prompts("a?", "b?", "c?", "d?"))
        elif "regenerate" in cmd:
            asked = speedup.read_jsonl(Path(cmd[cmd.index("regenerate") + 1]))
            speedup.write_jsonl(Path(cmd[cmd.index("-o") + 1]), [
                {"generated_tokens": 0 if r["messages"][0]["content"] == "d?" else 1,
                 "messages": [r["messages"][0], _m("assistant", "new")]} for r in asked])

    monkeypatch.setattr(speedup, "run", fake_run)
    monkeypatch.setattr(speedup, "ceiling", lambda out: None)
    monkeypatch.setattr("sys.argv", [
        "speedup.py", "--out", str(out), "--grow-from", str(earlier), "--per-category", "4",
        "--lrs", "1.5e-3,3e-3", "--ttts", "1,3", "--steps", "1500"])
    speedup.main()
    steps = _steps(commands)
    assert steps == ["optimize", "onpolicy_prompts.py", "regenerate", "train", "bench"]
    regen = commands[2]
    assert regen[regen.index("regenerate") + 1] == str(out / "new_prompts.jsonl")
    assert [r["messages"][0]["content"] for r in speedup.read_jsonl(
        out / "new_prompts.jsonl")] == ["c?", "d?"]
    # the earlier conversations first, then the new answers ("d?" got no answer)
    assert [r["messages"][0]["content"] for r in speedup.read_jsonl(out / "train.jsonl")] == [
        "b?", "c?"]
    assert (out / "heldout.jsonl").read_text() == (earlier / "heldout.jsonl").read_text()
    train = commands[3]
    after = {flag: train[train.index(flag) + 1] for flag in (
        "--init-from", "--cache-features", "--reuse-features", "--eval-data", "--lr",
        "--ttt-steps")}
    assert after == {"--init-from": str(earlier / "draft"),
                     "--cache-features": str(out / "features"),
                     "--reuse-features": str(earlier / "features"),
                     "--eval-data": str(out / "heldout.jsonl"), "--lr": "1.5e-3",
                     "--ttt-steps": "1"}


def test_bench_variants_picks_ours_and_keeps_plain_and_the_peers(speedup, tmp_path, monkeypatch):
    """--bench-variants: only the variants asked for reach `bench` (no tree or adaptive flags
    when none is asked for); the peers always run beside them; an unknown name is refused."""
    out, commands = tmp_path / "run", []
    monkeypatch.setattr(speedup, "run", lambda cmd, done=None: commands.append(
        [str(c) for c in cmd]))
    monkeypatch.setattr(speedup, "ceiling", lambda out: None)
    argv = ["speedup.py", "--out", str(out), "--continue-from", str(tmp_path / "earlier")]
    monkeypatch.setattr("sys.argv", argv + ["--bench-variants", "fixed,fixed+lookup,lookup"])
    speedup.main()
    bench = commands[-1]
    named = [bench[i + 1] for i, c in enumerate(bench)
             if c in ("--draft", "--tree-draft", "--adaptive-draft")]
    assert named == [f"fixed={out / 'draft'}", f"fixed+lookup={out / 'draft'}"]
    assert [bench[i + 1] for i, c in enumerate(bench) if c == "--lookup"] == [
        "fixed+lookup", "lookup"]
    assert not {"--depth", "--adaptive-gamma"} & set(bench)
    assert [bench[i + 1] for i, c in enumerate(bench) if c == "--peer"] == [
        "prompt-lookup", "hf-generate"]

    commands.clear()  # the default: every variant, tree and adaptive with their settings
    monkeypatch.setattr("sys.argv", argv)
    speedup.main()
    bench = commands[-1]
    assert sum(c in ("--draft", "--tree-draft", "--adaptive-draft") for c in bench) == 6
    assert bench[bench.index("--depth") + 1] == "2" and "--adaptive-gamma" in bench

    monkeypatch.setattr("sys.argv", argv + ["--bench-variants", "fixed,medusa"])
    with pytest.raises(SystemExit):
        speedup.main()


def _train_log(tmp_path, name, taus, tokens, init_from=None):
    """A draft's train_log.json with held-out evals (τ, tokens) and one step per eval, grown
    from the draft of run `init_from` when given."""
    evals = [{"step": i, "tokens": t, "tau": tau, "gamma": 1, "acc": [tau - 1.0]}
             for i, (tau, t) in enumerate(zip(taus, tokens, strict=True))]
    if init_from is not None:
        init_from = {"path": str(tmp_path / init_from / "draft"), "sha256": "x", "tokens": 0}
    log = {"eval": evals, "init_from": init_from,
           "steps": [{"step": i, "seconds": 2.0} for i in range(len(evals))]}
    draft = tmp_path / name / "draft"
    draft.mkdir(parents=True)
    (draft / "train_log.json").write_text(json.dumps(log))
    return log


def test_pass_curve_follows_init_from_while_the_held_out_set_agrees(speedup, tmp_path):
    _train_log(tmp_path, "a", [1.0, 1.30], [0, 1e6])
    _train_log(tmp_path, "b", [1.30, 1.25, 1.35], [1e6, 1.5e6, 2e6], "a")
    c = _train_log(tmp_path, "c", [1.35, 1.38], [2e6, 4e6], "b")
    assert [e["tau"] for e in speedup.pass_curve(c)] == [1.30, 1.35, 1.38]
    # a pass evaluated on other held-out answers starts at another τ: the chain stops there
    d = _train_log(tmp_path, "d", [1.40, 1.42], [4e6, 5e6], "c")
    assert [e["tau"] for e in speedup.pass_curve(d)] == [1.42]
    # an earlier pass whose log is gone ends the chain too
    e = _train_log(tmp_path, "e", [1.30, 1.31], [1e6, 2e6], "gone")
    assert [x["tau"] for x in speedup.pass_curve(e)] == [1.31]


def test_ceiling_gives_the_tau_each_goal_needs_at_the_measured_round_cost(speedup, tmp_path):
    _train_log(tmp_path, "a", [1.0, 1.30], [0, 1_000_000])
    _train_log(tmp_path, "b", [1.30, 1.35], [1_000_000, 2_000_000], "a")
    _train_log(tmp_path, "c", [1.35, 1.33, 1.38], [2_000_000, 3_000_000, 4_000_000], "b")
    row = {"plain": (1.0, 1.0), "fixed": (1.30, 1.20), "prompt-lookup": (1.60, 1.40)}
    report = {"variants": list(row),
              "table": {"overall": {k: {"accept_length": [tau, 0.0], "speedup": s}
                                    for k, (tau, s) in row.items()}}}
    (tmp_path / "c" / "bench").mkdir()
    (tmp_path / "c" / "bench" / "report.json").write_text(json.dumps(report))
    speedup.ceiling(tmp_path / "c")
    text = (tmp_path / "c" / "ceiling.md").read_text()
    # round cost 1.30 / 1.20 = 1.083 plain steps: 1.25× needs τ 1.354, prompt lookup's 1.40×
    # τ 1.517; on held-out those are 0.08 higher (held-out 1.38 against the bench's 1.30)
    assert "| fixed | 1.30 | 1.20× | 1.08 | 1.35 | 1.52 |" in text
    assert "| fixed | = prompt-lookup (1.40×) | 1.52 | 1.60 (+ 0.08) |" in text
    # the three passes' final held-out τ, oldest first
    assert "| 1 | 1,000,000 | 1.300 |" in text and "| 3 | 4,000,000 | 1.380 |" in text
    # the fit across passes (1.30, 1.35, 1.38 at 1, 2, 4 M tokens) to held-out τ 1.597, and the
    # hours for the rest at this pass's 2 M tokens in 3 steps of 2 s
    b, a = np.polyfit(np.log10([1e6, 2e6, 4e6]), [1.30, 1.35, 1.38], 1)
    tokens = 10 ** ((1.40 * 1.30 / 1.20 + 0.08 - a) / b)
    cells = [c.strip() for c in text.split("| fixed | = prompt-lookup")[1].split("\n")[0]
             .split("|")]
    assert float(cells[4]) == pytest.approx(tokens, rel=0.01)
    assert float(cells[5].removesuffix(" h")) == pytest.approx(
        (tokens - 4e6) / (2e6 / 6) / 3600, rel=0.01)
    assert (tmp_path / "c" / "ceiling.png").read_bytes().startswith(b"\x89PNG")
