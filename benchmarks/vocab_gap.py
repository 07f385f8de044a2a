"""Where a draft's first-token acceptance goes, per category, on replayed held-out answers: right,
wrong inside its vocabulary, or impossible because the target's token lies outside it — and of
those, how many the context already held (copies only prompt lookup can propose). Run on two
datasets, it splits their gap in acc@0 between the vocabulary and the prediction (issue 15).

    python benchmarks/vocab_gap.py runs/fresh12/draft \\
        runs/sb_regen.jsonl=../shared/data/spec_bench_questions.jsonl \\
        runs/speedup-10/heldout.jsonl=runs/speedup-10/prompts.jsonl --json gap.json

Each dataset is REPLIES[=CATEGORIES]: a regenerated JSONL (`draftvocab regenerate`: the target's
own greedy answers) and optionally a JSONL naming each prompt's category (Spec-Bench's questions
file, or `onpolicy_prompts.py`'s prompts), matched on the first user turn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from draftvocab.chat.spans import ChatSpans
from draftvocab.engine.acceptance import HeldOut, first_token_outcomes, prepare_heldout
from draftvocab.engine.drafters import load_draft
from draftvocab.engine.target import load_target
from draftvocab.engine.train import encode_conversations

SPEC_BENCH = {"translation", "summarization", "qa", "math_reasoning", "rag"}  # else MT-Bench


def categories(path: Path | None) -> dict[str, str]:
    """First user turn -> category (Spec-Bench's MT-Bench subcategories become mt_bench)."""
    if path is None:
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        first = row["turns"][0] if "turns" in row else row["messages"][0]["content"]
        cat = row["category"]
        out[first.strip()] = cat if "turns" not in row or cat in SPEC_BENCH else "mt_bench"
    return out


def replayed(target, replies: Path) -> tuple[list[list[dict]], HeldOut]:
    """The regenerated conversations of `replies` and their held-out replay (one example each,
    in order: a conversation that cannot be encoded stops the run)."""
    records = [json.loads(line) for line in replies.read_text(encoding="utf-8").splitlines()]
    chats = [[{k: v for k, v in m.items() if k in ("role", "content")} for m in r["messages"]]
             for r in records]
    examples, skipped = encode_conversations(chats, target.tokenizer, 1024,
                                             spans=ChatSpans(target.tokenizer))
    if skipped:
        raise SystemExit(f"{replies}: {skipped} conversations could not be encoded")
    return chats, prepare_heldout(target, examples)


def groups(chat: list[dict], named: dict[str, str]) -> set[str]:
    """The rows a conversation counts in: its category's and "all"."""
    return {named.get(chat[0]["content"].strip(), "other") if named else "all", "all"}


def gap(target, draft, replies: Path, named: dict[str, str]) -> dict[str, dict]:
    chats, held = replayed(target, replies)
    outcomes = first_token_outcomes(draft, held)
    table: dict[str, dict] = {}
    for chat, outcome in zip(chats, outcomes, strict=True):
        for name in groups(chat, named):
            row = table.setdefault(name, dict.fromkeys(outcome, 0))
            for key, value in outcome.items():
                row[key] += value
    for row in table.values():
        n, outside = row["positions"], row["outside"]
        row.update(acc0=row["right"] / n, outside_share=outside / n,
                   outside_in_context_share=row["outside_in_context"] / n,
                   acc0_inside=row["right"] / max(n - outside, 1))
    return dict(sorted(table.items(), key=lambda kv: (kv[0] == "all", kv[0])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("draft", type=Path)
    ap.add_argument("datasets", nargs="+", help="REPLIES.jsonl[=CATEGORIES.jsonl]")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    target = load_target(args.target)
    draft = load_draft(args.draft, target)
    result = {}
    for item in args.datasets:
        replies, _, named = item.partition("=")
        table = gap(target, draft, Path(replies), categories(Path(named) if named else None))
        result[replies] = table
        print(f"\n{replies} (draft {args.draft}, k = {draft.config.draft_vocab_size:,})")
        print("| category | positions | acc@0 | target token outside the vocabulary | "
              "… of which in the context | acc@0 where inside |")
        print("|---|---|---|---|---|---|")
        for cat, row in table.items():
            print(f"| {cat} | {row['positions']:,} | {row['acc0']:.3f} | "
                  f"{row['outside_share']:.3f} | {row['outside_in_context_share']:.3f} | "
                  f"{row['acc0_inside']:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
