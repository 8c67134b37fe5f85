"""A harness for end-to-end tests and benchmarks: a local testnet of validator processes.

It drives the system only as a user would: ``flobc testnet init`` writes the testnet,
``flobc validator start --home`` runs each validator as its own process on loopback,
and everything else goes through the validators' HTTP API. A validator can be killed
with SIGKILL and restarted from the same home at any time. Every wait polls a
condition with a bound and, when the bound passes, raises :class:`ClusterError`
naming what it waited for, the validators' last statuses and the tails of their logs.

Typical use::

    with Cluster.create(tmp_path / "net", validators=4) as cluster:
        cluster.start_all()
        hashes = cluster.submit_kv({"greeting": "hello"})
        cluster.wait_committed(hashes)
        height, root = cluster.wait_agreement()
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from flobc import codec
from flobc.consensus.kvstore import KV_PREFIX, make_tx
from flobc.crypto import PrivateKey
from flobc.launch.localnet import free_port_range

T = TypeVar("T")

STARTUP_TIMEOUT_S = 60.0
COMMIT_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 5.0
MAX_BATCH_TXS = 500
LOG_TAIL_LINES = 25
LOG_TAIL_MARK = "--- tail of "
"""Below Linux's ephemeral range (32768+), so outgoing connections never take these."""


class ClusterError(AssertionError):
    """A cluster did not do what a test waited for (an AssertionError, so pytest shows it
    as a test failure with its whole message)."""


def flobc_command(*args: object) -> list[str]:
    """The argv that runs ``flobc ARGS`` with this interpreter."""
    return [sys.executable, "-m", "flobc", *map(str, args)]


def run_flobc(*args: object, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``flobc ARGS`` to completion and return it (text output captured)."""
    return subprocess.run(flobc_command(*args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def wait_until(pred: Callable[[], T], timeout: float, what: str,
               context: Callable[[], str] | None = None) -> T:
    """Poll ``pred`` until it returns something truthy, and return that.

    After ``timeout`` seconds raise :class:`ClusterError` saying ``what`` was awaited,
    with ``context()`` (e.g. the last statuses seen) appended. An exception raised by
    ``pred`` or ``context`` propagates at once: it means waiting longer is pointless.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if result:
            return result
        if time.monotonic() >= deadline:
            details = f"\n{context()}" if context is not None else ""
            raise ClusterError(f"timed out after {timeout:g} s waiting for {what}{details}")
        time.sleep(POLL_INTERVAL_S)


def _pdeathsig_kill() -> None:  # pragma: no cover - runs in the child before exec
    """Have Linux SIGKILL the child when the test process dies, so none is left over.

    Linux sends it when the *thread* that started the child ends, so start validators
    from a thread that outlives them (the main thread, as pytest does)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Validator:
    """One validator's home, API address and (while running) process."""

    index: int
    home: Path
    url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        """Started by the harness and not (yet) stopped by it; it may have crashed."""
        return self.proc is not None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class Cluster:
    """A testnet directory and its validator processes; see the module docstring."""

    out: Path
    validators: list[Validator]
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=HTTP_TIMEOUT_S))
    kv_key: PrivateKey = field(default_factory=PrivateKey.generate)
    written: dict[str, str] = field(default_factory=dict)
    """Every key this harness wrote and whose commit it saw, with the last value."""
    _nonces: Iterator[int] = field(default_factory=lambda: itertools.count(time.time_ns()))
    _pending_kv: dict[str, tuple[str, str]] = field(default_factory=dict)

    # --- setting up and tearing down ---------------------------------------------------

    @classmethod
    def create(cls, out: Path, validators: int = 4, *, log_dir: Path | None = None,
               **params: int) -> Cluster:
        """Write a testnet with ``flobc testnet init`` on free loopback ports.

        ``params`` are consensus parameters by their genesis names (e.g.
        ``checkpoint_interval=4``). Logs go to ``log_dir`` (default: ``out``) as
        ``validator-i.log``; restarts append to the same file.
        """
        base = free_port_range(2 * validators)
        options = [arg for name, value in params.items()
                   for arg in (f"--{name.replace('_', '-')}", value)]
        init = run_flobc("testnet", "init", "--validators", validators, "--out", out,
                         "--base-port", base, *options)
        if init.returncode != 0:
            raise ClusterError(f"flobc testnet init failed ({init.returncode}): {init.stderr}")
        log_dir = log_dir or out
        log_dir.mkdir(parents=True, exist_ok=True)
        return cls(out, [Validator(i, out / f"validator-{i}",
                                   f"http://127.0.0.1:{base + 2 * i + 1}",
                                   log_dir / f"validator-{i}.log")
                         for i in range(validators)])

    @property
    def genesis_path(self) -> Path:
        return self.out / "genesis.toml"

    @property
    def urls(self) -> list[str]:
        return [v.url for v in self.validators]

    @property
    def n(self) -> int:
        return len(self.validators)

    def running(self) -> list[int]:
        """Indices of the validators the harness has started and not stopped."""
        return [v.index for v in self.validators if v.running]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """SIGKILL every validator still running and close the HTTP client."""
        try:
            self.kill_all()
        finally:
            self.client.close()

    # --- processes ------------------------------------------------------------------

    def start(self, index: int, *, wait: bool = True) -> None:
        """Start validator ``index`` with ``flobc validator start --home``; by default
        wait until its API answers."""
        v = self.validators[index]
        if v.running:
            raise ClusterError(f"validator {index} is already running (pid {v.proc.pid})")
        v.starts += 1
        with open(v.log_path, "ab") as log:
            log.write(f"--- harness: start #{v.starts} of validator {index} ---\n".encode())
            log.flush()
            v.proc = subprocess.Popen(
                flobc_command("validator", "start", "--home", v.home),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_pdeathsig_kill if sys.platform == "linux" else None)
        if wait:
            self.wait_serving([index])

    def start_all(self, *, wait: bool = True) -> None:
        """Start every validator that is not running (all at once, then wait)."""
        stopped = [v.index for v in self.validators if not v.running]
        for i in stopped:
            self.start(i, wait=False)
        if wait:
            self.wait_serving(stopped)

    def kill(self, index: int) -> None:
        """SIGKILL validator ``index`` and reap it."""
        v = self.validators[index]
        if v.proc is None:
            raise ClusterError(f"validator {index} is not running")
        proc, v.proc = v.proc, None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(v.log_path, "ab") as log:
            log.write(f"--- harness: SIGKILL validator {index} (exit {proc.returncode}) "
                      f"---\n".encode())

    def kill_all(self) -> None:
        """SIGKILL every running validator."""
        for i in self.running():
            self.kill(i)

    def restart(self, index: int, *, wait: bool = True) -> None:
        """SIGKILL validator ``index`` if running, then start it again from its home."""
        if self.validators[index].running:
            self.kill(index)
        self.start(index, wait=wait)

    def check_alive(self) -> None:
        """Raise if a validator the harness started has exited on its own."""
        for v in self.validators:
            if v.proc is not None and (code := v.proc.poll()) is not None:
                raise ClusterError(f"validator {v.index} exited by itself with status {code}; "
                                   f"log tail:\n{v.log_tail()}")

    # --- the API ----------------------------------------------------------------------

    def get(self, index: int, path: str, **params: str) -> httpx.Response:
        return self.client.get(self.validators[index].url + path, params=params or None)

    def status(self, index: int) -> dict[str, Any] | None:
        """Validator ``index``'s ``/status``, or None when it does not answer."""
        try:
            response = self.get(index, "/status")
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def statuses(self, indices: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """``/status`` of the given (default: running) validators; raises if one does not
        answer or has crashed."""
        indices = self.running() if indices is None else list(indices)
        found = self._answered(indices)
        if found is None:
            silent = [i for i in indices if self.status(i) is None]
            raise ClusterError(f"validators {silent} do not answer /status\n{self.describe()}")
        return found

    def _answered(self, indices: Iterable[int] | None) -> dict[int, dict[str, Any]] | None:
        """``/status`` of the given (default: running) validators, or None unless every
        one of them answers; raises if one has crashed."""
        indices = self.running() if indices is None else list(indices)
        self.check_alive()
        found: dict[int, dict[str, Any]] = {}
        for i in indices:
            st = self.status(i)
            if st is None:
                return None
            found[i] = st
        return found

    def describe(self, *, logs: bool = False) -> str:
        """One line per validator with its status (and, with ``logs``, its log tail)."""
        lines = []
        for v in self.validators:
            if not v.running:
                lines.append(f"  validator {v.index}: stopped by the harness")
            elif v.proc is not None and v.proc.poll() is not None:
                lines.append(f"  validator {v.index}: EXITED with status {v.proc.returncode}")
            elif (st := self.status(v.index)) is None:
                lines.append(f"  validator {v.index}: not answering at {v.url}")
            else:
                lines.append(
                    f"  validator {v.index}: height={st['height']} view={st['view']} "
                    f"primary={st['primary']} in_view_change={st['in_view_change']} "
                    f"stable={st['stable_checkpoint']} mempool={st['mempool_size']} "
                    f"peers={st['peers_connected']} root={st['state_root'][:16]}")
        if logs:
            for v in self.validators:
                lines.append(f"{LOG_TAIL_MARK}{v.log_path} ---\n{v.log_tail()}")
        return "\n".join(lines)

    def wait_until(self, pred: Callable[[], T], what: str, timeout: float = COMMIT_TIMEOUT_S,
                   detail: Callable[[], str] | None = None) -> T:
        """:func:`wait_until`, also failing fast when a started validator has crashed,
        and reporting ``detail()``, every validator's status and log tail on a timeout."""
        def checked() -> T:
            self.check_alive()
            return pred()

        def context() -> str:
            extra = f"{detail()}\n" if detail is not None else ""
            return f"{extra}{self.describe(logs=True)}"
        return wait_until(checked, timeout, what, context)

    def wait_serving(self, indices: Sequence[int] | None = None,
                     timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until the given (default: running) validators answer ``/status``."""
        indices = self.running() if indices is None else list(indices)
        self.wait_until(lambda: all(self.status(i) is not None for i in indices),
                        f"validators {indices} to serve their API", timeout)

    def wait_connected(self, indices: Sequence[int] | None = None,
                       timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Wait until each given validator reports a connection to every other one."""
        indices = self.running() if indices is None else list(indices)

        def connected() -> bool:
            sts = self._answered(indices)
            return sts is not None and all(set(indices) - {i} <= set(st["peers_connected"])
                       for i, st in sts.items())
        self.wait_until(connected, f"validators {indices} to connect to each other", timeout)

    # --- agreement ------------------------------------------------------------------

    def wait_height(self, height: int, indices: Sequence[int] | None = None,
                    timeout: float = COMMIT_TIMEOUT_S) -> dict[int, dict[str, Any]]:
        """Wait until every given validator has committed ``height``; return statuses."""
        indices = self.running() if indices is None else list(indices)

        def reached() -> dict[int, dict[str, Any]] | None:
            sts = self._answered(indices)
            if sts is None or any(st["height"] < height for st in sts.values()):
                return None
            return sts
        return self.wait_until(reached, f"validators {indices} to reach height {height}",
                               timeout)

    def wait_agreement(self, indices: Sequence[int] | None = None, min_height: int = 0,
                       timeout: float = COMMIT_TIMEOUT_S) -> tuple[int, str]:
        """Wait until the given validators report one height (at least ``min_height``)
        and return it with their state root. Validators at one height with different
        state roots fail at once: that is a safety violation, not slowness."""
        indices = self.running() if indices is None else list(indices)

        def agreed() -> tuple[int, str] | None:
            sts = self._answered(indices)
            if sts is None:
                return None
            self._check_roots(sts)
            heights = {st["height"] for st in sts.values()}
            if len(heights) != 1 or min(heights) < min_height:
                return None
            return heights.pop(), sts[indices[0]]["state_root"]
        return self.wait_until(
            agreed, f"validators {indices} to agree on a height of at least {min_height}",
            timeout)

    @staticmethod
    def _check_roots(sts: Mapping[int, dict[str, Any]]) -> None:
        by_height: dict[int, dict[str, list[int]]] = {}
        for i, st in sts.items():
            by_height.setdefault(st["height"], {}).setdefault(st["state_root"], []).append(i)
        for height, roots in by_height.items():
            if len(roots) > 1:
                raise ClusterError(f"validators disagree on the state root at height {height}: "
                                   f"{roots}")

    def block(self, index: int, height: int) -> dict[str, Any]:
        """``GET /blocks/{height}`` from validator ``index`` (raises unless 200)."""
        response = self.get(index, f"/blocks/{height}")
        if response.status_code != 200:
            raise ClusterError(f"validator {index} GET /blocks/{height}: HTTP "
                               f"{response.status_code}: {response.text[:300]}")
        return response.json()

    def block_hashes(self, index: int, first: int, last: int) -> list[str]:
        """The block hashes validator ``index`` serves for heights first..last."""
        return [self.block(index, h)["block_hash"] for h in range(first, last + 1)]

    # --- key-value transactions -----------------------------------------------------

    def kv_txs(self, items: Mapping[str, str]) -> list[bytes]:
        """Signed transactions setting each key to its value, with fresh nonces."""
        return [make_tx(self.kv_key, next(self._nonces), k.encode(), v.encode())
                for k, v in items.items()]

    def submit(self, txs: Sequence[bytes], to: Sequence[int] | None = None,
               batch: int = MAX_BATCH_TXS) -> list[str]:
        """POST ``txs`` in batches to ``/txs/batch``, round-robin over the given (default:
        running) validators; return the hashes. Any refusal raises."""
        to = self.running() if to is None else list(to)
        hashes: list[str] = []
        for n, start in enumerate(range(0, len(txs), batch)):
            target = to[n % len(to)]
            chunk = list(txs[start:start + batch])
            response = self.client.post(
                f"{self.validators[target].url}/txs/batch", content=codec.pack(chunk),
                headers={"content-type": "application/octet-stream"})
            if response.status_code != 200:
                raise ClusterError(f"validator {target} refused a batch: HTTP "
                                   f"{response.status_code}: {response.text[:300]}")
            answer = response.json()
            refused = [r["error"] for r in answer["results"] if r["error"] is not None]
            if refused:
                raise ClusterError(f"validator {target} refused {len(refused)} of "
                                   f"{len(chunk)} txs, e.g. {refused[0]!r}")
            hashes += [r["tx_hash"] for r in answer["results"]]
        return hashes

    def submit_kv(self, items: Mapping[str, str], to: Sequence[int] | None = None,
                  batch: int = MAX_BATCH_TXS) -> list[str]:
        """Sign and submit KV writes (see :meth:`submit`); once :meth:`wait_committed`
        sees them they are remembered in :attr:`written`."""
        hashes = self.submit(self.kv_txs(items), to, batch)
        self._pending_kv.update(zip(hashes, items.items(), strict=True))
        return hashes

    def committed(self, index: int, tx_hash: str) -> dict[str, Any] | None:
        """Where validator ``index`` committed a transaction, or None if it has not."""
        response = self.get(index, f"/txs/{tx_hash}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ClusterError(f"validator {index} GET /txs/{tx_hash}: HTTP "
                               f"{response.status_code}: {response.text[:300]}")
        answer = response.json()
        return None if answer.get("status") == "pending" else answer

    def wait_committed(self, hashes: Sequence[str], on: Sequence[int] | None = None,
                       timeout: float = COMMIT_TIMEOUT_S) -> int:
        """Wait until every given (default: running) validator committed every tx, each
        executing without error; return the highest height one landed at."""
        on = self.running() if on is None else list(on)
        missing = {i: list(hashes) for i in on}
        top = 0

        def done() -> bool:
            nonlocal top
            self.check_alive()
            for i, left in missing.items():
                while left:
                    try:
                        found = self.committed(i, left[-1])
                    except httpx.TransportError:
                        break  # not answering right now: ask again on the next poll
                    if found is None:
                        break
                    if found["result"] is not None:
                        raise ClusterError(f"tx {left[-1]} failed on validator {i}: "
                                           f"{found['result']}")
                    top = max(top, found["height"])
                    left.pop()
            return not any(missing.values())
        self.wait_until(done, f"{len(hashes)} txs to commit on validators {on}", timeout,
                        detail=lambda: f"txs still missing per validator: "
                                       f"{ {i: len(m) for i, m in missing.items()} }")
        for h in hashes:
            if h in self._pending_kv:
                k, v = self._pending_kv.pop(h)
                self.written[k] = v
        return top

    def kv(self, index: int, key: str) -> str | None:
        """Validator ``index``'s value for KV key ``key`` (decoded), None if it has none."""
        response = self.get(index, f"/kv/{key}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ClusterError(f"validator {index} GET /kv/{key}: HTTP "
                               f"{response.status_code}: {response.text[:300]}")
        return bytes.fromhex(response.json()["value"]).decode()

    @staticmethod
    def state_key(key: str) -> bytes:
        """The state key under which the KV application stores ``key``."""
        return KV_PREFIX + key.encode()


def failure_report_plugin(cluster: Cluster, fixture: str) -> object:
    """A pytest plugin object: when a test phase that uses ``fixture`` fails, its report
    gains a "validators" section with every validator's status and log tail.

    Register it with ``config.pluginmanager.register(plugin)`` for as long as the cluster
    lives (pytest is imported here only, so the harness itself does not need it).
    """
    import pytest

    class FailureReport:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(self, item: pytest.Item,
                                      call: pytest.CallInfo[None]) -> Iterator[None]:
            outcome = yield
            report = outcome.get_result()  # type: ignore[attr-defined]
            if not report.failed or fixture not in getattr(item, "fixturenames", ()):
                return
            if call.excinfo is not None and LOG_TAIL_MARK in str(call.excinfo.value):
                return  # a timed-out wait already reported the logs
            report.sections.append(("validators", cluster.describe(logs=True)))

    return FailureReport()
