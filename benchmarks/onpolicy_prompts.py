"""Write a prompt mix shaped like Spec-Bench's six categories, built from ShareGPT (never from
Spec-Bench's own questions), as a prompts JSONL for `draftvocab regenerate`: the target then
writes the answers a draft must learn to predict (on-policy data, issue 15).

    python benchmarks/onpolicy_prompts.py --per-category 100 -o runs/speedup/prompts.jsonl

Categories and how each is built (Spec-Bench's prompt formats, ShareGPT's texts):
  mt_bench       first user turns of 8-80 words (open questions, writing, coding, advice)
  translation    "Translate German to English: <sentence>", German sentences found in ShareGPT
  summarization  "Summarize: <an assistant answer of 250-600 words>"
  qa             short single-sentence user questions (4-16 words, ending in '?')
  math_reasoning user turns of <= 80 words asking "how many/much" with at least two numbers
  rag            "<an assistant answer of 250-500 words>\\n<the user question it answered>"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

from draftvocab.core.assets import asset_package_file
from draftvocab.engine.presets import SHAREGPT

GERMAN = re.compile(r"\b(und|der|die|das|ist|nicht|ich|mit|für|auf|wir|sie|eine|ein|zu)\b")
NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


def _records(path: Path):
    """ShareGPT records, read one by one (the shipped file is cut mid-record at its end)."""
    text = path.read_text(encoding="utf-8")
    dec, i = json.JSONDecoder(), text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \n\r\t,":
            i += 1
        try:
            record, i = dec.raw_decode(text, i)
        except ValueError:
            return
        yield record


def _words(s: str) -> int:
    return len(s.split())


def build(per_category: int, seed: int) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = {c: [] for c in ("mt_bench", "translation", "summarization",
                                                   "qa", "math_reasoning", "rag")}
    german: set[str] = set()
    for record in _records(asset_package_file(*SHAREGPT)):
        turns = [(m.get("from"), (m.get("value") or "").strip())
                 for m in record.get("conversations", [])]
        for j, (who, text) in enumerate(turns):
            if not text or "```" in text:
                continue
            if len(GERMAN.findall(text)) >= 5:
                for s in re.split(r"(?<=[.!?])\s+", text):
                    s = " ".join(s.split())
                    if 8 <= _words(s) <= 40 and len(GERMAN.findall(s)) >= 2 and s.isprintable():
                        german.add(s)
                continue
            if who == "human":
                n = _words(text)
                if j == 0 and 8 <= n <= 80:
                    pools["mt_bench"].append(text)
                if 4 <= n <= 16 and text.endswith("?") and "\n" not in text:
                    pools["qa"].append(text)
                if (n <= 80 and re.search(r"\bhow (many|much)\b", text, re.IGNORECASE)
                        and len(NUMBER.findall(text)) >= 2):
                    pools["math_reasoning"].append(text)
            elif who == "gpt" and j > 0 and turns[j - 1][0] == "human":
                n = _words(text)
                question = turns[j - 1][1]
                if 250 <= n <= 600:
                    pools["summarization"].append(f"Summarize: {text}")
                if 250 <= n <= 500 and 4 <= _words(question) <= 40 and "```" not in question:
                    pools["rag"].append(f"{text}\n{question}")
    pools["translation"] = [f"Translate German to English: {s}" for s in sorted(german)]
    rng = random.Random(seed)
    picked = {}
    for category, pool in pools.items():
        pool = sorted(set(pool))
        rng.shuffle(pool)
        picked[category] = pool[:per_category]
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--per-category", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args()
    picked = build(args.per_category, args.seed)
    lines = []
    # interleave categories, so that any prefix of the file (a --max-samples subset, a resumed
    # run cut short) keeps the mix
    for i in range(args.per_category):
        for category, prompts in picked.items():
            if i < len(prompts):
                # regenerate rewrites assistant turns, so each prompt carries a placeholder one
                lines.append(json.dumps({"id": f"{category}:{i}", "category": category,
                                         "messages": [{"role": "user", "content": prompts[i]},
                                                      {"role": "assistant", "content": "-"}]}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"{len(lines)} prompts -> {args.out}: "
          + ", ".join(f"{c} {len(p)}" for c, p in picked.items()))


if __name__ == "__main__":
    main()
