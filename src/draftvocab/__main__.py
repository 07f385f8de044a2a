"""The `draftvocab` command's entry point (`python -m draftvocab` too).

It installs the interrupt handler before anything heavy is imported, so that Ctrl-C or SIGTERM
at any moment — importing, working, cleaning up — ends the process with one line and exit
code 130, never a traceback and never a success; one that comes after the command is over
changes nothing. Everything else is the `cli` package.
"""

from __future__ import annotations

import sys


def main() -> None:
    from draftvocab.core import interrupts
    interrupts.install()
    code = 1
    try:
        from draftvocab.cli import run

        code = run()  # typer turns an interrupt into exit code 130 without a word
    except KeyboardInterrupt:
        pass
    except BaseException:  # a library's reaction to an interrupt is an interrupt
        if not interrupts.received():
            raise
    finally:
        # The command is over: a signal now would only let the interpreter's shutdown (which
        # restores the default handlers) kill a finished run, turning exit 0 into "killed".
        interrupts.ignore()
    if interrupts.received():  # also when swallowed somewhere: never a success
        _leave(_interrupted())
    sys.exit(code)


def _interrupted() -> int:
    import signal

    from draftvocab.core import atomic, interrupts
    signum = interrupts.received() or signal.SIGINT
    name = signal.Signals(signum).name
    written = ", ".join(str(p) for p in dict.fromkeys(atomic.committed))
    what = (f"{written} had been written; nothing else was" if written
            else "nothing was written; earlier outputs are as they were")
    sys.stderr.write(f"interrupted ({name}): {what}\n")
    return interrupts.EXIT_CODE


def _leave(code: int) -> None:
    """Exit an interrupted run without the interpreter's shutdown. Outputs are already whole
    or untouched and worker pools stopped (their `finally` blocks ran); what shutdown would add
    is C++ static destructors of extensions whose work the interrupt cut short, and one of those
    aborted a run (SIGABRT, "terminate called without an active exception") after its line had
    been printed — once in a full test-suite run, under load."""
    import contextlib
    import os

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
