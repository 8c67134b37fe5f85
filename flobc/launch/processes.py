"""Numbered child processes of one kind (validators, trainers) on this machine.

Each runs in its own session, so Ctrl-C in a terminal reaches only the caller, which
then stops them; each appends its output to its own log file, so a restarted process
continues the same log.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

STOP_GRACE_S = 10.0


class ProcessGroup:
    """Slots ``0..count-1``, each empty or holding one running process. Subclasses know
    what to run in a slot (their ``start``)."""

    def __init__(self, kind: str, count: int) -> None:
        self.kind = kind
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count

    def launch(self, index: int, command: list[str], log_path: Path) -> None:
        """Start ``command`` in slot ``index``, its output appended to ``log_path``."""
        if self.running(index):
            raise RuntimeError(f"{self.kind} {index} is already running")
        with open(log_path, "ab") as log:
            self.procs[index] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def running(self, index: int) -> bool:
        proc = self.procs[index]
        return proc is not None and proc.poll() is None

    def kill(self, index: int) -> None:
        """SIGKILL the process in slot ``index``: no clean shutdown, as in a crash."""
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.procs[index] = None

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every process, SIGKILL those still running after ``grace_s``."""
        procs = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = [None] * len(self.procs)
