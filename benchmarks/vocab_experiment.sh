#!/usr/bin/env bash
# The paper's Tables 2/3/6 experiment on CPU: the same regenerated data, full vocabulary
# vs the optimiser's k*, then Spec-Bench. Writes everything under runs/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
DV=.venv/bin/draftvocab
mkdir -p runs
$DV optimize --preset smollm2-135m -o runs/smol-vocab --json > runs/smol-vocab.json
echo "== regenerate $(date -u +%T)"
$DV regenerate --max-samples 400 --turns first --max-new-tokens 96 --max-prompt-tokens 160 --batch-size 8 -o runs/regen.jsonl --json > runs/regen.json
echo "== train trimmed $(date -u +%T)"
$DV train runs/regen.jsonl --mapping runs/smol-vocab/vocab_mapping.safetensors --max-steps 150 --batch-size 4 --max-len 256 --ttt-steps 4 --lr 1e-3 --warmup 10 -o runs/draft-trimmed --json > runs/train-trimmed.json
echo "== train full $(date -u +%T)"
$DV train runs/regen.jsonl --max-steps 150 --batch-size 4 --max-len 256 --ttt-steps 4 --lr 1e-3 --warmup 10 -o runs/draft-full --json > runs/train-full.json
echo "== bench $(date -u +%T)"
# Chain of 2: on a 2-core CPU a wider tree costs more in verification than these short-trained
# drafts win back (see the sweep in the README).
$DV bench --draft full=runs/draft-full --draft trimmed=runs/draft-trimmed --chain --gamma 2 --per-category 3 --turns 1 --max-new-tokens 64 --runs 3 -o runs/bench --json > runs/bench.json
echo "== done $(date -u +%T)"
