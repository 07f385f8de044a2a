"""Draft training as library calls: `regenerate` a dataset's answers with the target (loaded here
or behind an OpenAI-compatible endpoint), then `train` a draft on them.

Owns the whole job of each command: the checks that fail before a model loads, reading the
data, the target, the vocabulary mapping, the supervision rule, the held-out set and the
feature cache. The work itself is `engine.regenerate` and `engine.train`; progress goes to
optional callbacks, rendering is the CLI's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from draftvocab.api.decoding import open_endpoint
from draftvocab.api.inputs import Progress, quiet
from draftvocab.core.errors import DraftVocabError


class RegenerateInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM while generating: the finished conversations are whole in `out`, and
    the same call again resumes after them."""

    def __init__(self, out: Path):
        super().__init__(str(out))
        self.out = out


@dataclass
class RegenerateResult:
    """What `regenerate` did (`stats`: the engine's counts) and with which target."""

    stats: Any  # engine.regenerate.RegenerateStats
    read_skipped: dict[str, int]  # records the reader skipped, by reason
    out: Path
    target: str
    endpoint: str | None = None
    concurrency: int | None = None

    @property
    def skipped(self) -> dict[str, int]:
        return self.stats.skipped | self.read_skipped

    def to_json(self) -> dict[str, Any]:
        summary = {**self.stats.to_json(), "read_skipped": self.read_skipped,
                   "out": str(self.out), "target": self.target}
        if self.endpoint:
            summary |= {"endpoint": self.endpoint, "concurrency": self.concurrency}
        return summary


def regenerate(data: str | Path | None = None, *, out: str | Path, target: str | None = None,
               endpoint: str | None = None, model: str | None = None, concurrency: int = 4,
               api_key: str | None = None, max_samples: int | None = None, seed: int = 0,
               batch_size: int = 8, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, turns: str = "all", max_prompt_tokens: int | None = None,
               columns: str | None = None, role_map: Sequence[str] | None = None,
               skip_bad_lines: bool = False, template_kwargs: str | dict | None = None,
               leading_assistant: str = "drop",
               progress: Progress | None = None) -> RegenerateResult:
    """Rewrite a dataset's assistant turns with the target's own replies, appended to the JSONL
    `out` (conversations already there are skipped: a rerun resumes). `target`: preset, .gguf
    or HF directory (default smollm2-135m and its ShareGPT); with `endpoint` (vLLM, SGLang,
    `draftvocab serve`) only its tokenizer loads. `progress` (`api.inputs.Progress`) counts
    conversations and generated tokens in stage "regenerating". Raises
    `RegenerateInterrupted` when interrupted while generating.

    >>> from draftvocab.api.training import regenerate
    >>> r = regenerate(out="regen.jsonl", max_samples=2, max_new_tokens=16)  # smollm2-135m
    >>> r.to_json()["target"]
    'smollm2-135m'
    """
    from draftvocab.chat.conversations import ColumnMap, parse_role_map, read_conversations
    from draftvocab.chat.messages import parse_template_kwargs
    from draftvocab.engine.presets import PRESETS, get_preset
    from draftvocab.engine.regenerate import check_options, finished_ids
    from draftvocab.engine.target import DEFAULT_TARGET, load_target

    check_options(batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, turns=turns, leading_assistant=leading_assistant)
    if concurrency < 1:
        raise DraftVocabError(f"--concurrency must be at least 1, got {concurrency}")
    if endpoint and max_prompt_tokens is not None:
        raise DraftVocabError("--max-prompt-tokens needs a local target: a server refuses a "
                              "prompt over its context itself (counted as rejected)")
    extra_kwargs = parse_template_kwargs(template_kwargs)
    out = Path(out)
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
    report = (lambda n, t: progress("regenerating", n, max_samples, tokens=t)) if progress else None
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
               "seed": seed, "turns": turns, "template_kwargs": kwargs,
               "leading_assistant": leading_assistant}
    if endpoint:
        ep = open_endpoint(endpoint, model, api_key)
        run = _remote(reader, ep, out, target, concurrency, report, options)
        where = {"target": ep.model, "endpoint": ep.url, "concurrency": concurrency}
    else:
        run = _local(reader, load_target(target or DEFAULT_TARGET), out, batch_size,
                     max_prompt_tokens, report, options)
        where = {"target": target or DEFAULT_TARGET}
    (progress or quiet)("regenerating", 0, max_samples)  # the target is loaded
    try:
        stats = run()
    except KeyboardInterrupt:
        raise RegenerateInterrupted(out) from None
    result = RegenerateResult(stats, reader.stats.skipped, out, **where)
    _check_not_empty(result)
    return result


def _remote(reader, ep, out: Path, target: str | None, concurrency: int, progress, options):
    """Regeneration through a server; its token ids are kept where they decode to the text
    (checked with `target`'s tokenizer, when given)."""
    from draftvocab.engine.regenerate import regenerate_remote

    tokenizer = None
    if target is not None:
        from draftvocab.engine.target import load_target_tokenizer

        tokenizer = load_target_tokenizer(target)
    return lambda: regenerate_remote(reader, ep, out, concurrency=concurrency,
                                     tokenizer=tokenizer, progress=progress, **options)


def _local(reader, model, out: Path, batch_size: int, max_prompt_tokens: int | None, progress,
           options):
    from draftvocab.engine.regenerate import regenerate as regenerate_here

    return lambda: regenerate_here(reader, model, out, batch_size=batch_size,
                                   max_prompt_tokens=max_prompt_tokens, progress=progress,
                                   **options)


def _check_not_empty(result: RegenerateResult) -> None:
    """An empty result is a failure: say why every conversation was skipped."""
    stats = result.stats
    if stats.written or stats.already_done:
        return
    skipped = result.skipped
    why = ", ".join(f"{k}: {v:,}" for k, v in sorted(skipped.items())) or "no conversations"
    hint = (" (prompts longer than the context minus --max-new-tokens, or than "
            "--max-prompt-tokens)" if "too_long" in skipped else "")
    first = next(iter(stats.skipped_examples.values()), None)
    raise DraftVocabError(f"nothing was regenerated: skipped {why}{hint}"
                          + (f"; first: {first}" if first else ""))


@dataclass
class TrainRun:
    """A finished training run: the engine's `TrainResult`, the target and the mapping."""

    result: Any  # engine.train.TrainResult
    target: str
    mapping: Path | None

    def to_json(self) -> dict[str, Any]:
        return {**self.result.to_json(), "target": self.target,
                "mapping": str(self.mapping) if self.mapping else None}


def train(data: str | Path | None = None, *, target: str = "smollm2-135m",
          mapping: str | Path | None = None, out: str | Path = "draft", config=None,
          max_samples: int | None = None, resume: bool = False,
          cache_features: str | Path | None = None,
          reuse_features: str | Path | None = None, eval_data: str | Path | None = None,
          eval_samples: int = 64, eval_every: int | None = None, eval_gamma: int = 3,
          skip_bad_lines: bool = False, template_kwargs: str | dict | None = None,
          supervise: str = "generated", leading_assistant: str = "drop",
          target_layers: Sequence[int] | None = None,
          init_from: str | Path | None = None,
          progress: Progress | None = None,
          on_step: Callable[[int, int, dict], None] | None = None) -> TrainRun:
    """Train a draft (`config`: an `engine.train.TrainConfig`; EAGLE-3 by default, SpecBlock
    with `drafter="specblock"`) on the target's hidden states for `data`, restricted to the
    vocabulary `mapping` (default: the full one), into `out/`. `cache_features` computes the
    target's features once into that directory (`reuse_features`: an earlier cache of the
    data's first conversations, copied instead of recomputed); `eval_data` logs held-out
    chain τ while training. `target_layers`: the three target layers the draft reads
    (SGLang's and vLLM's `eagle_aux_hidden_state_layer_ids`, written to its config.json);
    default EAGLE-3's low, middle and high. `init_from`: a finished draft (same drafter and
    layers; under another mapping the LM-head rows of the tokens both keep carry over) to start
    from instead of a fresh init, with a new optimizer and schedule. `progress`
    (`api.inputs.Progress`) follows the feature cache in stage "target features", then says
    stage "training" starts; `on_step(step, total, log_entry)` follows each optimizer step
    (loss, per-step accuracy).

    >>> from draftvocab import TrainConfig, train
    >>> run = train(max_samples=8, config=TrainConfig(max_steps=2, max_len=128), out="draft")
    >>> run.result.steps
    2
    """
    from draftvocab.chat.conversations import read_conversations
    from draftvocab.chat.messages import parse_template_kwargs
    from draftvocab.core.atomic import check_output_dir
    from draftvocab.engine.presets import PRESETS, get_preset
    from draftvocab.engine.target import DEFAULT_TARGET
    from draftvocab.engine.train import TrainConfig, encode_conversations, train_draft

    config = config or TrainConfig()
    config.check()  # cheap errors before loading anything
    out = Path(out)
    check_output_dir(out)
    if cache_features is not None:
        check_output_dir(Path(cache_features))
    elif reuse_features is not None:
        raise DraftVocabError("--reuse-features needs --cache-features (the cache it extends)")
    if eval_samples < 1 or eval_gamma < 1 or (eval_every is not None and eval_every < 1):
        raise DraftVocabError("--eval-samples, --eval-gamma and --eval-every must be >= 1")
    extra_kwargs = parse_template_kwargs(template_kwargs)
    if init_from is not None:
        from draftvocab.engine.drafters import read_config, read_state

        read_state(init_from, read_config(init_from))  # not a draft: fails before the target
    preset = get_preset(target if target in PRESETS else DEFAULT_TARGET)
    reader = read_conversations(
        data if data is not None else preset.dataset_path(),
        skip_bad_lines=skip_bad_lines or (data is None and preset.skip_bad_lines),
        max_samples=max_samples, seed=config.seed)
    held_reader = (read_conversations(eval_data, skip_bad_lines=skip_bad_lines,
                                      max_samples=eval_samples, seed=config.seed)
                   if eval_data is not None else None)
    vocab_mapping = None
    if mapping is not None:
        from draftvocab.vocab.mapping import load_mapping
        vocab_mapping = load_mapping(mapping)  # a bad file fails before the target loads
    model = _quiet_target(target, target_layers)
    d2t = t2d = None
    if mapping is not None:
        from draftvocab.engine.train import mapping_tensors

        d2t, t2d = mapping_tensors(vocab_mapping, model.vocab_size)
    spans = _spans(model, supervise, leading_assistant,
                   {**(preset.template_kwargs if target in PRESETS else {}), **extra_kwargs})
    examples, skipped = encode_conversations(reader, model.tokenizer, config.max_len, spans=spans)
    heldout = (_heldout(model, held_reader, spans, config.max_len, eval_gamma, eval_data)
               if held_reader is not None else None)
    features = None
    if cache_features is not None and examples:
        from draftvocab.engine.features import build_features

        features = build_features(model, examples, Path(cache_features), reuse=reuse_features,
                                  progress=_cumulative("target features", progress))
    if progress is not None:
        progress("training", 0)
    result = train_draft(model, examples, out, d2t=d2t, t2d=t2d, config=config, resume=resume,
                         skipped={**reader.stats.skipped, **skipped}, progress=on_step,
                         features=features, heldout=heldout, eval_every=eval_every,
                         init_from=init_from)
    return TrainRun(result, target, Path(mapping) if mapping else None)


def _cumulative(stage: str, progress: Progress | None):
    """An engine's `(done, total)` reports as increments of `stage`."""
    if progress is None:
        return None
    last: list[int] = []

    def report(done: int, total: int) -> None:
        if not last:
            progress(stage, 0, total)
            last.append(0)
        if done > last[0]:
            progress(stage, done - last[0])
            last[0] = done

    return report


def _quiet_target(target: str, layers: Sequence[int] | None = None):
    """`load_target` without transformers' "Loading weights" bar before a one-line error."""
    from transformers.utils import logging as hf_logging

    from draftvocab.engine.target import load_target

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load_target(target, layers=tuple(layers) if layers else None)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def _spans(model, supervise: str, leading_assistant: str, template_kwargs: dict):
    from draftvocab.chat.spans import ChatSpans

    return ChatSpans(model.tokenizer, supervise=supervise, leading_assistant=leading_assistant,
                     template_kwargs=template_kwargs)


def _heldout(model, reader, spans, max_len: int, gamma: int, where):
    """The held-out evaluation `train_draft` calls: chain τ of the draft on `reader`."""
    import functools

    from draftvocab.engine.acceptance import chain_tau, prepare_heldout
    from draftvocab.engine.train import encode_conversations

    held, _ = encode_conversations(reader, model.tokenizer, max_len, spans=spans)
    if not held:
        raise DraftVocabError(f"no usable held-out conversations in {where}")
    return functools.partial(chain_tau, held=prepare_heldout(model, held), gamma=gamma)
