"""Decoding as library calls: `generate` one answer, `bench` plain against speculative decoding
on Spec-Bench, `serve` an OpenAI-compatible server — each loads the target, its draft and the
right decoder (`decoder_for`) and returns a result dataclass.

Owns the wiring: which decoder a draft needs, peers and endpoints beside in-process variants,
where reports go. Decoding itself is `engine.decode` / `engine.blockdecode`, the benchmark
harness `engine.bench`, the HTTP app `engine.serve`; rendering is the CLI's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from draftvocab.api.inputs import Progress, quiet
from draftvocab.core.errors import DraftVocabError

if TYPE_CHECKING:
    from draftvocab.engine.decode import DecodeOptions

DEFAULT_TARGET = "smollm2-135m"
PEERS = {"hf-generate", "prompt-lookup"}  # other libraries' decoding, run beside ours by bench


def build_decoder(target, draft_dir: str | Path | None, options: DecodeOptions | None = None):
    """The decoder for a draft directory (EAGLE-3 or SpecBlock), or plain decoding (None).
    `options.bandit=True` gives this decoder its own cost-aware `BudgetBandit`."""
    from draftvocab.engine.decode import DecodeOptions, decoder_for
    from draftvocab.engine.drafters import load_draft

    o = options or DecodeOptions()
    draft = load_draft(draft_dir, target) if draft_dir else None
    bandit = o.bandit or None
    if bandit is True:
        from draftvocab.engine.bandit import BudgetBandit
        bandit = BudgetBandit()
    return decoder_for(target, draft, tree=o.tree, depth=o.depth, topk=o.topk,
                       total_tokens=o.total_tokens, gamma=o.gamma, blocks=o.blocks,
                       width=o.width, branch=o.branch, policy=o.policy, bandit=bandit,
                       adaptive=o.adaptive, lookup=o.lookup)


def open_endpoint(url: str, model: str | None = None, api_key: str | None = None):
    """An `endpoint.Endpoint` checked before any work: the server answers /v1/models and
    serves the named model (default: the first it lists)."""
    from draftvocab.engine.endpoint import Endpoint, served_models

    ep = Endpoint(url, model or "", api_key=api_key)
    names = served_models(ep)
    if not model:
        if not names:
            raise DraftVocabError(f"{ep.url}/v1/models lists no model: give --model")
        ep.model = names[0]
    elif names and model not in names:
        raise DraftVocabError(f"{ep.url} does not serve model '{model}' (it lists: "
                              f"{', '.join(names[:5])})")
    return ep


def _load(target: str | Path, drafts: list, dtype: str = "fp32"):
    """The target (in `dtype`, `fp32` or `bf16`), with the hidden layers its drafts read."""
    from draftvocab.engine.drafters import aux_layers
    from draftvocab.engine.target import load_target, parse_dtype

    return load_target(target, layers=aux_layers(drafts), dtype=parse_dtype(dtype))


@dataclass
class GenerateResult:
    """One answer and how it was decoded (`accept_length`: tokens per target forward)."""

    text: str
    tokens: int
    seconds: float
    tokens_per_s: float
    accept_length: float
    target_forwards: int
    draft_forwards: int
    draft_share: float  # of decode time spent in the draft

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def generate(prompt: str, *, target: str | Path = DEFAULT_TARGET, draft: str | Path | None = None,
             max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, decoding: DecodeOptions | None = None) -> GenerateResult:
    """Answer one user message, plainly or speculatively (greedy output is the target's own).

    >>> from draftvocab import generate
    >>> r = generate("Why is the sky blue?", max_new_tokens=8)  # smollm2-135m, plain
    >>> r.tokens <= 8 and r.target_forwards >= 1
    True
    """
    if max_new_tokens < 1:
        raise DraftVocabError("--max-new-tokens must be at least 1")
    tgt = _load(target, [draft] if draft else [])
    dec = build_decoder(tgt, draft, decoding)
    ids = tgt.prompt_ids([{"role": "user", "content": prompt}])
    res = dec.generate(ids, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    return GenerateResult(
        text=tgt.tokenizer.decode(res.tokens, skip_special_tokens=True),
        tokens=len(res.tokens), seconds=res.seconds,
        tokens_per_s=len(res.tokens) / max(res.seconds, 1e-9),
        accept_length=res.mean_accept_length, target_forwards=res.target_forwards,
        draft_forwards=res.draft_forwards,
        draft_share=res.draft_seconds / max(res.draft_seconds + res.target_seconds, 1e-9))


@dataclass
class BenchResult:
    """A Spec-Bench report (`engine.bench.run_benchmark`) and the directory it was written to."""

    report: dict[str, Any]
    out: Path

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.report.items() if k != "rows"} | {"out": str(self.out)}

    def markdown(self) -> str:
        from draftvocab.engine.bench import markdown

        return markdown(self.report)


def _named(items: list[str], flag: str, taken: set[str]) -> list[tuple[str, Path]]:
    """`NAME=DIR` items -> (name, path), each name its own and none of `taken`."""
    out: list[tuple[str, Path]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DraftVocabError(f"{flag} takes NAME=DIR, got '{item}'")
        if name in taken or name in dict(out):
            raise DraftVocabError(f"{flag} name {name!r} is taken: give each draft its own name")
        out.append((name, Path(path)))
    return out


def _endpoints(items: list[str], taken: set[str], model: str | None,
               api_key: str | None) -> dict:
    """`[NAME=]URL` items -> named endpoints (names default to endpoint, endpoint-2, ...)."""
    out: dict = {}
    for i, item in enumerate(items, start=1):
        name, sep, url = item.partition("=")
        if not sep or "://" in name:
            name, url = ("endpoint" if i == 1 else f"endpoint-{i}"), item
        if not name or not url:
            raise DraftVocabError(f"--endpoint takes [NAME=]URL, got '{item}'")
        if name in taken or name in out:
            raise DraftVocabError(f"--endpoint name {name!r} is taken: give each its own name")
        out[name] = open_endpoint(url, model, api_key)
    return out


def _variants(tgt, specs: list[tuple[str, Path]], adaptive: set[str], adaptive_gamma: int | None,
              peers: list[str], prompt_lookup_tokens: int, decoding: DecodeOptions,
              lookups: list[str] = (), lookup_tokens: int = 2, trees: set[str] = frozenset()
              ) -> dict:
    """In-process variants: "plain", one decoder per draft (with lookup rounds if named in
    `lookups`; an EAGLE-2 dynamic tree if named in `trees`, whatever `decoding.tree` says, so
    one run compares chains and trees), our exact prompt lookup for the other `lookups` names,
    then the peers."""
    from draftvocab.engine.decode import DecodeOptions, SpeculativeDecoder

    variants: dict[str, Any] = {"plain": SpeculativeDecoder(tgt)}
    for name, path in specs:
        o = dataclasses.replace(decoding or DecodeOptions(), adaptive=name in adaptive,
                                lookup=lookup_tokens if name in lookups else 0)
        if o.adaptive:  # a chain whose length adapts, up to --adaptive-gamma
            o = dataclasses.replace(o, tree=False, gamma=o.gamma if adaptive_gamma is None
                                    else adaptive_gamma)
        elif name in trees:
            o = dataclasses.replace(o, tree=True)
        variants[name] = build_decoder(tgt, path, o)
    for name in lookups:
        if name not in variants:
            variants[name] = SpeculativeDecoder(tgt, lookup=lookup_tokens)
    if peers:
        from draftvocab.engine.peers import HFGenerate

        for name in peers:
            variants[name] = HFGenerate(tgt, prompt_lookup=prompt_lookup_tokens
                                        if name == "prompt-lookup" else 0)
    return variants


def bench(*, drafts: Sequence[str] = (), adaptive_drafts: Sequence[str] = (),
          tree_drafts: Sequence[str] = (), adaptive_gamma: int | None = None,
          endpoints: Sequence[str] = (),
          model: str | None = None, api_key: str | None = None, peers: Sequence[str] = (),
          prompt_lookup_tokens: int = 10, lookups: Sequence[str] = (), lookup_tokens: int = 2,
          local: bool | None = None,
          target: str | Path | None = None, dtype: str = "fp32",
          questions: str | Path | None = None, per_category: int | None = None,
          turns: int | None = None, max_new_tokens: int = 128, runs: int = 3,
          decoding: DecodeOptions | None = None, out: str | Path = "bench-out",
          progress: Progress | None = None) -> BenchResult:
    """Spec-Bench throughput: plain against speculative decoding, interleaved, mean ± 95 % CI;
    writes report.md, report.json and throughput.png into `out`.

    `drafts` / `adaptive_drafts` / `tree_drafts` (decoded as `decoding`'s dynamic tree even
    beside chains) are `NAME=DIR` items, `endpoints` `[NAME=]URL` items (servers
    asked greedy and streamed), `peers` any of `PEERS`. `lookups` names variants whose greedy
    rounds verify up to `lookup_tokens` tokens copied from the context where it offers them
    (`engine.lookup`): a draft's name gives that draft lookup rounds, any other name is exact
    prompt lookup without a draft. `local` runs plain decoding in-process
    (default: unless only endpoints are given) with the target in `dtype` (`fp32`, `bf16`:
    every variant shares it). `progress` (`api.inputs.Progress`) counts requests in stage
    "benchmark".

    >>> from draftvocab import bench
    >>> r = bench(per_category=1, turns=1, max_new_tokens=8, runs=1, out="bench-out")
    >>> r.to_json()["variants"]
    ['plain']
    """
    from draftvocab.core.atomic import check_output_dir
    from draftvocab.engine.bench import load_questions, run_benchmark, write_report
    from draftvocab.engine.target import parse_dtype

    if runs < 1 or max_new_tokens < 1:
        raise DraftVocabError("--runs and --max-new-tokens must be at least 1")
    parse_dtype(dtype)
    in_process = [*drafts, *adaptive_drafts, *tree_drafts, *peers]
    local = local if local is not None else (not endpoints or bool(in_process)
                                             or bool(lookups) or target is not None)
    if in_process and not local:
        raise DraftVocabError("--draft, --adaptive-draft, --tree-draft and --peer run "
                              "in-process: drop --no-local")
    peer_names = list(dict.fromkeys(peers))
    if set(peer_names) - PEERS or prompt_lookup_tokens < 1:
        raise DraftVocabError(f"--peer is one of {', '.join(sorted(PEERS))} (got "
                              f"{', '.join(peer_names)}); --prompt-lookup-tokens >= 1")
    specs = _named(list(drafts), "--draft", {"plain", *PEERS})
    adaptive = _named(list(adaptive_drafts), "--adaptive-draft", {"plain", *PEERS, *dict(specs)})
    trees = _named(list(tree_drafts), "--tree-draft", {"plain", *PEERS, *dict(specs),
                                                     *dict(adaptive)})
    specs += adaptive + trees
    lookups = list(dict.fromkeys(lookups))
    if lookup_tokens < 1 or {"plain", *PEERS} & set(lookups) or "" in lookups:
        raise DraftVocabError("--lookup takes a variant name (a --draft's, or a new one for "
                              "prompt lookup without a draft; not plain or a --peer); "
                              "--lookup-tokens >= 1")
    if lookups and not local:
        raise DraftVocabError("--lookup runs in-process: drop --no-local")
    servers = _endpoints(list(endpoints),
                         {"plain", *PEERS, *dict(specs), *lookups} if local else set(),
                         model, api_key)
    out = Path(out)
    check_output_dir(out)
    qs = load_questions(questions, per_category=per_category, turns=turns)
    tgt, variants = None, {}
    if local:
        tgt = _load(target or DEFAULT_TARGET, [p for _, p in specs], dtype)
        variants = _variants(tgt, specs, set(dict(adaptive)), adaptive_gamma, peer_names,
                             prompt_lookup_tokens, decoding, lookups, lookup_tokens,
                             set(dict(trees)))
    progress = progress or quiet
    progress("benchmark", 0, runs * sum(len(q.turns) for q in qs))
    report = run_benchmark(tgt, variants, qs, max_new_tokens=max_new_tokens, runs=runs,
                           progress=lambda n: progress("benchmark", n), endpoints=servers)
    if not report["rows"]:
        raise DraftVocabError("no request was measured: "
                              + report.get("skipped_example", "every prompt was too long"))
    write_report(report, out)
    return BenchResult(report, out)


@dataclass
class ServeResult:
    """Where a server listens (`port`: the bound one) and, once stopped, what it did."""

    model_name: str
    host: str
    port: int
    served: int = 0
    stop_signal: str | None = None  # SIGINT / SIGTERM when a signal stopped it
    _server: Any = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        """Ask the server to finish (e.g. from another thread): `serve` then returns."""
        if self._server is not None:
            self._server.should_exit = True


def serve(*, target: str | Path = DEFAULT_TARGET, draft: str | Path | None = None,
          host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          queue: int = 16, max_tokens: int = 256, decoding: DecodeOptions | None = None,
          template_kwargs: str | dict | None = None,
          on_ready: Callable[[ServeResult], None] | None = None) -> ServeResult:
    """Run an OpenAI-compatible server (chat and text completions, streaming, /v1/models) over
    the target and an optional draft until Ctrl-C or SIGTERM; one request decoded at a time,
    `queue` more may wait. `on_ready(result)` is called once it listens (`port=0`: any free
    port); `result.stop()` ends it from another thread.

    >>> from draftvocab.api.decoding import serve
    >>> serve(port=0, on_ready=lambda s: print(s.url))  # blocks until Ctrl-C  # doctest: +SKIP
    http://127.0.0.1:...
    """
    import socket

    import uvicorn

    from draftvocab.chat.messages import parse_template_kwargs
    from draftvocab.core import interrupts
    from draftvocab.engine.presets import PRESETS, get_preset
    from draftvocab.engine.serve import ServingEngine, create_app, engine_thread

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
        tgt = _load(target, [draft] if draft else [])
        return tgt, build_decoder(tgt, draft, decoding)

    executor = engine_thread()  # loads the model and runs every decode (see ServingEngine)
    tgt, dec = executor.submit(load).result()
    result = ServeResult(model_name or str(target), host, sock.getsockname()[1])
    engine = ServingEngine(tgt, dec, result.model_name, queue_size=queue,
                           default_max_tokens=max_tokens, template_kwargs=kwargs,
                           executor=executor)
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning",
                                           timeout_graceful_shutdown=30))
    result._server = server
    if on_ready is not None:
        on_ready(result)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        if not server.should_exit:
            raise
    # uvicorn stopped gracefully on SIGINT/SIGTERM and handed the signal back: a normal end.
    signum = interrupts.received()
    interrupts.reset()
    result.served = engine.served
    if signum:
        import signal

        result.stop_signal = signal.Signals(signum).name
    return result
