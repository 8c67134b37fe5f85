"""``flobc demo``: a local testnet of validator processes under signed transaction load.

It shows the replicated ledger working end to end: real processes on loopback, real
signed transactions, a live line per second, and at the end a check that every
validator holds the same certified block. The validators (a :class:`LocalNet`) run in
their own session so that Ctrl-C reaches only the demo, which then stops them itself:
SIGTERM first, SIGKILL for any that outlive the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from flobc import codec
from flobc.config import Genesis
from flobc.consensus.kvstore import make_tx
from flobc.consensus.light import verify_block
from flobc.crypto import PrivateKey
from flobc.errors import LaunchError
from flobc.launch.localnet import LocalNet

TICK_S = 0.05
MAX_BATCH_TXS = 2000
MAX_BATCHES_IN_FLIGHT = 8
"""Batches submitted but not yet answered; beyond this the load generator waits."""
CLIENTS = 8
KEYS_WRITTEN = 1000


def run_demo(*, validators: int, seconds: float, rate: float, keep: bool) -> int:
    """Run the demo; 0 when transactions were committed and all validators agree."""
    workdir = Path(tempfile.mkdtemp(prefix="flobc-demo-"))
    net: LocalNet | None = None
    try:
        with _sigterm_interrupts():
            net = LocalNet(workdir / "testnet", validators, chain_id="flobc-demo")
            for i, url in enumerate(net.urls):
                net.start(i)
                print(f"started validator {i} (pid {net.procs[i].pid}), API {url}", flush=True)
            net.wait_serving()
            print(f"all {validators} validators serving", flush=True)
            return asyncio.run(_drive(net.genesis, net.urls, seconds, rate))
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    finally:
        if net is not None:
            _stop(net)
        if keep:
            print(f"testnet and validator logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so that a terminated demo still stops its validators."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(net: LocalNet) -> None:
    """Stop the validators, deaf to a second Ctrl-C so that none is left running."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                    signal.SIGTERM)}
    try:
        net.stop_all()
        print(f"stopped {len(net.procs)} validators", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Load:
    """Submits signed key-value transactions at a steady rate, in batches, round-robin
    over the validators (a batch per tick costs the validators far less than a request
    per transaction)."""

    def __init__(self, client: httpx.AsyncClient, urls: list[str], rate: float) -> None:
        self.client = client
        self.urls = urls
        self.rate = rate
        self.keys = [PrivateKey.generate() for _ in range(CLIENTS)]
        self.accepted = 0
        self.refused = 0
        self.unreachable = 0
        self.last_refusal = ""

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT)
        pending: set[asyncio.Task] = set()
        start = loop.time()
        sent = 0
        for batch_number in itertools.count():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=TICK_S)
            if stop.is_set():
                break
            due = int((loop.time() - start) * self.rate)
            sent = max(sent, due - int(self.rate))  # more than a second behind: skip ahead
            count = min(due - sent, MAX_BATCH_TXS)
            if count <= 0:
                continue
            await slots.acquire()
            txs = [self._tx(nonce) for nonce in range(sent, sent + count)]
            task = asyncio.create_task(
                self._send(self.urls[batch_number % len(self.urls)], txs, slots))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += count
        await asyncio.gather(*pending)

    def _tx(self, nonce: int) -> bytes:
        key = self.keys[nonce % len(self.keys)]
        return make_tx(key, nonce, f"demo-{nonce % KEYS_WRITTEN}".encode(), str(nonce).encode())

    async def _send(self, url: str, txs: list[bytes], slots: asyncio.Semaphore) -> None:
        try:
            response = await self.client.post(
                f"{url}/txs/batch", content=codec.pack(txs),
                headers={"content-type": "application/octet-stream"})
            answer = response.json() if response.status_code == 200 else None
        except (httpx.TransportError, ValueError):
            self.unreachable += len(txs)
            return
        finally:
            slots.release()
        if answer is None:
            self.refused += len(txs)
            self.last_refusal = f"HTTP {response.status_code}: {response.text[:200]}"
            return
        self.accepted += answer["accepted"]
        self.refused += len(txs) - answer["accepted"]
        errors = [r["error"] for r in answer["results"] if r["error"]]
        if errors:
            self.last_refusal = errors[-1]


async def _get_json(client: httpx.AsyncClient, url: str) -> Any:
    response = await client.get(url)
    response.raise_for_status()
    return response.json()


async def _drive(genesis: Genesis, urls: list[str], seconds: float, rate: float) -> int:
    """Drive load while printing a line per second; then check the validators agree."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    limits = httpx.Limits(max_connections=MAX_BATCHES_IN_FLIGHT + 8)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:
        load = _Load(client, urls, rate)
        sender = asyncio.create_task(load.run(stop))
        try:
            committed = await _watch(client, urls[0], seconds, stop, load)
        except (httpx.HTTPError, ValueError) as exc:
            raise LaunchError(f"validator 0 stopped answering: {exc or type(exc).__name__}"
                           ) from exc
        finally:
            stop.set()
            await sender
        print(f"submitted {load.accepted} txs ({load.refused} refused, "
              f"{load.unreachable} unreachable); committed {committed}")
        if load.last_refusal:
            print(f"last refusal: {load.last_refusal}")
        return await _check_agreement(client, genesis, urls)


async def _watch(client: httpx.AsyncClient, url: str, seconds: float, stop: asyncio.Event,
                 load: _Load) -> int:
    """Print height, committed tx/s and view each second; return the txs committed."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    status = await _get_json(client, f"{url}/status")
    height, then, committed = status["height"], loop.time(), 0
    for tick in itertools.count(1):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, start + tick - loop.time()))
        if stop.is_set():
            break
        try:
            status = await _get_json(client, f"{url}/status")
            blocks = await asyncio.gather(*(_get_json(client, f"{url}/blocks/{h}")
                                            for h in range(height + 1, status["height"] + 1)))
        except (httpx.HTTPError, ValueError) as exc:
            print(f"validator 0 not answering: {exc or type(exc).__name__}", flush=True)
            continue
        now = loop.time()
        txs = sum(b["tx_count"] for b in blocks)
        committed += txs
        print(f"height={status['height']} tx/s={txs / (now - then):.0f} view={status['view']} "
              f"primary={status['primary']} mempool={status['mempool_size']} "
              f"submitted={load.accepted}", flush=True)
        height, then = status["height"], now
        if now - start >= seconds:
            break
    return committed


async def _check_agreement(client: httpx.AsyncClient, genesis: Genesis,
                           urls: list[str]) -> int:
    """Every validator must hold the same block at the lowest common height, certified."""
    try:
        heights = [(await _get_json(client, f"{u}/status"))["height"] for u in urls]
        height = min(heights)
        if height == 0:
            print("no block was committed")
            return 1
        served = [await _get_json(client, f"{u}/blocks/{height}") for u in urls]
    except (httpx.HTTPError, ValueError) as exc:
        print(f"could not compare validators: {exc or type(exc).__name__}")
        return 1
    hashes = set()
    for i, b in enumerate(served):
        try:
            block = verify_block(genesis, bytes.fromhex(b["block"]),
                                 bytes.fromhex(b["certificate"]), height=height)
        except ValueError as exc:  # not hex, or VerificationError
            print(f"block {height} from validator {i} does not verify: {exc}")
            return 1
        hashes.add(block.digest().hex())
    if len(hashes) != 1:
        print(f"validators disagree at height {height}: {sorted(hashes)}")
        return 1
    print(f"all {len(urls)} validators hold block {height} ({hashes.pop()}) with a commit "
          f"certificate that verifies against the genesis keys (heights: {heights})")
    return 0
