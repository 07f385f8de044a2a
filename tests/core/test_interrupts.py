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


def test_an_interrupt_during_an_import_is_raised_once_the_import_is_over(tmp_path):
    """Raised inside a module's initialiser, a KeyboardInterrupt can hit C++ that calls back into
    Python (torch's pybind11 initialisers), which aborts the process; so it waits for the
    import to end, and still ends the run."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "total = sum(range(200_000))  # many bytecodes: the handler runs inside the import\n"
        "DONE = True\n")
    code = f"""
import sys, time
sys.path.insert(0, {str(tmp_path)!r})
from draftvocab.core import interrupts
interrupts.install()
try:
    import slow_module
    print("imported", interrupts.received())
    time.sleep(5)
    print("never interrupted")
except KeyboardInterrupt:
    done = getattr(sys.modules.get("slow_module"), "DONE", False)
    print("interrupted after the import" if done else "interrupted inside the import")
"""
    res = _run(code)
    assert res.stdout.split("\n")[:2] == [f"imported {int(signal.SIGTERM)}",
                                          "interrupted after the import"], res
    assert "Traceback" not in res.stderr, res.stderr
