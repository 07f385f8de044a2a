#!/usr/bin/env bash
# The paper's section-4 analyses on real data (about 10 min on 2 CPU cores): SmolLM2 answers
# 8 Spec-Bench questions per category, then coverage / missing tokens / stability / sweep /
# report for the SmolLM2 vocabulary chosen on ShareGPT. Everything goes under runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
DV=.venv/bin/draftvocab
PY=.venv/bin/python
mkdir -p runs/analysis
[ -d runs/smol-vocab ] || $DV optimize --preset smollm2-135m -o runs/smol-vocab
$PY - <<'PYEOF'
import collections, json
from draftvocab.bench import default_questions
seen = collections.Counter()
with open(default_questions()) as f, open("runs/analysis/specbench_prompts.jsonl", "w") as out:
    for line in f:
        q = json.loads(line)
        if seen[q["category"]] < 8:
            seen[q["category"]] += 1
            out.write(json.dumps({"category": q["category"], "messages": [
                {"role": "user", "content": q["turns"][0]},
                {"role": "assistant", "content": ""}]}) + "\n")
PYEOF
$DV regenerate runs/analysis/specbench_prompts.jsonl -o runs/analysis/specbench_gen.jsonl \
    --turns first --max-new-tokens 128 --batch-size 8
$PY benchmarks/label_generations.py runs/analysis/specbench_prompts.jsonl \
    runs/analysis/specbench_gen.jsonl runs/analysis/specbench_labelled.jsonl
A=runs/smol-vocab/analysis
$DV coverage runs/analysis/specbench_labelled.jsonl --run runs/smol-vocab --group-by category -o $A
$DV missing runs/analysis/specbench_labelled.jsonl --run runs/smol-vocab --group-by category --top 10 -o $A
$DV stability --preset smollm2-135m -o $A
$DV sweep --run runs/smol-vocab -o $A
$DV report runs/smol-vocab
