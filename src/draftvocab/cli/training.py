"""Draft-training commands: regenerate (the target's own answers), train — each parses its
options, makes one `draftvocab.api.training` call and renders the result and its progress.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from draftvocab.cli.common import (
    ColumnsOpt,
    JsonOpt,
    KwargsOpt,
    LeadingOpt,
    RoleMapOpt,
    SkipOpt,
    SuperviseOpt,
    _Bars,
    _emit_json,
    _fail_cleanly,
    app,
    err,
)
from draftvocab.core.errors import DraftVocabError


class _TrainProgress:
    """Training's progress: the target-feature cache as it fills (`_Bars`), then a rich line
    of optimizer steps, loss and per-TTT-step top-1 accuracy (`step`)."""

    def __init__(self, quiet: bool = False):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.features = _Bars(quiet)
        self.progress = Progress(
            TextColumn("[bold]training[/bold]"), BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TextColumn("[cyan]{task.fields[stats]}"), TimeElapsedColumn(),
            console=err, transient=True, disable=quiet,
        )
        self.started, self.task = False, None

    def __call__(self, stage: str, advance: int, total: int | None = None,
                 tokens: int = 0) -> None:
        """Library progress (`api.inputs.Progress`): "target features", then "training"."""
        if stage != "training":
            self.features(stage, advance, total, tokens)
        elif not self.started:
            self.features.__exit__()
            self.started = True
            self.progress.start()

    def step(self, step: int, total: int, entry: dict) -> None:
        if self.task is None:
            self.task = self.progress.add_task("train", total=total, stats="")
        acc = " ".join(f"acc@{j} {a:.2f}" for j, a in enumerate(entry["acc"]) if a is not None)
        self.progress.update(self.task, completed=step, total=total,
                             stats=f"loss {entry['loss']:.3f}  {acc}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.features.__exit__()
        if self.started:
            self.progress.stop()


@app.command("regenerate", epilog="Examples:\n\n"
             "  draftvocab regenerate -o regen.jsonl --max-samples 1000   "
             "# SmolLM2-135M on ShareGPT\n\n"
             "  draftvocab regenerate chats.jsonl --target path/to/hf-model -o regen.jsonl "
             "--temperature 0.7 --top-p 0.9\n\n"
             "  draftvocab regenerate chats.jsonl -o regen.jsonl --turns first --json   "
             "# rerun the same command to resume\n\n"
             "  draftvocab regenerate chats.jsonl -o regen.jsonl --endpoint "
             "http://gpu-box:8000/v1 --model Qwen/Qwen3-8B --concurrency 32   "
             "# through vLLM / SGLang")
@_fail_cleanly
def regenerate_cmd(
    data: Annotated[str | None, typer.Argument(
        help="Dataset: .jsonl/.json/.parquet file, directory, or save_to_disk folder. "
        "Default: ShareGPT (the smollm2-135m preset's).", show_default=False)] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="JSONL to append to; conversations already in it are skipped, "
        "so rerunning resumes.")] = ...,
    target: Annotated[str | None, typer.Option(
        "--target", help="Preset name, .gguf file, or HF model directory [default: "
        "smollm2-135m]. With --endpoint only its tokenizer loads, to keep the server's token "
        "ids where they decode to the text.", show_default=False)] = None,
    endpoint: Annotated[str | None, typer.Option(
        "--endpoint", help="Regenerate through this OpenAI-compatible server (vLLM, SGLang, "
        "llama.cpp, `draftvocab serve`) instead of loading the target here.")] = None,
    model_name: Annotated[str | None, typer.Option(
        "--model", help="With --endpoint: the served model's name (default: the server's "
        "first in /v1/models).")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", help="With --endpoint: requests in flight.")] = 4,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="OPENAI_API_KEY", help="With --endpoint: bearer token.")] = None,
    max_samples: Annotated[int | None, typer.Option(
        "--max-samples", help="Regenerate a seeded random subset of this many records.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling records and tokens.")]
    = 0,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Conversations generated together (local target).")] = 8,
    max_new_tokens: Annotated[int, typer.Option(
        "--max-new-tokens", help="Longest reply per assistant turn, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option(
        "--temperature", help="0 = greedy; > 0 samples.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling, in (0, 1].")] = 1.0,
    turns: Annotated[str, typer.Option(
        "--turns", help="all: every assistant turn, each seeing the regenerated ones before "
        "it; first: only the first (later messages are dropped).")] = "all",
    max_prompt_tokens: Annotated[int | None, typer.Option(
        "--max-prompt-tokens", help="Skip (and count) conversations whose prompt is longer.")]
    = None,
    columns: ColumnsOpt = None, role_map: RoleMapOpt = None, skip_bad_lines: SkipOpt = False,
    template_kwargs: KwargsOpt = None, leading_assistant: LeadingOpt = "drop",
    as_json: JsonOpt = False,
) -> None:
    """Rewrite a dataset's assistant turns with the target model's own replies -> JSONL
    (verbatim: reasoning and tool-call markup included)."""
    from draftvocab.api.training import RegenerateInterrupted, regenerate

    try:
        with _Bars(as_json, rate=lambda c, t, dt: f"{t:,} tok  {t / dt:,.1f} tok/s") as bar:
            r = regenerate(data, out=out, target=target, endpoint=endpoint, model=model_name,
                           concurrency=concurrency, api_key=api_key, max_samples=max_samples,
                           seed=seed, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, turns=turns,
                           max_prompt_tokens=max_prompt_tokens, columns=columns,
                           role_map=role_map, skip_bad_lines=skip_bad_lines,
                           template_kwargs=template_kwargs,
                           leading_assistant=leading_assistant, progress=bar)
    except RegenerateInterrupted:
        err.print(f"[bold red]interrupted[/bold red]: finished conversations are in "
                  f"{escape(str(out))}; rerun the same command to resume")
        raise typer.Exit(130) from None
    if as_json:
        _emit_json(r.to_json())
        return
    stats = r.stats
    err.print(f"regenerated {stats.written:,} conversations ({stats.already_done:,} already "
              f"done), {stats.generated_tokens:,} tokens in {stats.seconds:,.1f} s "
              f"({stats.tokens_per_s:,.1f} tok/s) -> [bold]{escape(str(out))}[/bold]")
    if r.skipped:
        err.print(f"skipped: {r.skipped}")
        for reason, example in stats.skipped_examples.items():
            err.print(f"  first {reason}: {escape(example)}")


@app.command("train", epilog="Examples:\n\n"
             "  draftvocab train -o draft/ --max-samples 2000 --max-len 512   "
             "# SmolLM2-135M on ShareGPT, full vocabulary\n\n"
             "  draftvocab train regen.jsonl --mapping run/vocab_mapping.pt -o draft/ "
             "--epochs 2 --save-every 500\n\n"
             "  draftvocab train regen.jsonl --mapping run/ -o draft/ --save-every 500 --resume   "
             "# continue an interrupted run\n\n"
             "  draftvocab train more.jsonl --mapping run/ --init-from draft/ -o draft-2/ "
             "--lr 1e-4   # fine-tune a finished draft\n\n"
             "  draftvocab train all.jsonl --mapping run/ --cache-features f-2/ --reuse-features f/ "
             "-o draft/   # all.jsonl: the conversations cached in f/, then new ones\n\n"
             "  draftvocab train chats.jsonl --target path/to/hf-model -o draft/ --dtype bf16 "
             "--json\n\n"
             "  draftvocab train regen.jsonl --mapping run/ --drafter specblock -o sb/   "
             "# SpecBlock, K = 4, 2 layers\n\n"
             "  draftvocab train regen.jsonl --mapping run/ --target-layers 1,14,29 -o draft/   "
             "# read the layer before the last as the high one")
@_fail_cleanly
def train_cmd(
    data: Annotated[str | None, typer.Argument(
        help="Conversations: .jsonl/.json/.parquet file, directory, or save_to_disk folder "
        "(e.g. the output of `draftvocab regenerate`). Default: ShareGPT.",
        show_default=False)] = None,
    target: Annotated[str, typer.Option(
        "--target", help="Preset name, .gguf file, or HF model directory.")] = "smollm2-135m",
    mapping: Annotated[Path | None, typer.Option(
        "--mapping", help="vocab_mapping.pt/.safetensors (or its directory) from `optimize` or "
        "`mapping`. Default: the full vocabulary.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Directory: final draft, train_log.json, checkpoint-<step>/.")]
    = Path("draft"),
    max_samples: Annotated[int | None, typer.Option(
        "--max-samples", help="Train on a seeded random subset of this many records.")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the data.")] = 1,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", help="Optimizer steps (overrides --epochs; the data cycles).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Conversations per step.")]
    = 4,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate.")] = 3e-4,
    warmup: Annotated[int | None, typer.Option(
        "--warmup", help="Linear warm-up steps, then cosine decay (default: 5% of steps).")]
    = None,
    max_len: Annotated[int, typer.Option("--max-len", help="Tokens kept per conversation.")]
    = 1024,
    ttt_steps: Annotated[int, typer.Option(
        "--ttt-steps", help="Training-time-test steps (tokens drafted ahead).")] = 7,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="fp32 or bf16 (autocast) for the draft.")] = "fp32",
    save_every: Annotated[int, typer.Option(
        "--save-every", help="Checkpoint every N optimizer steps (0: final draft only).")] = 0,
    drafter: Annotated[str, typer.Option(
        "--drafter", help="eagle3 (one token per forward) or specblock (K per forward).")]
    = "eagle3",
    block_size: Annotated[int, typer.Option(
        "--block-size", help="SpecBlock: positions per drafter forward (K).")] = 4,
    draft_layers: Annotated[int, typer.Option(
        "--draft-layers", help="SpecBlock: decoder layers.")] = 2,
    shift: Annotated[bool, typer.Option(
        "--shift/--no-shift", help="SpecBlock: layer-wise shift (ablation: off).")] = True,
    inherit: Annotated[bool, typer.Option(
        "--inherit/--no-inherit", help="SpecBlock: cross-block inheritance (ablation: off).")]
    = True,
    rank_head: Annotated[bool, typer.Option(
        "--rank-head/--no-rank-head", help="SpecBlock: co-trained rank head.")] = True,
    valid_prefix: Annotated[bool, typer.Option(
        "--valid-prefix/--no-valid-prefix", help="SpecBlock: valid-prefix loss mask.")] = True,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the latest checkpoint in --out.")] = False,
    init_from: Annotated[Path | None, typer.Option(
        "--init-from", help="Start from this finished draft's weights (same drafter and "
        "layers) with a new optimizer and schedule: a warm restart, fine-tuning on new data, or "
        "a new --mapping (the LM-head rows of tokens both keep carry over).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling, init and data order.")]
    = 0,
    cache_features: Annotated[Path | None, typer.Option(
        "--cache-features", help="Compute the target's features once into this directory "
        "(fp16, memory-mapped; reused by later runs on the same data and target) instead of a "
        "target forward every step.")] = None,
    reuse_features: Annotated[Path | None, typer.Option(
        "--reuse-features", help="An earlier --cache-features directory of this data's first "
        "conversations (more answers appended since): copied, only the new ones are computed. "
        "The same directory as --cache-features grows it in place.")] = None,
    eval_data: Annotated[str | None, typer.Option(
        "--eval-data", help="Held-out conversations the target generated (`regenerate`): "
        "chain τ on them is logged during training and plotted (training.png).")] = None,
    eval_samples: Annotated[int, typer.Option(
        "--eval-samples", help="Held-out conversations used (seeded subset).")] = 64,
    eval_every: Annotated[int | None, typer.Option(
        "--eval-every", help="Held-out evaluation every N steps (default: 10 per run).")]
    = None,
    eval_gamma: Annotated[int, typer.Option(
        "--eval-gamma", help="Chain length γ of the held-out τ.")] = 3,
    target_layers: Annotated[str | None, typer.Option(
        "--target-layers", help="The three target layers the draft reads, e.g. 1,14,29 (id i: "
        "the hidden state entering decoder layer i, as SGLang's and vLLM's "
        "eagle_aux_hidden_state_layer_ids). Default: EAGLE-3's low, middle, high.")] = None,
    skip_bad_lines: SkipOpt = False, template_kwargs: KwargsOpt = None,
    supervise: SuperviseOpt = "generated", leading_assistant: LeadingOpt = "drop",
    as_json: JsonOpt = False,
) -> None:
    """Train a draft on the target's hidden states: EAGLE-3 (training-time test) or SpecBlock
    (K positions per forward, --drafter specblock)."""
    from draftvocab.api.training import train
    from draftvocab.engine.train import TrainConfig

    layers = _layer_ids(target_layers) if target_layers is not None else None
    config = TrainConfig(ttt_steps=ttt_steps, lr=lr, warmup_steps=warmup, batch_size=batch_size,
                         epochs=epochs, max_steps=max_steps, max_len=max_len, dtype=dtype,
                         save_every=save_every, seed=seed, drafter=drafter,
                         block_size=block_size, draft_layers=draft_layers, shift=shift,
                         inherit=inherit, rank_head=rank_head, valid_prefix=valid_prefix)
    with _TrainProgress(quiet=as_json) as bar:
        run = train(data, target=target, mapping=mapping, out=out, config=config,
                    max_samples=max_samples, resume=resume, cache_features=cache_features,
                    reuse_features=reuse_features,
                    eval_data=eval_data, eval_samples=eval_samples, eval_every=eval_every,
                    eval_gamma=eval_gamma, skip_bad_lines=skip_bad_lines,
                    template_kwargs=template_kwargs, supervise=supervise,
                    leading_assistant=leading_assistant, target_layers=layers,
                    init_from=init_from, progress=bar,
                    on_step=bar.step)
    if as_json:
        _emit_json(run.to_json())
        return
    result = run.result
    acc = ", ".join(f"acc@{j} {a:.3f}" for j, a in enumerate(result.final_acc) if a is not None)
    resumed = f" (resumed from {escape(result.resumed_from)})" if result.resumed_from else ""
    err.print(f"trained {result.steps:,} steps on {result.examples:,} conversations "
              f"(k = {result.draft_vocab_size:,} of V = {result.vocab_size:,}){resumed}, "
              f"{result.seconds_per_step:.2f} s/step; last step: loss {result.final_loss:.4f}, "
              f"{acc} -> [bold]{escape(str(out))}[/bold]")
    if result.heldout:
        h = result.heldout
        err.print(f"held-out: τ {h['tau']:.3f} (chain γ = {h['gamma']}, {h['rounds']:,} "
                  f"rounds), acc@0 {h['acc'][0]:.3f}; curve: {escape(str(out / 'training.png'))}")
    if result.skipped:
        err.print(f"skipped: {result.skipped}")


def _layer_ids(text: str) -> tuple[int, ...]:
    """--target-layers "1,14,29" as ints; the target checks the range once it is loaded."""
    try:
        layers = tuple(int(part) for part in text.split(","))
    except ValueError:
        layers = ()
    if len(layers) != 3:
        raise DraftVocabError(f"--target-layers takes three comma-separated layer ids, e.g. "
                              f"1,14,29 (got '{text}')")
    return layers
