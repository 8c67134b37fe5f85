"""Committed transactions per second and submit-to-commit latency of a local testnet.

Starts N validator processes on loopback, drives small signed key-value transactions at
them open-loop (a batch every tick, round-robin over the validators, whatever the
answers), watches validator 0's chain and prints one JSON object.

    python benchmarks/consensus_throughput.py [--validators 4] [--rate 2000] [--seconds 15]

Latency runs from just before a transaction's batch is posted to when the watcher sees
its block on validator 0; the watcher polls every POLL_S, so latencies carry up to that
much extra. Throughput counts transactions committed during the measurement window
(after the warm-up), divided by the window's length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from flobc import codec
from flobc.config import ConsensusParams
from flobc.consensus.kvstore import make_tx
from flobc.consensus.messages import Block
from flobc.crypto import PrivateKey, sha256
from flobc.launch.localnet import LocalNet

TICK_S = 0.02
POLL_S = 0.01
CLIENT_KEYS = 16


def make_load(count: int) -> list[bytes]:
    """Pre-signed transactions, so signing does not compete with the validators."""
    keys = [PrivateKey.generate() for _ in range(CLIENT_KEYS)]
    return [make_tx(keys[i % CLIENT_KEYS], i, b"bench-%d" % (i % 10_000), b"%d" % i)
            for i in range(count)]


async def submit(client: httpx.AsyncClient, urls: list[str], txs: list[bytes], rate: float,
                 sent_at: dict[bytes, float], refused: list[int]) -> None:
    """Post batches on a fixed schedule without waiting for answers (open loop)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: set[asyncio.Task] = set()
    sent = tick = 0
    while sent < len(txs):
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * TICK_S - loop.time()))
        due = min(len(txs), int((loop.time() - start) * rate))
        batch = txs[sent:due]
        if not batch:
            continue
        now = time.monotonic()
        for tx in batch:
            sent_at[sha256(tx)] = now
        task = asyncio.create_task(post(client, urls[tick % len(urls)], batch, refused))
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent = due
    await asyncio.gather(*pending)


async def post(client: httpx.AsyncClient, url: str, batch: list[bytes],
               refused: list[int]) -> None:
    response = await client.post(f"{url}/txs/batch", content=codec.pack(batch),
                                 headers={"content-type": "application/octet-stream"})
    answer = response.json()
    refused[0] += len(batch) - answer.get("accepted", 0)


async def watch(client: httpx.AsyncClient, url: str, committed_at: dict[bytes, float],
                blocks: list[int], stop: asyncio.Event) -> None:
    """Record when each transaction's block appears on validator ``url``."""
    height = (await client.get(f"{url}/status")).json()["height"]
    while not stop.is_set():
        top = (await client.get(f"{url}/status")).json()["height"]
        for h in range(height + 1, top + 1):
            raw = (await client.get(f"{url}/blocks/{h}")).json()
            now = time.monotonic()
            block = Block.decode(bytes.fromhex(raw["block"]))
            blocks.append(len(block.txs))
            for tx in block.txs:
                committed_at.setdefault(sha256(tx), now)
        height = top
        await asyncio.sleep(POLL_S)


async def settled_status(client: httpx.AsyncClient, urls: list[str],
                         deadline: float) -> list[dict]:
    """Every validator's status once they stand at one height (or at the deadline)."""
    while True:
        status = [(await client.get(f"{u}/status")).json() for u in urls]
        if len({s["height"] for s in status}) == 1 or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


async def drive(net: LocalNet, rate: float, seconds: float, warmup: float,
                drain: float) -> dict:
    txs = make_load(int(rate * (seconds + warmup)))
    sent_at: dict[bytes, float] = {}
    committed_at: dict[bytes, float] = {}
    blocks: list[int] = []
    refused = [0]
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        watcher = asyncio.create_task(watch(client, net.urls[0], committed_at, blocks, stop))
        began = time.monotonic()
        await submit(client, net.urls, txs, rate, sent_at, refused)
        deadline = time.monotonic() + drain
        while len(committed_at) < len(sent_at) - refused[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await watcher
        status = await settled_status(client, net.urls, deadline=time.monotonic() + drain)
    window_start, window_end = began + warmup, began + warmup + seconds
    in_window = sum(1 for t in committed_at.values() if window_start <= t < window_end)
    latencies = sorted((committed_at[h] - sent_at[h]) * 1000 for h in committed_at
                       if h in sent_at and sent_at[h] >= window_start)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {
        "validators": len(net.urls),
        "offered_tx_per_s": rate,
        "seconds": seconds,
        "submitted": len(sent_at),
        "refused": refused[0],
        "committed": len(committed_at),
        "committed_tx_per_s": round(in_window / seconds, 1),
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
        "blocks": len(blocks),
        "mean_txs_per_block": round(statistics.fmean(blocks), 1) if blocks else 0,
        "final_heights": [s["height"] for s in status],
        "same_state_root": len({(s["height"], s["state_root"]) for s in status}) == 1,
        "view_changes": max(s["view"] for s in status),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--rate", type=float, default=2000, help="offered tx/s")
    parser.add_argument("--seconds", type=float, default=15, help="measurement window")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--drain", type=float, default=15,
                        help="how long to wait for the last transactions to commit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flobc-bench-") as tmp, \
            LocalNet(Path(tmp) / "net", args.validators, params=ConsensusParams(),
                     chain_id="flobc-bench") as net:
        net.start_all()
        result = asyncio.run(drive(net, args.rate, args.seconds, args.warmup, args.drain))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
