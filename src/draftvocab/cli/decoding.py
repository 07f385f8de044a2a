"""Decoding commands: generate, serve (OpenAI-compatible), bench — each parses its options,
makes one `draftvocab.api.decoding` call and renders the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from draftvocab.api import decoding as api
from draftvocab.cli.common import (
    JsonOpt,
    KwargsOpt,
    SeedOpt,
    _Bars,
    _emit_json,
    _fail_cleanly,
    app,
    console,
    err,
)

DecodeTreeOpt = Annotated[bool, typer.Option(
    "--tree/--chain", help="EAGLE-2 dynamic tree (greedy) or a chain of --gamma tokens.")]


DepthOpt = Annotated[int, typer.Option("--depth", help="Tree depth.")]


TopkOpt = Annotated[int, typer.Option("--topk", help="Tree branching.")]


TotalTokensOpt = Annotated[int, typer.Option("--total-tokens", help="Tree nodes verified.")]


GammaOpt = Annotated[int, typer.Option("--gamma", help="Chain length.")]


BlocksOpt = Annotated[int, typer.Option(
    "--blocks", help="SpecBlock drafts: block expansions per round (depth up to blocks x K).")]


BranchOpt = Annotated[int, typer.Option(
    "--branch", help="SpecBlock drafts: candidates per row when branching.")]


PolicyOpt = Annotated[str | None, typer.Option(
    "--policy", help="SpecBlock drafts: rank (rank head decides), fixed (top---branch every "
    "row) or chain (default: rank if the draft has a rank head; chain with --chain).")]


BanditOpt = Annotated[bool, typer.Option(
    "--bandit", help="SpecBlock drafts: cost-aware bandit picks (blocks, branch) per round.")]


AdaptiveOpt = Annotated[bool, typer.Option(
    "--adaptive", help="EAGLE-3 chain: choose each round's length (<= --gamma; 0 = a plain "
    "step) from measured costs and recent acceptance.")]


LookupOpt = Annotated[int, typer.Option(
    "--lookup-tokens", help="Greedy, EAGLE-3 or no draft: in rounds where the context's last "
    "tokens occurred before, verify up to N tokens that followed them (prompt lookup) instead "
    "of drafting; 0 = off.")]


@app.command(epilog="Examples:\n\n"
             "  draftvocab serve                                   # SmolLM2-135M, plain, "
             "port 8000\n\n"
             "  draftvocab serve --draft runs/draft-trimmed --chain --gamma 2 --port 8001\n\n"
             "  draftvocab serve --port 0 --queue 4   # a free port, printed when ready\n\n"
             "Then any OpenAI client: base_url=http://127.0.0.1:8000/v1, model 'smollm2-135m'.")
@_fail_cleanly
def serve(
    target: Annotated[str, typer.Option("--target", help="Preset, .gguf or HF model dir.")]
    = "smollm2-135m",
    draft: Annotated[Path | None, typer.Option(
        "--draft", help="EAGLE-3 or SpecBlock draft dir; none = plain decoding.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free port).")] = 8000,
    model_name: Annotated[str | None, typer.Option(
        "--model-name", help="The model id clients send (default: the --target).")] = None,
    queue: Annotated[int, typer.Option(
        "--queue", help="Requests that may wait while one is decoded; one more gets 429.")]
    = 16,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", help="New tokens when a request sets no max_tokens.")] = 256,
    tree: DecodeTreeOpt = True,
    depth: DepthOpt = 6,
    topk: TopkOpt = 8,
    total_tokens: TotalTokensOpt = 32,
    gamma: GammaOpt = 5,
    blocks: BlocksOpt = 2,
    branch: BranchOpt = 4,
    policy: PolicyOpt = None,
    bandit: BanditOpt = False,
    adaptive: AdaptiveOpt = False,
    lookup_tokens: LookupOpt = 0,
    template_kwargs: KwargsOpt = None,
) -> None:
    """An OpenAI-compatible server (chat and text completions, streaming, /v1/models) over the
    target and an optional draft; one request decoded at a time. Stop it with Ctrl-C or
    SIGTERM. Responses carry speculative statistics in an extra `draftvocab` field."""
    def ready(s: api.ServeResult) -> None:
        err.print(f"serving [bold]{escape(s.model_name)}[/bold] on http://{s.host}:{s.port}/v1 "
                  f"({'draft ' + escape(str(draft)) if draft else 'plain decoding'}; one "
                  f"request at a time, {queue} may wait)", highlight=False, soft_wrap=True)

    from draftvocab.engine.decode import DecodeOptions

    decoding = DecodeOptions(tree=tree, depth=depth, topk=topk, total_tokens=total_tokens,
                             gamma=gamma, blocks=blocks, branch=branch, policy=policy,
                             bandit=bandit, adaptive=adaptive, lookup=lookup_tokens)
    r = api.serve(target=target, draft=draft, host=host, port=port, model_name=model_name,
                  queue=queue, max_tokens=max_tokens, decoding=decoding,
                  template_kwargs=template_kwargs, on_ready=ready)
    err.print(f"stopped{f' ({r.stop_signal})' if r.stop_signal else ''}: "
              f"{r.served:,} requests served")


@app.command(epilog="Examples:\n\n"
             "  draftvocab generate 'Why is the sky blue?'                  # plain target\n\n"
             "  draftvocab generate 'Why is the sky blue?' --draft draft/   # speculative\n\n"
             "  draftvocab generate 'Tell a story' --draft draft/ --temperature 0.8 --chain\n\n"
             "  draftvocab generate 'Summarize: ...' --draft draft/ --chain --gamma 2 "
             "--lookup-tokens 2   # copy from the prompt where it can")
@_fail_cleanly
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message (rendered with the target's "
                                          "chat template).")],
    target: Annotated[str, typer.Option("--target", help="Preset, .gguf or HF model dir.")]
    = "smollm2-135m",
    draft: Annotated[Path | None, typer.Option(
        "--draft", help="EAGLE-3 or SpecBlock draft dir; none = plain decoding.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: SeedOpt = 0,
    tree: DecodeTreeOpt = True,
    depth: DepthOpt = 6,
    topk: TopkOpt = 8,
    total_tokens: TotalTokensOpt = 32,
    gamma: GammaOpt = 5,
    blocks: BlocksOpt = 2,
    branch: BranchOpt = 4,
    policy: PolicyOpt = None,
    adaptive: AdaptiveOpt = False,
    lookup_tokens: LookupOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Generate one answer, plainly or speculatively (greedy output is the target's own)."""
    from draftvocab.engine.decode import DecodeOptions

    decoding = DecodeOptions(tree=tree, depth=depth, topk=topk, total_tokens=total_tokens,
                             gamma=gamma, blocks=blocks, branch=branch, policy=policy,
                             adaptive=adaptive, lookup=lookup_tokens)
    r = api.generate(prompt, target=target, draft=draft, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, seed=seed, decoding=decoding)
    if as_json:
        _emit_json(r.to_json())
        return
    console.print(r.text, highlight=False, markup=False)
    err.print(f"{r.tokens} tokens in {r.seconds:.2f} s ({r.tokens_per_s:.1f} tok/s), accept "
              f"length {r.accept_length:.2f}, draft share {r.draft_share:.0%}")


@app.command(epilog="Examples:\n\n"
             "  draftvocab bench --draft full=drafts/full --draft trimmed=drafts/k8000 -o bench/\n\n"
             "  draftvocab bench --per-category 2 --max-new-tokens 64 --runs 3 -o quick/\n\n"
             "  draftvocab bench --draft eagle=drafts/k6851 --draft block=drafts/specblock "
             "--chain --gamma 2 --blocks 1 -o sb/\n\n"
             "  draftvocab bench --endpoint plain=http://gpu:30000/v1 "
             "--endpoint trimmed=http://gpu:30001/v1 -o sglang/   # servers side by side\n\n"
             "  draftvocab bench --draft trimmed=runs/draft-trimmed --endpoint "
             "served=http://127.0.0.1:8000/v1 -o overhead/   # in-process beside a server\n\n"
             "  draftvocab bench --draft trimmed=runs/draft-trimmed --peer prompt-lookup "
             "--peer hf-generate -o peers/   # beside transformers' decoding\n\n"
             "  draftvocab bench --draft d=runs/draft --draft d+lookup=runs/draft --lookup "
             "d+lookup --lookup lookup --chain --gamma 2 -o lookup/   # copy from the context")
@_fail_cleanly
def bench(
    draft: Annotated[list[str] | None, typer.Option(
        "--draft", help="NAME=DIR of an EAGLE-3 or SpecBlock draft (repeatable); plain "
        "decoding always runs as the baseline.")] = None,
    adaptive_draft: Annotated[list[str] | None, typer.Option(
        "--adaptive-draft", help="NAME=DIR of an EAGLE-3 draft decoded as a chain whose length "
        "(<= --gamma, 0 = a plain step) is chosen every round from measured costs and recent "
        "acceptance (repeatable; beside --draft to compare).")] = None,
    tree_draft: Annotated[list[str] | None, typer.Option(
        "--tree-draft", help="NAME=DIR of an EAGLE-3 draft decoded as the dynamic tree of "
        "--depth/--topk/--total-tokens even with --chain (repeatable; beside --draft to "
        "compare chain and tree in one run).")] = None,
    adaptive_gamma: Annotated[int | None, typer.Option(
        "--adaptive-gamma", help="Longest chain of --adaptive-draft variants (default: "
        "--gamma).", show_default=False)] = None,
    endpoint: Annotated[list[str] | None, typer.Option(
        "--endpoint", help="[NAME=]URL of an OpenAI-compatible server (repeatable; vLLM, "
        "SGLang, `draftvocab serve`), asked greedy and streamed; the first is the baseline "
        "when nothing runs in-process.")] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model", help="Model name sent to every --endpoint (default: each server's first "
        "in /v1/models).")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="OPENAI_API_KEY", help="Bearer token for --endpoint.")] = None,
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", help="Other libraries' decoding as more variants (repeatable): hf-generate "
        "(transformers' plain generate), prompt-lookup (its prompt-lookup decoding, no "
        "draft).")] = None,
    prompt_lookup_tokens: Annotated[int, typer.Option(
        "--prompt-lookup-tokens", help="prompt-lookup: tokens proposed per round.")] = 10,
    lookup: Annotated[list[str] | None, typer.Option(
        "--lookup", help="A variant with lookup rounds (repeatable): a --draft or "
        "--adaptive-draft NAME gives that draft rounds that verify tokens copied from the "
        "context where it offers them; a new NAME is our exact prompt lookup, no draft.")]
    = None,
    lookup_tokens: Annotated[int, typer.Option(
        "--lookup-tokens", help="--lookup variants: tokens copied per round, at most.")] = 2,
    local: Annotated[bool | None, typer.Option(
        "--local/--no-local", help="Run plain decoding (and --draft) in-process too; default: "
        "yes without --endpoint, and with it only if --draft or --target is given.",
        show_default=False)] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Preset, .gguf or HF model dir [default: smollm2-135m].",
        show_default=False)] = None,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="The target's weights and activations: fp32 or bf16 (every variant "
        "shares it; bf16 verifies rows exactly as one-token steps).")] = "fp32",
    questions: Annotated[Path | None, typer.Option(
        "--questions", help="Spec-Bench JSONL (default: ../shared/data/"
        "spec_bench_questions.jsonl).")] = None,
    per_category: Annotated[int | None, typer.Option(
        "--per-category", help="First N questions of each category.")] = None,
    turns: Annotated[int | None, typer.Option("--turns", help="At most N turns each.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    runs: Annotated[int, typer.Option("--runs", help="Independent runs (for the CI).")] = 3,
    tree: DecodeTreeOpt = True,
    depth: DepthOpt = 6,
    topk: TopkOpt = 8,
    total_tokens: TotalTokensOpt = 32,
    gamma: GammaOpt = 5,
    blocks: BlocksOpt = 2,
    branch: BranchOpt = 4,
    policy: PolicyOpt = None,
    bandit: BanditOpt = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory.")]
    = Path("bench-out"),
    as_json: JsonOpt = False,
) -> None:
    """Spec-Bench throughput: plain vs speculative decoding, interleaved, mean ± 95 % CI."""
    from draftvocab.engine.decode import DecodeOptions

    decoding = DecodeOptions(tree=tree, depth=depth, topk=topk, total_tokens=total_tokens,
                             gamma=gamma, blocks=blocks, branch=branch, policy=policy,
                             bandit=bandit)
    with _Bars() as bar:
        r = api.bench(drafts=draft or [], adaptive_drafts=adaptive_draft or [],
                      tree_drafts=tree_draft or [],
                      adaptive_gamma=adaptive_gamma, endpoints=endpoint or [], model=model_name,
                      api_key=api_key, peers=peer or [],
                      prompt_lookup_tokens=prompt_lookup_tokens, lookups=lookup or [],
                      lookup_tokens=lookup_tokens, local=local, target=target,
                      dtype=dtype, questions=questions, per_category=per_category, turns=turns,
                      max_new_tokens=max_new_tokens, runs=runs, decoding=decoding, out=out,
                      progress=bar)
    if as_json:
        _emit_json(r.to_json())
        return
    console.print(r.markdown(), markup=False, highlight=False)
    err.print(f"report -> {escape(str(out))}: report.md, report.json, throughput.png")
