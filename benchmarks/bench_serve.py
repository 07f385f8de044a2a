"""The serving path measured against the in-process engine, in one run.

Starts two `draftvocab serve` processes on this machine (plain decoding, and with --draft),
then
1. `draftvocab bench` with in-process plain and draft decoding *and* both servers on the same
   Spec-Bench questions, interleaved: the server's overhead per token is the ratio of each
   server's tokens/s to its in-process twin (same decoder, same settings);
2. `draftvocab regenerate --endpoint` against the plain server with 1 and with 4 requests in
   flight (interleaved repeats, fresh output each time): generated tokens/s.

    python benchmarks/bench_serve.py --draft runs/draft-trimmed --out runs/serve-bench

Prints a JSON summary (also written to OUT/summary.json); the bench report is OUT/bench/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from draftvocab.engine.server_process import ServerProcess


def draftvocab(*args: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "draftvocab", *args, "--json"],
                         capture_output=True, text=True, check=False)
    if run.returncode:
        sys.exit(f"draftvocab {args[0]} failed: {run.stderr.strip()}")
    return json.loads(run.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draft", default="runs/draft-trimmed")
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--regen-samples", type=int, default=16)
    ap.add_argument("--regen-repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/serve-bench"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    decode = ["--chain", "--gamma", "2"]  # the README's EAGLE-3 setting on this CPU
    plain = ServerProcess("--model-name", "smollm2-135m")
    drafted = ServerProcess("--draft", a.draft, "--model-name", "smollm2-135m-trimmed", *decode)
    try:
        t0 = time.perf_counter()
        draftvocab(
            "bench", "--draft", f"trimmed={a.draft}", "--endpoint", f"serve-plain={plain.url}",
            "--endpoint", f"serve-trimmed={drafted.url}", *decode, "--turns", "1",
            "--per-category", str(a.per_category), "--runs", str(a.runs),
            "--max-new-tokens", str(a.max_new_tokens), "-o", str(a.out / "bench"))
        bench_seconds = time.perf_counter() - t0
        report = json.loads((a.out / "bench" / "report.json").read_text())
        overall = report["table"]["overall"]
        tps = {n: overall[n]["tokens_per_s"] for n in report["variants"]}
        serving = {}
        for server, local in (("serve-plain", "plain"), ("serve-trimmed", "trimmed")):
            ratio = tps[server][0] / tps[local][0]
            serving[server] = {
                "tokens_per_s": tps[server], "in_process_tokens_per_s": tps[local],
                "ratio_to_in_process": round(ratio, 3),
                "overhead_ms_per_token": round(1e3 / tps[server][0] - 1e3 / tps[local][0], 2),
                "ttft_s": overall[server]["ttft_s"],
                "in_process_ttft_s": overall[local]["ttft_s"],
                "accept_length": overall[server]["accept_length"],
                "in_process_accept_length": overall[local]["accept_length"]}
        regen: dict[int, list[float]] = {1: [], 4: []}
        for rep in range(a.regen_repeats):
            for c in (1, 4) if rep % 2 == 0 else (4, 1):
                out = a.out / f"regen-c{c}.jsonl"
                out.unlink(missing_ok=True)
                s = draftvocab("regenerate", "--endpoint", plain.url, "--target",
                               "smollm2-135m", "--max-samples", str(a.regen_samples),
                               "--max-new-tokens", str(a.max_new_tokens), "--turns", "first",
                               "--concurrency", str(c), "-o", str(out))
                regen[c].append(s["tokens_per_s"])
    finally:
        plain.stop()
        drafted.stop()
    summary = {
        "bench": {"questions": report["table"]["overall"]["plain"]["requests"],
                  "runs": a.runs, "max_new_tokens": a.max_new_tokens,
                  "greedy_mismatches": report["greedy_mismatches"],
                  "tokens_per_s": tps, "serving": serving},
        "regenerate": {f"concurrency_{c}": {"tokens_per_s": v,
                                            "median": statistics.median(v)}
                       for c, v in regen.items()},
        "regenerate_ratio_4_to_1": round(statistics.median(regen[4])
                                         / statistics.median(regen[1]), 3),
        "bench_seconds": round(bench_seconds, 1)}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
