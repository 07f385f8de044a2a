"""Interrupt handling (`core/interrupts.py`) in a child Python, so that its signal handlers and
hooks never touch the test process."""

from __future__ import annotations

import signal
import subprocess
import sys

# An interrupt raised inside an after-fork hook, as a SIGTERM during logging's `_releaseLock`
# does when a library forks a worker: Python cannot propagate it and reports it as "Exception
# ignored in ...". The run must still count as interrupted (`check()` raises).
CHILD = """
import os, signal
from draftvocab.core import interrupts
interrupts.install()
os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.{sig}))
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
try:
    interrupts.check()
except KeyboardInterrupt:
    print("interrupted", interrupts.received())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=60)


def test_an_interrupt_python_cannot_raise_is_recorded_without_a_traceback():
    res = _run(CHILD.format(sig="SIGTERM"))
    assert res.stdout.strip() == f"interrupted {int(signal.SIGTERM)}", res
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr


def test_other_unraisable_errors_are_still_reported():
    code = """
from draftvocab.core import interrupts
interrupts.install()
class Loud:
    def __del__(self):
        raise ValueError("from a finaliser")
Loud()
"""
    res = _run(code)
    assert "ValueError: from a finaliser" in res.stderr and "Exception ignored" in res.stderr
