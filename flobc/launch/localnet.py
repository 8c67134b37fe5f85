"""A local testnet of validator processes on loopback.

One launcher for everything that runs a real cluster on this machine: the demo, the
end-to-end tests and the benchmarks. Each validator is a real ``flobc validator start``
process in its own session (so Ctrl-C reaches only the caller, which stops them), with
its output in ``<home>/validator.log``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import sys
import time
from pathlib import Path

import httpx

from flobc.config import ConsensusParams, Genesis, NodeConfig
from flobc.errors import LaunchError
from flobc.launch.processes import ProcessGroup
from flobc.launch.testnet import write_testnet

STARTUP_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05


def free_port_range(count: int, attempts: int = 200) -> int:
    """A base port such that ``count`` consecutive ports are free on 127.0.0.1 now."""
    for _ in range(attempts):
        base = random.randrange(20000, 30000 - count)
        if all(_port_free(port) for port in range(base, base + count)):
            return base
    raise LaunchError(f"found no {count} consecutive free ports in 20000..30000")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalNet(ProcessGroup):
    """Validator processes of one testnet: written here, or already on disk."""

    def __init__(self, workdir: Path, validators: int, *,
                 params: ConsensusParams | None = None, chain_id: str = "flobc-local") -> None:
        write_testnet(Path(workdir), validators, chain_id=chain_id, host="127.0.0.1",
                      base_port=free_port_range(2 * validators),
                      params=params or ConsensusParams())
        self._open(Path(workdir))

    @classmethod
    def open(cls, workdir: Path) -> LocalNet:
        """The testnet that ``flobc testnet init`` wrote to ``workdir``."""
        net = cls.__new__(cls)
        net._open(Path(workdir))
        return net

    def _open(self, workdir: Path) -> None:
        self.workdir = workdir
        homes = sorted(workdir.glob("validator-*"), key=lambda p: int(p.name.split("-")[1]))
        self.configs: list[NodeConfig] = [NodeConfig.load(home) for home in homes]
        self.genesis = Genesis.load(workdir / "genesis.toml")
        self.urls = [f"http://{c.api_listen}" for c in self.configs]
        super().__init__("validator", len(self.configs))

    def __enter__(self) -> LocalNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, index: int) -> None:
        """Start validator ``index`` (again, on its existing home and data)."""
        home = self.configs[index].home
        self.launch(index, [sys.executable, "-m", "flobc", "validator", "start", "--home",
                            str(home)], home / "validator.log")

    def start_all(self) -> None:
        for i in range(len(self.configs)):
            self.start(i)
        self.wait_serving()

    def log_tail(self, index: int, lines: int = 20) -> str:
        try:
            text = (self.configs[index].home / "validator.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_serving(self, indices: list[int] | None = None,
                     timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Poll /status until every validator in ``indices`` answers; fail fast on exit."""
        waiting = set(range(len(self.configs)) if indices is None else indices)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while waiting:
                for i in sorted(waiting):
                    proc = self.procs[i]
                    if proc is None or proc.poll() is not None:
                        raise LaunchError(f"validator {i} is not running: {self.log_tail(i, 5)}")
                    with contextlib.suppress(httpx.TransportError):
                        if client.get(f"{self.urls[i]}/status").status_code == 200:
                            waiting.discard(i)
                if waiting and time.monotonic() > deadline:
                    raise LaunchError(f"validators {sorted(waiting)} not serving after "
                                   f"{timeout:.0f} s")
                if waiting:
                    time.sleep(POLL_INTERVAL_S)
