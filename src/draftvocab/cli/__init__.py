"""The `draftvocab` command line: a thin Typer skin over the library.

Each command parses options, calls library functions and prints: human tables to stderr/stdout
via rich, or one JSON object on stdout with `--json`. A `DraftVocabError` becomes one red line and
exit code 1; nothing here does real work of its own.

Commands live in one module per group — vocab, training, decoding, analysis, measure, interop —
imported below in the order `--help` lists them; `common` holds what they share. `__main__`
is the entry point; this package never imports it.
"""

from __future__ import annotations

from importlib import import_module

import typer

from draftvocab.cli.common import JsonOpt, _emit_json, app, console

for _group in ("vocab", "training", "decoding", "analysis", "measure", "interop"):
    import_module(f"draftvocab.cli.{_group}")  # registers the group's commands on `app`


@app.command("presets")
def presets_cmd(as_json: JsonOpt = False) -> None:
    """List the built-in offline presets."""
    from draftvocab.engine.presets import DEFAULT_PRESET, PRESETS

    rows = [{"name": p.name, "default": p.name == DEFAULT_PRESET, "description": p.description}
            for p in PRESETS.values()]
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        console.print(f"[bold]{r['name']}[/bold]{' (default)' if r['default'] else ''}: "
                  f"{r['description']}")


def run(args: list[str] | None = None) -> int:
    """Run the command line (without exiting); the exit code. `__main__` calls it."""
    try:
        result = app(args=args, standalone_mode=False)
    except typer.Abort:  # the command-line parser's own reaction to an interrupt
        raise KeyboardInterrupt from None
    except typer.exceptions.TyperException as exc:  # usage errors: its message, exit 2
        if not hasattr(exc, "show"):
            raise
        exc.show()
        return exc.exit_code
    return result if isinstance(result, int) else 0
