"""`draftvocab serve ARGS` as a child process, for scripts, benchmarks and tests.

Owns starting the server, waiting until it listens (its URL parsed from the start-up line),
collecting its stderr and stopping it (a signal, or SIGKILL as a crash would). What the server
does is `serve.py`'s; talking to it is `endpoint.py`'s.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from draftvocab.core.errors import DraftVocabError


class ServerProcess:
    """`draftvocab serve ARGS` in a subprocess, for scripts, benchmarks and tests: returns once
    the server listens (its URL parsed from the start-up line), collecting its stderr.

    >>> server = ServerProcess("--draft", "runs/draft-trimmed")
    >>> server.url                       # 'http://127.0.0.1:PORT/v1'
    >>> rc, log = server.stop()          # SIGTERM: a clean stop, exit 0
    """

    _SERVING = re.compile(r"serving \S+ on (http://[\w.:\[\]-]+:(\d+)/v1)")

    def __init__(self, *args: str, port: int = 0, timeout: float = 300.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "draftvocab", "serve", "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "COLUMNS": "200"})
        self.lines: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise DraftVocabError(f"draftvocab serve did not start in {timeout:.0f} s: "
                                      f"{''.join(self.lines).strip()}") from None
            if line is None:
                raise DraftVocabError(f"draftvocab serve exited {self.proc.wait()}: "
                                      f"{''.join(self.lines).strip()}")
            self.lines.append(line)
            if m := self._SERVING.search(line):
                self.url, self.port = m.group(1), int(m.group(2))
                return

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> tuple[int, str]:
        """Send `sig` and wait: the exit code and everything the server wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        while (line := self._lines.get(timeout=10)) is not None:
            self.lines.append(line)
        return rc, "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
