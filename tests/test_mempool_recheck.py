"""A transaction that committed state has made invalid leaves the mempool.

Validator 3 admits a claim whose gossip is lost; another claim of the same name
commits through validator 0, so validator 3's copy can never execute and every peer
refuses it when validator 3 re-sends it. Four real ReplicaHosts over real LevelDB
ledgers on the in-process network of ``test_availability``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from test_availability import Net

from flobc.consensus.application import BlockState, CommittedState
from flobc.consensus.messages import Transactions


class ClaimApp:
    """A transaction is ``b"claim" + name + nonce``: the first claim of a name wins."""

    max_blob_bytes = 0

    def required_blobs(self, tx: bytes) -> list[bytes]:
        return []

    def check_tx(self, tx: bytes, state: CommittedState) -> str | None:
        if not (tx.startswith(b"claim") and len(tx) == 7):
            return "not a claim"
        return "name already claimed" if state.get(b"name/" + tx[5:6]) else None

    def execute_block(self, height: int, time_ms: int, txs: Sequence[bytes],
                      state: BlockState) -> list[str | None]:
        results: list[str | None] = []
        for tx in txs:
            results.append(self.check_tx(tx, state))
            if results[-1] is None:
                state.put(b"name/" + tx[5:6], tx[6:])
        return results

    def query(self, path: str, params: dict[str, str], state: CommittedState) -> None:
        return None


def test_a_transaction_made_invalid_by_a_commit_is_dropped(tmp_path: Path) -> None:
    net = Net(tmp_path, ClaimApp)
    lost = True
    net.drop = lambda src, dst, msg: lost and src == 3 and isinstance(msg, Transactions)
    late, early = b"claim" + b"x" + b"\x01", b"claim" + b"x" + b"\x02"
    assert net.hosts[3].submit_tx(late)[1] is None
    assert net.hosts[0].submit_tx(early)[1] is None
    net.run_until(lambda: all(h.ledger.state.get(b"name/x") == b"\x02" for h in net.hosts))
    assert len(net.hosts[3].replica.mempool) == 1  # it was admitted before the commit
    lost = False  # its re-sends now reach the peers, which refuse it
    net.run_until(lambda: len(net.hosts[3].replica.mempool) == 0)
    assert all(len(h.replica.mempool) == 0 for h in net.hosts)
    assert all(h.ledger.state.get(b"name/x") == b"\x02" for h in net.hosts)
