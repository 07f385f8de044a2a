"""Held-out τ of several trained drafts on the very same held-out answers, side by side.

Training logs held-out τ on its own run's held-out file; two runs whose splits differ (a larger
regenerated set holds out more answers) are compared here instead, on one file: each draft's
chain τ (`acceptance.chain_tau`, the replay `train --eval-data` logs) and acc@j.

    python benchmarks/heldout_tau.py runs/speedup-sg/heldout.jsonl runs/speedup/draft \
        runs/speedup-8/draft [--samples 64] [--gamma 2] [--json out.json]
    python benchmarks/heldout_tau.py runs/speedup-9/heldout.jsonl runs/speedup-9/draft \
        runs/speedup-10/draft/checkpoint-* runs/speedup-10/draft --plot curves.png

--plot draws τ against the supervised tokens each draft was trained on (a checkpoint's own
log), one line per training run (a draft directory and its checkpoint-* subdirectories).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from draftvocab.chat.conversations import read_conversations
from draftvocab.chat.spans import ChatSpans
from draftvocab.engine.acceptance import chain_tau, prepare_heldout
from draftvocab.engine.checkpoints import CHECKPOINT_RE, STATE_JSON
from draftvocab.engine.drafters import load_draft
from draftvocab.engine.target import load_target
from draftvocab.engine.train import LOG_NAME, encode_conversations


def trained_on(draft: Path) -> tuple[str, int]:
    """(training run, supervised tokens seen) of a draft directory: a checkpoint keeps its
    run's log up to its step in trainer_state.json, a finished run in train_log.json; both log
    the running total of supervised tokens per step."""
    if CHECKPOINT_RE.match(draft.name):
        return str(draft.parent), json.loads((draft / STATE_JSON).read_text())["log"][-1]["tokens"]
    return str(draft), json.loads((draft / LOG_NAME).read_text())["steps"][-1]["tokens"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("heldout", type=Path)
    ap.add_argument("drafts", type=Path, nargs="+")
    ap.add_argument("--samples", type=int, default=64,
                    help="held-out conversations, seeded as `train --eval-samples` picks them")
    ap.add_argument("--gamma", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None,
                    help="PNG: τ against training tokens, one line per training run")
    args = ap.parse_args()
    runs = [trained_on(path) for path in args.drafts] if args.plot else []

    target = load_target("smollm2-135m")
    reader = read_conversations(args.heldout, max_samples=args.samples, seed=args.seed)
    examples, _ = encode_conversations(reader, target.tokenizer, args.max_len,
                                       spans=ChatSpans(target.tokenizer))
    held = prepare_heldout(target, examples)
    rows = []
    for path in args.drafts:
        result = chain_tau(load_draft(path, target), held, gamma=args.gamma)
        rows.append({"draft": str(path), **result})
        acc = " ".join(f"{a:.3f}" for a in result["acc"])
        print(f"{path!s:>32}: τ {result['tau']:.3f} over {result['rounds']:,} rounds, "
              f"acc@0.. {acc}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.plot:
        from draftvocab.analysis.plots import plot_tau_curves

        curves: dict[str, list[tuple[float, float]]] = {}
        for (run, tokens), row in zip(runs, rows, strict=True):
            curves.setdefault(run, []).append((tokens, row["tau"]))
        print(f"# {plot_tau_curves(curves, args.plot, args.gamma)}")


if __name__ == "__main__":
    main()
