"""SIGTERM sent while the command line imports torch, many times: how the process ends, with
the handler holding an interrupt back until the import is over (`core/interrupts.py`, now)
and raising it at once (before; `_importing` patched to say no), interleaved in one run.

    python benchmarks/interrupt_during_import.py --runs 300

Each child installs the handler, imports torch and checks for an interrupt, as `draftvocab`
does; the signal lands at a random moment over the ~1 s import. Prints, per way, how many
children exited 130 (interrupted, one line), 0 (the signal came after the end: ignored), or
otherwise — -6 is SIGABRT: a KeyboardInterrupt raised inside torch's C++ module initialisers
ends in C++ `terminate` — and the first lines of one such child's stderr.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import time

CHILD = """
import sys
from draftvocab.core import interrupts
if {raise_at_once}:
    interrupts._importing = lambda frame: False
interrupts.install()
try:
    import torch
    interrupts.check()
except KeyboardInterrupt:
    sys.exit(130)
finally:
    interrupts.ignore()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=300, help="children per way")
    ap.add_argument("--window", type=float, default=1.0, help="latest signal time, seconds")
    a = ap.parse_args()
    rng = random.Random(0)
    ends = {"held until the import ends": collections.Counter(),
            "raised at once (before)": collections.Counter()}
    example = {}
    for _ in range(a.runs):
        for way, counts in ends.items():
            code = CHILD.format(raise_at_once=way.startswith("raised"))
            child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
            time.sleep(rng.uniform(0.1, a.window))
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
            _, err = child.communicate(timeout=120)
            counts[child.returncode] += 1
            if child.returncode not in (0, 130):
                example.setdefault(way, err.decode(errors="replace")[:400])
    print(json.dumps({"exit codes": {w: dict(c) for w, c in ends.items()},
                      "first stderr of another ending": example}, indent=2))


if __name__ == "__main__":
    main()
