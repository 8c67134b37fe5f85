"""Data availability: no vote for, and no execution of, a block whose blobs are missing.

Four real ReplicaHosts over real LevelDB ledgers, on an in-process network with virtual
time, run a small application whose transactions refer to blobs by digest.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

from flobc.config import ConsensusParams
from flobc.consensus.application import Application, BlockState, CommittedState
from flobc.consensus.chunks import chunks_of
from flobc.consensus.host import ReplicaHost
from flobc.consensus.messages import (
    CHUNK_BYTES,
    MAX_FRAME,
    BlobChunk,
    BlobData,
    FetchBlobs,
    Message,
    Prepare,
    Transactions,
    decode_message,
    encode_message,
)
from flobc.crypto import PrivateKey, sha256
from flobc.storage.ledger import Ledger

CHAIN = "availability-test"
KEYS = [PrivateKey(sha256(b"availability %d" % i)) for i in range(4)]
PARAMS = ConsensusParams(checkpoint_interval=4, window=16, batch_delay_ms=5,
                         view_change_timeout_ms=400, empty_block_interval_ms=10_000)
T0 = 1_700_000_000_000


class BlobRefApp:
    """A transaction is ``b"ref" + digest``: it needs that blob, and records it."""

    max_blob_bytes = 16 * 1024 * 1024

    def required_blobs(self, tx: bytes) -> list[bytes]:
        return [tx[3:]]

    def check_tx(self, tx: bytes, state: CommittedState) -> str | None:
        return None if tx.startswith(b"ref") and len(tx) == 35 else "not a ref"

    def execute_block(self, height: int, time_ms: int, txs: Sequence[bytes],
                      state: BlockState) -> list[str | None]:
        for tx in txs:
            assert state.blob(tx[3:]) is not None, "executed without its blob"
            state.put(b"ref/" + tx[3:], b"1")
        return [None] * len(txs)

    def query(self, path: str, params: dict[str, str], state: CommittedState) -> None:
        return None


Drop = Callable[[int, int, Message], bool]


class Net:
    """Delivers frames after 1 ms of virtual time unless ``drop(src, dst, msg)`` says no."""

    def __init__(self, tmp: Path, app: Callable[[], Application] = BlobRefApp) -> None:
        self.app = app
        self.now = T0
        self.queue: list = []
        self.counter = itertools.count()
        self.timers: dict[tuple[int, str], int] = {}
        self.drop: Drop = lambda src, dst, msg: False
        self.log: list[tuple[int, int, Message]] = []
        self.hosts = [self._host(i, tmp) for i in range(4)]
        for host in self.hosts:
            host.start()

    def _host(self, i: int, tmp: Path) -> ReplicaHost:
        def send(to: int | None, frame: bytes) -> None:
            for j in range(4) if to is None else [to]:
                if j != i:
                    self._at(self.now + 1, self._deliver, i, j, frame)

        def set_timer(name: str, delay: int) -> None:
            token = next(self.counter)
            self.timers[(i, name)] = token
            self._at(self.now + delay, self._fire, i, name, token)

        return ReplicaHost(chain_id=CHAIN, public_keys=tuple(k.public_key for k in KEYS),
                           index=i, key=KEYS[i], params=PARAMS,
                           ledger=Ledger(tmp / f"v{i}"), app=self.app(), send=send,
                           set_timer=set_timer,
                           cancel_timer=lambda name: self.timers.pop((i, name), None),
                           now_ms=lambda: self.now)

    def _at(self, when: int, action: Callable, *args: object) -> None:
        heapq.heappush(self.queue, (when, next(self.counter), action, args))

    def _deliver(self, src: int, dst: int, frame: bytes) -> None:
        assert len(frame) <= MAX_FRAME, f"a {len(frame)}-byte frame is over the frame limit"
        msg = decode_message(frame)
        if not self.drop(src, dst, msg):
            self.log.append((src, dst, msg))
            self.hosts[dst].on_frame(src, frame)

    def _fire(self, i: int, name: str, token: int) -> None:
        if self.timers.get((i, name)) == token:
            del self.timers[(i, name)]
            self.hosts[i].on_timer(name)

    def run_until(self, done: Callable[[], bool], limit_ms: int = 30_000) -> None:
        deadline = self.now + limit_ms
        while not done():
            assert self.queue and self.now < deadline, "the network went quiet first"
            self.now, _, action, args = heapq.heappop(self.queue)
            action(*args)

    def sent(self, kind: type, src: int | None = None, dst: int | None = None) -> list[int]:
        """Positions in the delivery log of ``kind`` messages from ``src`` to ``dst``."""
        return [n for n, (s, d, m) in enumerate(self.log) if isinstance(m, kind)
                and (src is None or s == src) and (dst is None or d == dst)]


def ref_tx(blob: bytes) -> bytes:
    return b"ref" + sha256(blob)


def committed_everywhere(net: Net, blob: bytes) -> Callable[[], bool]:
    key = b"ref/" + sha256(blob)
    return lambda: all(h.ledger.state.get(key) == b"1" for h in net.hosts)


def test_a_transaction_without_its_blob_is_refused(tmp_path: Path) -> None:
    net = Net(tmp_path)
    [(_, reason)] = net.hosts[0].submit_txs([ref_tx(b"absent")])
    assert reason is not None and "missing" in reason
    assert len(net.hosts[0].replica.mempool) == 0


def test_blobs_travel_with_gossiped_transactions(tmp_path: Path) -> None:
    net = Net(tmp_path)
    blob = b"tensor bytes" * 100
    [(_, reason)] = net.hosts[1].submit_txs([ref_tx(blob)], [blob])
    assert reason is None
    net.run_until(committed_everywhere(net, blob))
    assert all(h.ledger.blob(sha256(blob)) == blob for h in net.hosts)
    assert net.sent(FetchBlobs) == [], "gossip carried the blob; nobody had to ask"


def test_a_backup_missing_a_blob_fetches_it_before_it_prepares(tmp_path: Path) -> None:
    net = Net(tmp_path)
    blob = b"only the primary has this" * 50
    net.drop = lambda src, dst, msg: isinstance(msg, Transactions)
    net.hosts[0].submit_txs([ref_tx(blob)], [blob])
    net.run_until(committed_everywhere(net, blob))
    for backup in (1, 2, 3):
        [answer, *_] = net.sent(BlobData, dst=backup)
        [prepare] = net.sent(Prepare, src=backup, dst=0)
        assert net.sent(FetchBlobs, src=backup)[0] < answer < prepare
        assert net.hosts[backup].ledger.blob(sha256(blob)) == blob


def test_a_validator_executes_only_once_it_has_the_blobs(tmp_path: Path) -> None:
    net = Net(tmp_path)
    blob = b"withheld from validator 3" * 40
    withhold = [True]
    net.drop = lambda src, dst, msg: dst == 3 and (
        isinstance(msg, Transactions) or (isinstance(msg, BlobData) and withhold[0]))
    net.hosts[0].submit_txs([ref_tx(blob)], [blob])
    key = b"ref/" + sha256(blob)
    net.run_until(lambda: all(net.hosts[i].ledger.state.get(key) for i in (0, 1, 2)))
    lagging = net.hosts[3]
    # It learns of block 1 by state transfer, with its certificate, but holds it back.
    net.run_until(lambda: len(lagging.availability.executions) > 0)
    assert lagging.ledger.height == 0, "no block executes without its blobs"
    assert lagging.ledger.state.get(key) is None
    withhold[0] = False
    net.run_until(committed_everywhere(net, blob))
    assert lagging.ledger.blob(sha256(blob)) == blob
    assert lagging.ledger.meta(1).state_root == net.hosts[0].ledger.meta(1).state_root


BIG = bytes(range(256)) * (40 * 1024 + 17)
"""About 10 MB: more than a frame holds."""


def test_a_blob_bigger_than_a_frame_follows_its_transaction_in_chunks(tmp_path: Path) -> None:
    net = Net(tmp_path)
    assert len(BIG) > MAX_FRAME
    [(_, reason)] = net.hosts[1].submit_txs([ref_tx(BIG)], [BIG])
    assert reason is None
    net.run_until(committed_everywhere(net, BIG))
    assert all(h.ledger.blob(sha256(BIG)) == BIG for h in net.hosts)
    for peer in (0, 2, 3):
        [gossip] = net.sent(Transactions, src=1, dst=peer)
        chunks = net.sent(BlobChunk, src=1, dst=peer)
        assert len(chunks) == -(-len(BIG) // CHUNK_BYTES) and gossip < chunks[0]
    assert net.sent(FetchBlobs) == [], "every validator held the transaction for its chunks"
    assert all(h.availability.assembler.held_bytes() == 0 for h in net.hosts)


def test_a_backup_missing_a_big_blob_fetches_it_in_chunks(tmp_path: Path) -> None:
    net = Net(tmp_path)
    net.drop = lambda src, dst, msg: isinstance(msg, Transactions)
    net.hosts[0].submit_txs([ref_tx(BIG)], [BIG])
    net.run_until(committed_everywhere(net, BIG))
    for backup in (1, 2, 3):
        [fetch] = net.sent(FetchBlobs, src=backup, dst=0)
        [prepare] = net.sent(Prepare, src=backup, dst=0)
        answer = [n for n in net.sent(BlobChunk, src=0, dst=backup) if n > fetch]
        assert fetch < answer[-1] < prepare
        assert net.hosts[backup].ledger.blob(sha256(BIG)) == BIG


def test_chunks_of_a_blob_nobody_needs_are_not_kept(tmp_path: Path) -> None:
    net = Net(tmp_path)
    host = net.hosts[0]
    for chunk in list(chunks_of(BIG, 1))[:-1]:
        host.on_frame(1, encode_message(chunk))
    assert host.availability.assembler.held_bytes() == 0
    host.on_frame(1, encode_message(Transactions((ref_tx(BIG),), (), 1)))
    assert sha256(ref_tx(BIG)) in host.availability.txs, "the transaction waits for its blob"
    for chunk in chunks_of(BIG, 1):
        host.on_frame(1, encode_message(chunk))
    assert host.ledger.blob(sha256(BIG)) == BIG
    assert sha256(ref_tx(BIG)) in host.replica.mempool


def test_a_lost_chunk_is_fetched_again(tmp_path: Path) -> None:
    net = Net(tmp_path)
    lost = [True]

    def drop(src: int, dst: int, msg: Message) -> bool:
        if dst == 3 and isinstance(msg, BlobChunk) and msg.offset == CHUNK_BYTES and lost[0]:
            lost[0] = False
            return True
        return False

    net.drop = drop
    net.hosts[1].submit_txs([ref_tx(BIG)], [BIG])
    net.run_until(committed_everywhere(net, BIG))
    assert net.sent(FetchBlobs, src=3) and not net.sent(FetchBlobs, src=0)
    assert all(h.availability.assembler.held_bytes() == 0 for h in net.hosts)
