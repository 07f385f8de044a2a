"""Ctrl-C and SIGTERM for the whole process tree: one handler, one line, exit 130.

The command-line process turns SIGINT and SIGTERM into `KeyboardInterrupt` and remembers that
one came, so that a library which swallows the exception (or turns it into another one) cannot
make an interrupted run look finished: `atomic` checks `check()` before it swaps an output into
place, with the two signals blocked around the swap itself, and the CLI exits 130 whenever one
came. Worker processes ignore SIGINT — a terminal sends it to the whole process group, and the
parent decides — and the parent stops them. A third signal exits at once, for a run stuck in
code that ignores the first two. An interrupt that lands where Python cannot raise it (a fork
hook such as logging's, a finaliser) is still recorded; Python's "Exception ignored in ..."
traceback for it is not printed, since `check()` ends the run with the one line anyway.
One that lands while a module is being imported is held back until the import is over: torch's
C++ module initialisers call back into Python, and a KeyboardInterrupt raised there cannot
propagate through them — the process aborted (SIGABRT, "terminate called after throwing an
instance of 'pybind11::error_already_set'") in 3 of 690 SIGTERMs sent during `import torch`.

Owns only signal handling; what an interrupted command leaves behind is `atomic.py`'s job.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130
_received: list[int] = []
_held: list[int] = []  # signals that came during an import, delivered once it is over
_owner: list[int] = []  # the process the handler was installed in
_previous_unraisable = [sys.unraisablehook]  # the hook `install` replaced


def install() -> None:
    """Route SIGINT and SIGTERM of this (main) process to `_handle`."""
    _owner[:] = [os.getpid()]
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    if sys.unraisablehook is not _unraisable:
        _previous_unraisable[:] = [sys.unraisablehook]
        sys.unraisablehook = _unraisable


def _unraisable(args) -> None:
    """`sys.unraisablehook`: silent for our own KeyboardInterrupt raised where it could not
    propagate (seen: SIGTERM during logging's after-fork hook as datasets forks a worker);
    anything else goes to the hook that was there before."""
    if issubclass(args.exc_type, KeyboardInterrupt) and _received:
        return
    _previous_unraisable[0](args)


def _handle(signum: int, frame) -> None:
    if _owner and os.getpid() != _owner[0]:
        # A worker a library forked (datasets' process pool): the parent decides about
        # Ctrl-C and stops its workers; asked to stop, a worker leaves without a traceback.
        if signum == signal.SIGTERM:
            os._exit(128 + signum)
        return
    if not _received and _importing(frame):
        _held.append(signum)
        if len(_held) >= 3:
            os._exit(EXIT_CODE)
        if len(_held) == 1:
            threading.Thread(target=_deliver_after_import, args=(signum,), daemon=True).start()
        return
    _received.append(signum)
    if len(_received) == 1:
        raise KeyboardInterrupt
    if len(_received) >= 3:  # the run did not stop: leave now, without clean-up
        os._exit(EXIT_CODE)
    # A second one arrives while clean-up runs: let the clean-up finish.


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _deliver_after_import(signum: int) -> None:
    """Watch the main thread; once it is out of every import, raise `signum` there again (it
    reaches `_handle`, which holds it back anew if another import has begun meanwhile)."""
    main = threading.main_thread().ident
    while not _received and signal.getsignal(signum) is _handle:  # not after `ignore()`
        frame = sys._current_frames().get(main)
        if frame is None:
            return
        if not _importing(frame):
            _thread.interrupt_main(signum)
        time.sleep(0.01)


def received() -> int | None:
    """The first signal this process received, or None."""
    return _received[0] if _received else _held[0] if _held else None


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt came, even one a library swallowed."""
    if _held and not _received:  # raised here: `_deliver_after_import` must not raise it again
        _received.append(_held[0])
    if _received or _blocked_pending():
        raise KeyboardInterrupt


def _blocked_pending() -> bool:
    return bool(hasattr(signal, "sigpending") and set(signal.sigpending()) & set(SIGNALS))


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Block SIGINT and SIGTERM for a critical section (swapping outputs into place); a
    signal that arrives meanwhile is delivered right after it."""
    if threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def worker_init() -> None:
    """In a worker process: the parent handles interrupts; SIGTERM ends a worker quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def ignore() -> None:
    """Ignore SIGINT and SIGTERM from now on (the command is over; only exiting is left)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def reset() -> None:
    """Forget received signals (tests running several commands in one process)."""
    _received.clear()
    _held.clear()
