"""Draft-training commands: regenerate (the target's own answers), train.
"""

from __future__ import annotations

import contextlib
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
    _emit_json,
    _endpoint,
    _fail_cleanly,
    _progress,
    _TrainProgress,
    app,
    err,
)
from draftvocab.core.errors import DraftVocabError


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
    from draftvocab.chat.conversations import ColumnMap, parse_role_map, read_conversations
    from draftvocab.chat.messages import parse_template_kwargs
    from draftvocab.engine.presets import PRESETS, get_preset
    from draftvocab.engine.regenerate import check_options, finished_ids, regenerate
    from draftvocab.engine.target import DEFAULT_TARGET, load_target

    check_options(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, turns=turns, leading_assistant=leading_assistant)
    if concurrency < 1:
        raise DraftVocabError(f"--concurrency must be at least 1, got {concurrency}")
    if endpoint and max_prompt_tokens is not None:
        raise DraftVocabError("--max-prompt-tokens needs a local target: a server refuses a "
                              "prompt over its context itself (counted as rejected)")
    extra_kwargs = parse_template_kwargs(template_kwargs)
    finished_ids(out)  # a bad output file fails before the model loads
    preset = get_preset(target if target in PRESETS else DEFAULT_TARGET)
    reader = read_conversations(
        data if data is not None else preset.dataset_path(),
        columns=ColumnMap.parse(columns) if columns else None,
        role_map=parse_role_map(role_map) if role_map else None,
        skip_bad_lines=skip_bad_lines or (data is None and preset.skip_bad_lines),
        max_samples=max_samples, seed=seed,
    )
    kwargs = {**(preset.template_kwargs if (target or DEFAULT_TARGET) in PRESETS else {}),
              **extra_kwargs}
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
               "seed": seed, "turns": turns, "template_kwargs": kwargs,
               "leading_assistant": leading_assistant}
    if endpoint:
        ep, tokenizer = _endpoint(endpoint, model_name, api_key), None
        if target is not None:
            from draftvocab.engine.target import load_target_tokenizer

            tokenizer = load_target_tokenizer(target)
    else:
        model = load_target(target or DEFAULT_TARGET)
    try:
        with _progress("regenerating", max_samples, as_json, rate=lambda c, t, dt:
                       f"{t:,} tok  {t / dt:,.1f} tok/s") as bar:
            if endpoint:
                from draftvocab.engine.regenerate import regenerate_remote

                stats = regenerate_remote(reader, ep, out, concurrency=concurrency,
                                          tokenizer=tokenizer, progress=bar, **options)
            else:
                stats = regenerate(reader, model, out, batch_size=batch_size,
                                   max_prompt_tokens=max_prompt_tokens, progress=bar,
                                   **options)
    except KeyboardInterrupt:
        err.print(f"[bold red]interrupted[/bold red]: finished conversations are in "
                  f"{escape(str(out))}; rerun the same command to resume")
        raise typer.Exit(130) from None
    summary = {**stats.to_json(), "read_skipped": reader.stats.skipped, "out": str(out),
               "target": ep.model if endpoint else target or DEFAULT_TARGET}
    if endpoint:
        summary |= {"endpoint": ep.url, "concurrency": concurrency}
    if stats.written == 0 and stats.already_done == 0:  # an empty result is a failure
        skipped = stats.skipped | reader.stats.skipped
        why = ", ".join(f"{k}: {v:,}" for k, v in sorted(skipped.items())) or "no conversations"
        hint = (" (prompts longer than the context minus --max-new-tokens, or than "
                "--max-prompt-tokens)" if "too_long" in skipped else "")
        first = next(iter(stats.skipped_examples.values()), None)
        raise DraftVocabError(f"nothing was regenerated: skipped {why}{hint}"
                              + (f"; first: {first}" if first else ""))
    if as_json:
        _emit_json(summary)
        return
    err.print(f"regenerated {stats.written:,} conversations ({stats.already_done:,} already "
              f"done), {stats.generated_tokens:,} tokens in {stats.seconds:,.1f} s "
              f"({stats.tokens_per_s:,.1f} tok/s) -> [bold]{escape(str(out))}[/bold]")
    if stats.skipped or reader.stats.skipped:
        err.print(f"skipped: {stats.skipped | reader.stats.skipped}")
        for reason, example in stats.skipped_examples.items():
            err.print(f"  first {reason}: {escape(example)}")


@app.command("train", epilog="Examples:\n\n"
             "  draftvocab train -o draft/ --max-samples 2000 --max-len 512   "
             "# SmolLM2-135M on ShareGPT, full vocabulary\n\n"
             "  draftvocab train regen.jsonl --mapping run/vocab_mapping.pt -o draft/ "
             "--epochs 2 --save-every 500\n\n"
             "  draftvocab train regen.jsonl --mapping run/ -o draft/ --save-every 500 --resume   "
             "# continue an interrupted run\n\n"
             "  draftvocab train chats.jsonl --target path/to/hf-model -o draft/ --dtype bf16 "
             "--json\n\n"
             "  draftvocab train regen.jsonl --mapping run/ --drafter specblock -o sb/   "
             "# SpecBlock, K = 4, 2 layers")
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
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling, init and data order.")]
    = 0,
    cache_features: Annotated[Path | None, typer.Option(
        "--cache-features", help="Compute the target's features once into this directory "
        "(fp16, memory-mapped; reused by later runs on the same data and target) instead of a "
        "target forward every step.")] = None,
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
    skip_bad_lines: SkipOpt = False, template_kwargs: KwargsOpt = None,
    supervise: SuperviseOpt = "generated", leading_assistant: LeadingOpt = "drop",
    as_json: JsonOpt = False,
) -> None:
    """Train a draft on the target's hidden states: EAGLE-3 (training-time test) or SpecBlock
    (K positions per forward, --drafter specblock)."""
    from draftvocab.chat.conversations import read_conversations
    from draftvocab.engine.presets import PRESETS, get_preset
    from draftvocab.engine.target import DEFAULT_TARGET, load_target
    from draftvocab.engine.train import (
        TrainConfig,
        encode_conversations,
        mapping_tensors,
        train_draft,
    )

    config = TrainConfig(ttt_steps=ttt_steps, lr=lr, warmup_steps=warmup, batch_size=batch_size,
                         epochs=epochs, max_steps=max_steps, max_len=max_len, dtype=dtype,
                         save_every=save_every, seed=seed, drafter=drafter,
                         block_size=block_size, draft_layers=draft_layers, shift=shift,
                         inherit=inherit, rank_head=rank_head, valid_prefix=valid_prefix)
    from draftvocab.core.atomic import check_output_dir

    config.check()  # cheap errors before loading anything
    check_output_dir(out)
    if cache_features is not None:
        check_output_dir(cache_features)
    if eval_samples < 1 or eval_gamma < 1 or (eval_every is not None and eval_every < 1):
        raise DraftVocabError("--eval-samples, --eval-gamma and --eval-every must be >= 1")
    from draftvocab.chat.messages import parse_template_kwargs
    from draftvocab.chat.spans import ChatSpans

    extra_kwargs = parse_template_kwargs(template_kwargs)
    preset = get_preset(target if target in PRESETS else DEFAULT_TARGET)
    reader = read_conversations(
        data if data is not None else preset.dataset_path(),
        skip_bad_lines=skip_bad_lines or (data is None and preset.skip_bad_lines),
        max_samples=max_samples, seed=seed)
    held_reader = (read_conversations(eval_data, skip_bad_lines=skip_bad_lines,
                                      max_samples=eval_samples, seed=seed)
                   if eval_data is not None else None)
    vocab_mapping = None
    if mapping is not None:
        from draftvocab.vocab.mapping import load_mapping
        vocab_mapping = load_mapping(mapping)  # a bad file fails before the target loads
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar before a one-line error
    try:
        model = load_target(target)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    d2t = t2d = None
    if mapping is not None:
        d2t, t2d = mapping_tensors(vocab_mapping, model.vocab_size)
    spans = ChatSpans(model.tokenizer, supervise=supervise, leading_assistant=leading_assistant,
                      template_kwargs={**(preset.template_kwargs if target in PRESETS else {}),
                                       **extra_kwargs})
    examples, skipped = encode_conversations(reader, model.tokenizer, max_len, spans=spans)
    heldout = None
    if held_reader is not None:
        import functools

        from draftvocab.engine.acceptance import chain_tau, prepare_heldout

        held, _ = encode_conversations(held_reader, model.tokenizer, max_len, spans=spans)
        if not held:
            raise DraftVocabError(f"no usable held-out conversations in {eval_data}")
        heldout = functools.partial(chain_tau, held=prepare_heldout(model, held),
                                    gamma=eval_gamma)
    features = None
    if cache_features is not None and examples:
        from rich.progress import Progress

        from draftvocab.engine.features import build_features

        with Progress(console=err, transient=True, disable=as_json) as fbar:
            task = fbar.add_task("target features", total=len(examples))
            features = build_features(model, examples, cache_features,
                                      progress=lambda done, _n: fbar.update(task, completed=done))
    bar = _TrainProgress() if not as_json else None
    with bar if bar is not None else contextlib.nullcontext():
        result = train_draft(model, examples, out, d2t=d2t, t2d=t2d, config=config,
                             resume=resume, skipped={**reader.stats.skipped, **skipped},
                             progress=bar, features=features, heldout=heldout,
                             eval_every=eval_every)
    summary = {**result.to_json(), "target": target,
               "mapping": str(mapping) if mapping else None}
    if as_json:
        _emit_json(summary)
        return
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
