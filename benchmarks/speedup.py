"""Issue 15, end to end: on-policy data, a cached-feature draft with a measured lr / TTT sweep,
then plain vs fixed-γ vs adaptive-γ vs prompt lookup on Spec-Bench, side by side in one run.

Every step is a `draftvocab` command (printed before it runs) or a few lines of Python here;
a step whose output exists is skipped, so a cut run resumes where it stopped.

    python benchmarks/speedup.py --lrs 3e-3 --ttts 3 --sweep-steps 10 --steps 500 \
        --dtype bf16 --lookup-tokens 3    # the fourth pass's run (about 1 h 40 min here)
    python benchmarks/speedup.py --sharegpt 1000 --lrs 3e-3 --ttts 3 --sweep-steps 10 \
        --steps 500 --dtype bf16 --lookup-tokens 3    # the seventh pass's (1 h 45 min)
    python benchmarks/speedup.py --out runs/speedup-8 --per-category 400 --reuse runs/speedup-sg \
        --regen-batch-size 32 --lrs 3e-3 --ttts 3 --sweep-steps 10 --steps 500 --dtype bf16 \
        --lookup-tokens 3    # the eighth pass's: 3.4x the on-policy answers
    python benchmarks/speedup.py --out runs/speedup-10 --per-category 400 --reuse runs/speedup-9 \
        --regen-batch-size 32 --lrs 3e-3 --ttts 3 --sweep-steps 10 --steps 1500 --dtype bf16 \
        --lookup-tokens 3    # the tenth pass's: those answers, 1,500 steps (1 h 52 min here)
    python benchmarks/speedup.py --out runs/speedup-11 --continue-from runs/speedup-10 \
        --lrs 1.5e-3 --ttts 3 --steps 3000 --seed 1 --dtype bf16 --lookup-tokens 3
        # the eleventh pass's: the tenth's draft, 3,000 steps more on its data (1 h 53 min)
    python benchmarks/speedup.py --out runs/speedup-17 --per-category 400 --regen-batch-size 32 \
        --lrs 3e-3 --ttts 1 --sweep-steps 10 --steps 2400 --dtype bf16 --lookup-tokens 3
        # the seventeenth pass's: TTT depth 1 for a γ = 1 draft, one session from nothing
        # (regenerate 40 min, features 17, train 34; Spec-Bench acc@0 0.306)
    python benchmarks/speedup.py --out runs/speedup-18 --grow-from runs/speedup-17 \
        --per-category 800 --regen-batch-size 32 --lrs 1.5e-3 --ttts 1 --steps 3000 \
        --dtype bf16 --lookup-tokens 3
        # the eighteenth pass's: 1,589 fresh answers added to the seventeenth's data (regenerate
        # 31 min, features 17, train 67; Spec-Bench acc@0 0.327)
    python benchmarks/speedup.py --out runs/speedup-19 --grow-from runs/speedup-18 \
        --per-category 1200 --regen-batch-size 32 --lrs 1.5e-3 --ttts 1 --steps 3600 \
        --dtype bf16 --lookup-tokens 3 --bench-variants fixed,fixed+lookup,lookup
        # the nineteenth pass's: 1,587 more fresh answers (regenerate 31 min, features 13,
        # train 52, bench 12; Spec-Bench acc@0 0.338, draft alone 1.249x end to end)
        # the twentieth and twenty-first passes: the same with --out runs/speedup-20 /
        # runs/speedup-21, --grow-from runs/speedup-19 / runs/speedup-20, --per-category
        # 1600 / 2000 (about 1,580 more answers each; Spec-Bench acc@0 0.342 both times,
        # draft alone 1.249x, then 1.278x and 1.261x in two benches)
    python benchmarks/speedup.py --regen-samples 160 --lrs 3e-3 --ttts 3 --sweep-steps 10 \
        --steps 300 --dtype bf16 --lookup-tokens 3    # the third pass's run (53 min here)
    python benchmarks/speedup.py                      # all prompts and the full sweep (~2 h)
    python benchmarks/speedup.py --regen-samples 120 --sweep-steps 20 --steps 100   # smaller

Steps (under --out, default runs/speedup):
 1. prompts.jsonl   Spec-Bench-shaped prompts from ShareGPT (benchmarks/onpolicy_prompts.py)
 2. regen.jsonl     the target's greedy answers (`draftvocab regenerate`, resumable; with
                    --reuse, an earlier run's answers to the same prompts are taken as they are)
 3. heldout.jsonl   every 8th regenerated conversation; train.jsonl: the rest + the first
                    exchange of --sharegpt ShareGPT conversations (target's soft labels)
 4. features/       target features of train.jsonl, computed once (`train --cache-features`)
 5. sweep-*/        --sweep-steps steps for each lr x TTT depth; held-out τ picks the best
 6. draft/          the best setting for --steps steps (training.png: acc and τ vs tokens)
 7. bench/          `draftvocab bench --dtype DTYPE` (bf16), 128 new tokens: plain, draft at
                    fixed γ = 1, as a small dynamic tree (--tree: depth 2, top-3, 5 nodes),
                    adaptive γ <= 4, each with lookup rounds too (fixed+lookup, tree+lookup,
                    adaptive+lookup), our exact prompt lookup without a draft (lookup),
                    transformers' prompt lookup and plain generate, interleaved, 3 runs,
                    95 % CI, per category (--bench-variants: a subset of ours, e.g.
                    fixed,fixed+lookup,lookup; plain and the peers always run)
 8. ceiling.md/png  per variant the τ 1.25× and prompt lookup's speed-up need at its measured
                    round cost; for the draft alone, the training tokens a log-linear fit of
                    held-out τ needs to get there — inside this pass and across the passes it
                    grew through (`init_from`) — and the hours that is at this pass's rate
--continue-from RUN skips 1-5: it trains RUN's draft on, on RUN's data and cached features
(`train --init-from`, a fresh schedule at the first --lrs / --ttts), then runs 7-8.
--grow-from RUN adds fresh on-policy data to RUN's: the prompts of a larger --per-category
that RUN did not have (new_prompts.jsonl) are regenerated (new_regen.jsonl); train.jsonl is
RUN's followed by every new answer, heldout.jsonl is RUN's (its curve stays comparable);
features copy RUN's cache and compute only the new conversations (`train --reuse-features`);
no sweep: RUN's draft trains on (`--init-from`) at the first --lrs / --ttts, then 7-8.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DV = [sys.executable, "-m", "draftvocab"]
# our bench variants: the draft alone as a fixed chain, a dynamic tree, an adaptive chain, each
# with lookup rounds too, and our exact prompt lookup without a draft
VARIANTS = ("fixed", "tree", "tree+lookup", "adaptive", "fixed+lookup", "adaptive+lookup",
            "lookup")


def run(cmd: list[str], done: Path | None = None) -> None:
    if done is not None and done.exists():
        print(f"# done: {done}")
        return
    print("$ " + shlex.join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _leaks(messages: list[dict], held_prompts: list[str]) -> bool:
    """True when a message's text is inside a held-out prompt: the prompts are built from
    ShareGPT's turns (summarization and RAG wrap its answers), so a mixed-in conversation can
    carry a held-out prompt's own text."""
    texts = [t for t in ((m.get("content") or "").strip() for m in messages) if len(t) >= 40]
    return any(t in p for t in texts for p in held_prompts)


def _first_exchange(messages: list[dict]) -> list[dict] | None:
    """The conversation up to its first assistant reply to a prompt. A third of ShareGPT's
    records are chunks of longer chats that open with an assistant turn: that turn answers no
    prompt, so it is dropped (`drop_leading`, as `count` does) rather than taken as the reply."""
    from draftvocab.chat.supervision import drop_leading

    kept, _ = drop_leading(messages)
    reply = next((i for i, m in enumerate(kept) if m["role"] == "assistant"), None)
    return None if reply is None else kept[:reply + 1]


def _prompt_key(record: dict) -> str:
    """What was asked: a record's messages without its assistant turns (a prompts file's
    placeholder or a regenerated answer)."""
    return json.dumps([m for m in record["messages"] if m["role"] != "assistant"])


def _regenerate(prompts: Path, out: Path, args) -> list:
    """The `draftvocab regenerate` command every run uses: first turns, 128 new tokens."""
    return DV + ["regenerate", prompts, "--turns", "first", "--max-new-tokens", "128",
                 "--max-prompt-tokens", "1024", "--batch-size", args.regen_batch_size,
                 "-o", out]


def reuse_regenerations(out: Path, earlier: Path) -> None:
    """Start regen.jsonl from an earlier run's answers to the same prompts (matched by their
    messages, ids rewritten to this run's prompts file), so `regenerate` writes only the rest:
    a larger --per-category keeps the smaller one's prompts as its first lines."""
    if (out / "regen.jsonl").exists() or (out / "train.jsonl").exists():
        return
    new_ids: dict[str, list[str]] = {}  # a prompt asked twice (two categories) has two ids
    for i, r in enumerate(read_jsonl(out / "prompts.jsonl"), 1):
        new_ids.setdefault(_prompt_key(r), []).append(f"{out / 'prompts.jsonl'}:{i}")
    old_key = {f"{earlier / 'prompts.jsonl'}:{i}": _prompt_key(r)
               for i, r in enumerate(read_jsonl(earlier / "prompts.jsonl"), 1)}
    reused = []
    for r in read_jsonl(earlier / "regen.jsonl"):
        if new_ids.get(old_key.get(r["id"])):
            reused.append({**r, "id": new_ids[old_key[r["id"]]].pop(0)})
    write_jsonl(out / "regen.jsonl", reused)
    print(f"# {len(reused)} answers reused from {earlier / 'regen.jsonl'}")


def split_and_mix(out: Path, sharegpt: int, seed: int) -> None:
    """heldout.jsonl (every 8th regenerated conversation) and train.jsonl (the others, then the
    first exchange of `sharegpt` ShareGPT conversations, labelled by the target's own soft
    predictions like every example: their features cost a target forward, about 3 ms a token
    here, where a regenerated answer costs 35-45 ms a token). A ShareGPT conversation carrying a
    held-out prompt's text is left out, so held-out τ measures prompts the draft never saw."""
    if (out / "train.jsonl").exists():
        print(f"# done: {out / 'train.jsonl'}")
        return
    from draftvocab.chat.conversations import read_conversations
    from draftvocab.engine.presets import get_preset

    regen = [r for r in read_jsonl(out / "regen.jsonl") if r.get("generated_tokens")]
    held = regen[::8]
    train = [{"messages": r["messages"]} for i, r in enumerate(regen) if i % 8]
    held_prompts = [m["content"] for r in held for m in r["messages"] if m["role"] == "user"]
    leaked = 0
    if sharegpt:
        reader = read_conversations(get_preset("smollm2-135m").dataset_path(),
                                    skip_bad_lines=True, max_samples=sharegpt, seed=seed)
        for c in reader:
            exchange = _first_exchange(c.messages)
            if exchange is None:
                continue
            if _leaks(exchange, held_prompts):
                leaked += 1
                continue
            train.append({"messages": exchange})
    write_jsonl(out / "heldout.jsonl", [{"messages": r["messages"]} for r in held])
    write_jsonl(out / "train.jsonl", train)
    print(f"# {len(held)} held-out, {len(regen) - len(held)} on-policy + {sharegpt} ShareGPT "
          f"conversations ({leaked} left out: they carry a held-out prompt's text)")


def grow_data(out: Path, earlier: Path, args) -> None:
    """Steps 1-3 of --grow-from: the prompts `earlier` lacks, their answers, and the training
    file `earlier`'s conversations first (so its feature cache is reused), held-out kept."""
    import shutil

    run([sys.executable, HERE / "onpolicy_prompts.py", "--per-category", args.per_category,
         "-o", out / "prompts.jsonl"], out / "prompts.jsonl")
    if not (out / "new_prompts.jsonl").exists():
        had = {_prompt_key(r) for r in read_jsonl(earlier / "prompts.jsonl")}
        fresh = [r for r in read_jsonl(out / "prompts.jsonl") if _prompt_key(r) not in had]
        write_jsonl(out / "new_prompts.jsonl", fresh)
        print(f"# {len(fresh)} prompts {earlier} did not have -> {out / 'new_prompts.jsonl'}")
    run(_regenerate(out / "new_prompts.jsonl", out / "new_regen.jsonl", args),
        out / "train.jsonl")
    if (out / "train.jsonl").exists():
        print(f"# done: {out / 'train.jsonl'}")
        return
    new = [{"messages": r["messages"]} for r in read_jsonl(out / "new_regen.jsonl")
           if r.get("generated_tokens")]
    shutil.copyfile(earlier / "heldout.jsonl", out / "heldout.jsonl")
    write_jsonl(out / "train.jsonl", read_jsonl(earlier / "train.jsonl") + new)
    print(f"# train.jsonl: {earlier}'s conversations + {len(new)} new on-policy ones; "
          f"held-out: {earlier}'s")


def make_data(out: Path, args) -> None:
    """Steps 1-3: prompts, the target's answers (resumable), the held-out / training split."""
    run([sys.executable, HERE / "onpolicy_prompts.py", "--per-category", args.per_category,
         "-o", out / "prompts.jsonl"], out / "prompts.jsonl")
    regen = _regenerate(out / "prompts.jsonl", out / "regen.jsonl", args)
    if args.regen_samples:
        regen += ["--max-samples", args.regen_samples]
    if args.reuse:
        reuse_regenerations(out, args.reuse)
    run(regen, out / "train.jsonl")  # resumes a cut regeneration; skipped once split
    split_and_mix(out, args.sharegpt, args.seed)


def sweep(out: Path, common: list, args) -> tuple[str, str]:
    """Step 5: --sweep-steps steps per lr x TTT depth; the pair with the best held-out τ."""
    results = {}
    for lr in args.lrs.split(","):
        for ttt in args.ttts.split(","):
            name = f"sweep-lr{lr}-ttt{ttt}"
            run(common + ["--lr", lr, "--ttt-steps", ttt, "--max-steps", args.sweep_steps,
                          "--eval-every", args.sweep_steps, "-o", out / name],
                out / name / "train_log.json")
            log = json.loads((out / name / "train_log.json").read_text())
            results[(lr, ttt)] = log["eval"][-1]["tau"]
            print(f"# {name}: held-out τ {results[(lr, ttt)]:.3f}")
    write_jsonl(out / "sweep.jsonl", [{"lr": float(k[0]), "ttt_steps": int(k[1]),
                                       "steps": args.sweep_steps, "heldout_tau": v}
                                      for k, v in results.items()])
    lr, ttt = max(results, key=results.get)
    print(f"# best: lr {lr}, TTT {ttt}")
    return lr, ttt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/speedup"))
    ap.add_argument("--mapping", type=Path, default=Path("runs/smol-vocab"),
                    help="`draftvocab optimize --preset smollm2-135m -o DIR` (made if missing)")
    ap.add_argument("--per-category", type=int, default=100, help="prompts per category")
    ap.add_argument("--regen-samples", type=int, default=None,
                    help="regenerate only the first N prompts (default: all)")
    ap.add_argument("--reuse", type=Path, default=None, help="an earlier run's --out whose "
                    "answers to the same prompts are taken instead of regenerated")
    ap.add_argument("--regen-batch-size", type=int, default=8,
                    help="prompts regenerated together")
    ap.add_argument("--sharegpt", type=int, default=300, help="ShareGPT conversations mixed in")
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lrs", default="1e-3,3e-3")
    ap.add_argument("--ttts", default="3,5")
    ap.add_argument("--sweep-steps", type=int, default=40)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--gamma", type=int, default=1, help="fixed chain length (1: the cheapest "
                    "round, the best draft-alone setting since the twelfth pass)")
    ap.add_argument("--adaptive-gamma", type=int, default=4, help="longest adaptive chain")
    ap.add_argument("--tree", default="2,3,5", help="DEPTH,TOPK,TOTAL of the tree variant "
                    "(EAGLE-2 dynamic tree, --tree-draft)")
    ap.add_argument("--bench-variants", default=",".join(VARIANTS),
                    help="which of our variants the bench runs beside plain and the peers, "
                    "comma-separated (the eighteenth pass on: fixed,fixed+lookup,lookup)")
    ap.add_argument("--bench-per-category", type=int, default=2)
    ap.add_argument("--bench-runs", type=int, default=3)
    ap.add_argument("--lookup-tokens", type=int, default=3,
                    help="tokens copied per lookup round (fixed+lookup, lookup)")
    ap.add_argument("--dtype", default="bf16", help="the target's dtype in the bench (bf16: "
                    "verify rows bit-identical to one-token steps, see stepwise.py; fp32; "
                    "which is faster depends on the CPU: bench_dtype_verify.py)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="per bench request")
    ap.add_argument("--target-layers", default=None,
                    help="the three target layers the draft reads, e.g. 1,14,29 (`train "
                         "--target-layers`; default EAGLE-3's 1,14,26 for this target)")
    ap.add_argument("--continue-from", type=Path, default=None,
                    help="an earlier run's --out: train its draft on (`train --init-from`) on "
                    "its train.jsonl, heldout.jsonl and features; no regenerate, no sweep")
    ap.add_argument("--grow-from", type=Path, default=None,
                    help="an earlier run's --out: regenerate the prompts of --per-category it "
                    "lacks, train its draft on (`--init-from`) on its data + the new answers, "
                    "reusing its feature cache; no sweep")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.bench_variants = args.bench_variants.split(",")
    if unknown := set(args.bench_variants) - set(VARIANTS):
        ap.error(f"--bench-variants: unknown {', '.join(sorted(unknown))}; "
                 f"pick from {', '.join(VARIANTS)}")
    if args.grow_from and args.continue_from:
        ap.error("--grow-from and --continue-from are two ways to go on; pick one")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    run(DV + ["optimize", "--preset", "smollm2-135m", "-o", args.mapping],
        args.mapping / "draft_vocab.json")
    data = args.continue_from or out
    earlier = args.continue_from or args.grow_from
    if args.grow_from:
        grow_data(out, args.grow_from, args)
    elif args.continue_from is None:
        make_data(out, args)
    common = DV + ["train", data / "train.jsonl", "--mapping", args.mapping,
                   "--cache-features", data / "features", "--eval-data", data / "heldout.jsonl",
                   "--max-len", args.max_len, "--batch-size", args.batch_size,
                   "--eval-gamma", args.gamma, "--seed", args.seed, "--json"]
    if args.target_layers:
        common += ["--target-layers", args.target_layers]
    if args.grow_from:
        common += ["--reuse-features", args.grow_from / "features"]
    if earlier is None:
        lr, ttt = sweep(out, common, args)
    else:
        lr, ttt = args.lrs.split(",")[0], args.ttts.split(",")[0]
        common += ["--init-from", earlier / "draft"]
    run(common + ["--lr", lr, "--ttt-steps", ttt, "--max-steps", args.steps,
                  "--eval-every", max(1, args.steps // 10),
                  "--save-every", max(100, args.steps // 5), "-o", out / "draft"],
        out / "draft" / "train_log.json")
    run(bench_command(out / "draft", args) + ["-o", out / "bench"],
        out / "bench" / "report.json")
    ceiling(out)


def bench_command(draft: Path, args) -> list:
    """`draftvocab bench` for the --bench-variants asked for, with plain decoding and the peers
    (transformers' prompt lookup and plain generate) always beside them."""
    flag = {"fixed": "--draft", "tree": "--tree-draft", "adaptive": "--adaptive-draft"}
    cmd = DV + ["bench", "--dtype", args.dtype]
    for name in args.bench_variants:
        if option := flag.get(name.removesuffix("+lookup")):  # "lookup" alone has no draft
            cmd += [option, f"{name}={draft}"]
        if name.endswith("lookup"):
            cmd += ["--lookup", name]
    if any(v.startswith("tree") for v in args.bench_variants):
        depth, topk, total = args.tree.split(",")
        cmd += ["--depth", depth, "--topk", topk, "--total-tokens", total]
    if any(v.startswith("adaptive") for v in args.bench_variants):
        cmd += ["--adaptive-gamma", args.adaptive_gamma]
    return cmd + ["--lookup-tokens", args.lookup_tokens, "--chain", "--gamma", args.gamma,
                  "--peer", "prompt-lookup", "--peer", "hf-generate",
                  "--per-category", args.bench_per_category, "--turns", "1",
                  "--max-new-tokens", args.max_new_tokens, "--runs", args.bench_runs]


def pass_curve(log: dict) -> list[dict]:
    """Held-out τ at the end of each pass this draft grew through, oldest first, this one last.

    A pass trained `--init-from` an earlier draft starts its log with that draft's held-out τ;
    the earlier pass's own final τ is the same number only when both were measured on the same
    held-out answers (`--grow-from` and `--continue-from` keep them), so the chain is followed
    back through `init_from` for as long as the two agree. Across passes is the curve to
    extrapolate: inside one warm-restarted pass τ first dips and then climbs steeply back."""
    curve = [log["eval"][-1]]
    while (init := log.get("init_from")) is not None:
        path = Path(init["path"]) / "train_log.json"
        if not path.exists():
            break
        earlier = json.loads(path.read_text())
        if abs(earlier["eval"][-1]["tau"] - log["eval"][0]["tau"]) > 1e-9:
            break  # another held-out set: not one curve
        curve.insert(0, earlier["eval"][-1])
        log = earlier
    return curve


def _tokens_text(tokens: float | None) -> str:
    """A fit's answer: 0.0 when there were too few points to fit, None when it does not rise."""
    if tokens is None:
        return "never (the fit does not rise)"
    return f"{tokens:,.3g}" if tokens else "—"


def ceiling(out: Path, goal: float = 1.25, peer: str = "prompt-lookup") -> None:
    """Where the ceiling is: per variant, τ reached, the cost of a round in plain steps
    (c = τ / speed-up: a round makes τ tokens in the time of c plain steps) and the τ each goal
    needs at that cost — `goal`× plain decoding, and `peer`'s speed-up when the bench ran it.
    For the draft alone, how many supervised tokens a log-linear fit of held-out τ says that
    takes (shifted by the held-out → bench gap), fitted inside this pass and across the passes
    it grew through, and how long this pass's training rate would need for them
    (ceiling.png: τ needed against τ reached against training tokens)."""
    from draftvocab.analysis.plots import plot_ceiling, tokens_for_tau
    from draftvocab.core.atomic import atomic_write

    report = json.loads((out / "bench" / "report.json").read_text())
    log = json.loads((out / "draft" / "train_log.json").read_text())
    overall = report["table"]["overall"]
    goals = {f"{goal:g}× plain": goal}
    if peer in overall:
        goals[f"= {peer} ({overall[peer]['speedup']:.2f}×)"] = overall[peer]["speedup"]
    evals = [e for e in log["eval"] if e["tokens"] > 0][1:]  # inside the pass: past the first
    curve = pass_curve(log)
    trained = log["eval"][-1]["tokens"] - log["eval"][0]["tokens"]
    rate = trained / sum(s["seconds"] for s in log["steps"]) if log["steps"] else 0.0
    lines = ["| variant | τ | speed-up | round cost (plain steps) | "
             + " | ".join(f"τ needed for {g}" for g in goals) + " |",
             "|---|---|---|---|" + "---|" * len(goals)]
    draft_rows, reached, needed = [], {}, {}
    for name in report["variants"][1:]:
        row = overall[name]
        tau, speedup = row["accept_length"][0], row["speedup"]
        cost = tau / speedup
        lines.append(f"| {name} | {tau:.2f} | {speedup:.2f}× | {cost:.2f} | "
                     + " | ".join(f"{g * cost:.2f}" for g in goals.values()) + " |")
        if name not in ("fixed", "adaptive"):  # the draft alone: what the goal is about
            continue
        # held-out τ runs above the bench's τ (other prompts): shift the target by the gap
        gap = log["eval"][-1]["tau"] - tau
        reached[f"{name}, {next(iter(goals))}"] = tau  # one marker per draft, not per goal
        for label, g in goals.items():
            needed[f"{name}, {label}"] = g * cost
            inside, across = (
                tokens_for_tau([e["tokens"] for e in points], [e["tau"] for e in points],
                               g * cost + gap) if len(points) >= 3 else 0.0
                for points in (evals, curve))
            hours = (f"{(across - curve[-1]['tokens']) / rate / 3600:,.3g} h"
                     if across and rate and across > curve[-1]["tokens"] else "—")
            draft_rows.append(f"| {name} | {label} | {g * cost:.2f} | {g * cost + gap:.2f} "
                              f"(+ {gap:.2f}) | {_tokens_text(inside)} | "
                              f"{_tokens_text(across)} | {hours} |")
    if draft_rows:
        lines += ["", ("| draft | goal | τ needed on the bench | on held-out (+ its gap to the "
                       "bench) | supervised tokens, fit inside this pass | fit across passes | "
                       f"training for them at this pass's {rate:,.0f} tokens/s |"),
                  "|---|---|---|---|---|---|---|", *draft_rows]
    lines += ["", ("| pass (draft) | supervised training tokens | held-out τ (γ = "
              f"{log['eval'][0]['gamma']}) | held-out acc@0 |"), "|---|---|---|---|"]
    lines += [f"| {i + 1} | {e['tokens']:,} | {e['tau']:.3f} | {e['acc'][0]:.3f} |"
              for i, e in enumerate(curve)]
    lines += ["", ("| this pass: supervised training tokens | held-out τ | held-out acc@0 |"),
              "|---|---|---|"]
    lines += [f"| {e['tokens']:,} | {e['tau']:.3f} | {e['acc'][0]:.3f} |" for e in log["eval"]]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "ceiling.md", text)
    if needed:
        across = len(curve) >= 3
        plot_ceiling(curve if across else log["eval"], reached, needed, out / "ceiling.png",
                     fit_from=0 if across else 1)
    print(text)


if __name__ == "__main__":
    main()
