"""Copy each prompt record's `category` onto its regenerated conversation (joined on the
`file:line` id that `draftvocab regenerate` writes), so analyses can group by category.

    python benchmarks/label_generations.py prompts.jsonl generations.jsonl labelled.jsonl
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    prompts, generations, out = sys.argv[1:4]
    categories = {}
    with open(prompts, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                categories[line_no] = json.loads(line).get("category")
    with open(generations, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as w:
        for line in f:
            record = json.loads(line)
            record["category"] = categories[int(record["id"].rsplit(":", 1)[1])]
            w.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
