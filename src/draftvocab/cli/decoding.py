"""Decoding commands: generate, serve (OpenAI-compatible), bench.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from draftvocab.cli.common import (
    PEERS,
    AdaptiveOpt,
    BanditOpt,
    BlocksOpt,
    BranchOpt,
    DecodeTreeOpt,
    DepthOpt,
    GammaOpt,
    JsonOpt,
    KwargsOpt,
    PolicyOpt,
    SeedOpt,
    TopkOpt,
    TotalTokensOpt,
    _bench_endpoints,
    _decoder,
    _emit_json,
    _fail_cleanly,
    app,
    console,
    err,
)
from draftvocab.core.errors import DraftVocabError


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
    template_kwargs: KwargsOpt = None,
) -> None:
    """An OpenAI-compatible server (chat and text completions, streaming, /v1/models) over the
    target and an optional draft; one request decoded at a time. Stop it with Ctrl-C or
    SIGTERM. Responses carry speculative statistics in an extra `draftvocab` field."""
    import socket

    import uvicorn

    from draftvocab.chat.messages import parse_template_kwargs
    from draftvocab.core import interrupts
    from draftvocab.engine.draft import aux_layers
    from draftvocab.engine.presets import PRESETS, get_preset
    from draftvocab.engine.serve import ServingEngine, create_app, engine_thread
    from draftvocab.engine.target import load_target

    if queue < 0 or max_tokens < 1 or not 0 <= port <= 65535:
        raise DraftVocabError("--queue must be >= 0, --max-tokens >= 1, --port in [0, 65535]")
    kwargs = {**(get_preset(target).template_kwargs if target in PRESETS else {}),
              **parse_template_kwargs(template_kwargs)}
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise DraftVocabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def load():
        tgt = load_target(target, layers=aux_layers([draft] if draft else []))
        return tgt, _decoder(tgt, draft, tree, depth, topk, total_tokens, gamma, blocks,
                             branch, policy, bandit, adaptive)

    executor = engine_thread()  # loads the model and runs every decode (see ServingEngine)
    tgt, dec = executor.submit(load).result()
    name = model_name or target
    engine = ServingEngine(tgt, dec, name, queue_size=queue, default_max_tokens=max_tokens,
                           template_kwargs=kwargs, executor=executor)
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning",
                                           timeout_graceful_shutdown=30))
    err.print(f"serving [bold]{escape(name)}[/bold] on http://{host}:{bound}/v1 "
              f"({'draft ' + escape(str(draft)) if draft else 'plain decoding'}; one request at "
              f"a time, {queue} may wait)", highlight=False, soft_wrap=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        if not server.should_exit:
            raise
    # uvicorn stopped gracefully on SIGINT/SIGTERM and handed the signal back: a normal end.
    signum = interrupts.received()
    interrupts.reset()
    err.print(f"stopped{f' ({signal_name(signum)})' if signum else ''}: "
              f"{engine.served:,} requests served")


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


@app.command(epilog="Examples:\n\n"
             "  draftvocab generate 'Why is the sky blue?'                  # plain target\n\n"
             "  draftvocab generate 'Why is the sky blue?' --draft draft/   # speculative\n\n"
             "  draftvocab generate 'Tell a story' --draft draft/ --temperature 0.8 --chain")
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
    as_json: JsonOpt = False,
) -> None:
    """Generate one answer, plainly or speculatively (greedy output is the target's own)."""
    from draftvocab.engine.draft import aux_layers
    from draftvocab.engine.target import load_target

    if max_new_tokens < 1:
        raise DraftVocabError("--max-new-tokens must be at least 1")
    tgt = load_target(target, layers=aux_layers([draft] if draft else []))
    dec = _decoder(tgt, draft, tree, depth, topk, total_tokens, gamma, blocks, branch, policy,
                   adaptive=adaptive)
    ids = tgt.prompt_ids([{"role": "user", "content": prompt}])
    res = dec.generate(ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    text = tgt.tokenizer.decode(res.tokens, skip_special_tokens=True)
    summary = {"text": text, "tokens": len(res.tokens), "seconds": res.seconds,
               "tokens_per_s": len(res.tokens) / max(res.seconds, 1e-9),
               "accept_length": res.mean_accept_length,
               "target_forwards": res.target_forwards, "draft_forwards": res.draft_forwards,
               "draft_share": res.draft_seconds / max(res.draft_seconds + res.target_seconds,
                                                      1e-9)}
    if as_json:
        _emit_json(summary)
        return
    console.print(text, highlight=False, markup=False)
    err.print(f"{summary['tokens']} tokens in {res.seconds:.2f} s "
              f"({summary['tokens_per_s']:.1f} tok/s), accept length "
              f"{summary['accept_length']:.2f}, draft share {summary['draft_share']:.0%}")


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
             "--peer hf-generate -o peers/   # beside transformers' decoding")
@_fail_cleanly
def bench(
    draft: Annotated[list[str] | None, typer.Option(
        "--draft", help="NAME=DIR of an EAGLE-3 or SpecBlock draft (repeatable); plain "
        "decoding always runs as the baseline.")] = None,
    adaptive_draft: Annotated[list[str] | None, typer.Option(
        "--adaptive-draft", help="NAME=DIR of an EAGLE-3 draft decoded as a chain whose length "
        "(<= --gamma, 0 = a plain step) is chosen every round from measured costs and recent "
        "acceptance (repeatable; beside --draft to compare).")] = None,
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
    local: Annotated[bool | None, typer.Option(
        "--local/--no-local", help="Run plain decoding (and --draft) in-process too; default: "
        "yes without --endpoint, and with it only if --draft or --target is given.",
        show_default=False)] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Preset, .gguf or HF model dir [default: smollm2-135m].",
        show_default=False)] = None,
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
    from rich.progress import Progress

    from draftvocab.core.atomic import check_output_dir
    from draftvocab.engine.bench import load_questions, markdown, run_benchmark, write_report
    from draftvocab.engine.decode import SpeculativeDecoder
    from draftvocab.engine.draft import aux_layers
    from draftvocab.engine.target import load_target

    if runs < 1 or max_new_tokens < 1:
        raise DraftVocabError("--runs and --max-new-tokens must be at least 1")
    local = local if local is not None else (not endpoint or bool(draft) or bool(peer)
                                             or target is not None)
    if (draft or peer) and not local:
        raise DraftVocabError("--draft and --peer run in-process: drop --no-local")
    peers = list(dict.fromkeys(peer or []))
    if set(peers) - PEERS or prompt_lookup_tokens < 1:
        raise DraftVocabError(f"--peer is one of {', '.join(sorted(PEERS))} (got "
                              f"{', '.join(peers)}); --prompt-lookup-tokens >= 1")
    specs, adaptive_names = [], set()
    for item, flag in [(d, "--draft") for d in draft or []] + [
            (d, "--adaptive-draft") for d in adaptive_draft or []]:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DraftVocabError(f"{flag} takes NAME=DIR, got '{item}'")
        if name == "plain" or name in PEERS or name in dict(specs):
            raise DraftVocabError(f"{flag} name {name!r} is taken: give each draft its own name")
        specs.append((name, Path(path)))
        if flag == "--adaptive-draft":
            adaptive_names.add(name)
    servers = _bench_endpoints(endpoint or [], {"plain", *PEERS, *dict(specs)} if local
                               else set(), model_name, api_key)
    check_output_dir(out)
    qs = load_questions(questions, per_category=per_category, turns=turns)
    tgt, variants = None, {}
    if local:
        tgt = load_target(target or "smollm2-135m", layers=aux_layers([p for _, p in specs]))
        variants = {"plain": SpeculativeDecoder(tgt)}
        for name, path in specs:
            adaptive = name in adaptive_names
            variants[name] = _decoder(tgt, path, tree and not adaptive, depth, topk,
                                      total_tokens, gamma if adaptive_gamma is None or not
                                      adaptive else adaptive_gamma, blocks, branch, policy,
                                      bandit, adaptive)
        if peers:
            from draftvocab.engine.peers import HFGenerate

            for name in peers:
                variants[name] = HFGenerate(tgt, prompt_lookup=prompt_lookup_tokens
                                            if name == "prompt-lookup" else 0)
    total = runs * sum(len(q.turns) for q in qs)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("benchmark", total=total)
        report = run_benchmark(tgt, variants, qs, max_new_tokens=max_new_tokens, runs=runs,
                               progress=lambda n: bar.advance(task, n), endpoints=servers)
    if not report["rows"]:
        raise DraftVocabError("no request was measured: "
                              + report.get("skipped_example", "every prompt was too long"))
    write_report(report, out)
    if as_json:
        _emit_json({k: v for k, v in report.items() if k != "rows"} | {"out": str(out)})
        return
    console.print(markdown(report), markup=False, highlight=False)
    err.print(f"report -> {escape(str(out))}: report.md, report.json, throughput.png")
