"""The sans-IO replica on its own: messages and timers in, effects out, no I/O at all."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

import pytest

from flobc.config import ConsensusParams
from flobc.consensus.effects import Effect, Execute, Persist, Send, StableCheckpoint
from flobc.consensus.messages import (
    Block,
    Blocks,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    FetchBlocks,
    Message,
    NewView,
    Prepare,
    PrePrepare,
    Proposal,
    Status,
    ViewChange,
)
from flobc.consensus.replica import BATCH, IDLE, PROGRESS, RESEND, Recovery, Replica
from flobc.consensus.validators import ValidatorSet
from flobc.crypto import PrivateKey, sha256

CHAIN = "replica-test"
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
VS = ValidatorSet(CHAIN, [k.public_key for k in KEYS])
PARAMS = ConsensusParams(checkpoint_interval=4, window=16, max_clock_skew_ms=1000)
T0 = 1_700_000_000_000


def replica(index: int, records: dict[bytes, bytes] | None = None) -> Replica:
    r = Replica(VS, index, KEYS[index], PARAMS)
    r.start(T0, Recovery(records=records or {}))
    return r


def proposal(seq: int, time_ms: int, txs: tuple[bytes, ...] = (b"tx",), view: int = 0,
             signer: int = 0) -> Proposal:
    block = Block(seq, time_ms, signer, txs)
    pp = PrePrepare(view, seq, block.digest(), signer).signed(KEYS[signer], CHAIN)
    return Proposal(pp, block)  # type: ignore[arg-type]


def sent(effects: list[Effect], kind: type) -> list[Message]:
    return [e.message for e in effects if isinstance(e, Send) and isinstance(e.message, kind)]


def persisted(effects: list[Effect]) -> dict[bytes, bytes]:
    return {k: v for e in effects if isinstance(e, Persist) for k, v in e.puts}


def hear_from(r: Replica, peers: tuple[int, ...], height: int = 0) -> list[Effect]:
    """Deliver each peer's heartbeat, as the periodic resend does."""
    return [e for p in peers for e in r.on_message(T0, Status(height, r.view, False, p))]


def test_backup_persists_its_prepare_before_sending_it() -> None:
    effects = replica(1).on_message(T0, proposal(1, T0))
    kinds = [type(e) for e in effects]
    assert Persist in kinds
    [prepare] = sent(effects, Prepare)
    send_at = next(i for i, e in enumerate(effects) if isinstance(e, Send))
    assert kinds.index(Persist) < send_at
    assert VS.verify(prepare) and prepare.seq == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("skew", [PARAMS.max_clock_skew_ms + 1, -PARAMS.max_clock_skew_ms - 1])
def test_backup_refuses_a_block_time_far_from_its_clock(skew: int) -> None:
    assert sent(replica(1).on_message(T0, proposal(1, T0 + skew)), Prepare) == []


def test_backup_refuses_a_block_time_that_goes_backwards() -> None:
    r = replica(1)
    assert sent(r.on_message(T0, proposal(1, T0)), Prepare)
    assert sent(r.on_message(T0, proposal(2, T0 - 1, (b"tx2",))), Prepare) == []
    assert sent(r.on_message(T0, proposal(2, T0, (b"tx2",))), Prepare)


def test_backup_refuses_a_proposal_from_a_non_primary_or_badly_signed() -> None:
    r = replica(1)
    assert sent(r.on_message(T0, proposal(1, T0, signer=2)), Prepare) == []
    good = proposal(1, T0)
    forged = Proposal(PrePrepare(0, 1, good.pre_prepare.digest, 0, b"\x00" * 64), good.block)
    assert sent(r.on_message(T0, forged), Prepare) == []
    other = proposal(1, T0, (b"other",))
    mismatched = Proposal(other.pre_prepare, good.block)
    assert sent(r.on_message(T0, mismatched), Prepare) == []


def test_proposals_outside_the_watermark_window_are_ignored() -> None:
    r = replica(1)
    assert sent(r.on_message(T0, proposal(PARAMS.window + 1, T0)), Prepare) == []
    assert sent(r.on_message(T0, proposal(PARAMS.window, T0)), Prepare)


def test_an_equivocating_primary_is_voted_out() -> None:
    r = replica(1)
    r.on_message(T0, proposal(1, T0))
    effects = r.on_message(T0, proposal(1, T0, (b"something else",)))
    [vc] = sent(effects, ViewChange)
    assert vc.view == 1 and VS.verify(vc)  # type: ignore[attr-defined]
    assert sent(effects, Prepare) == []
    # Its prepared-nothing view change is persisted before it is sent.
    assert b"vc" in persisted(effects)


def test_a_restarted_backup_never_prepares_a_conflicting_block() -> None:
    first = replica(1)
    records = persisted(first.on_message(T0, proposal(1, T0)))
    assert sent(first.on_message(T0, proposal(1, T0)), Prepare) == [], "no second answer"

    restarted = replica(1, records)
    effects = restarted.on_message(T0, proposal(1, T0, (b"conflicting",)))
    assert sent(effects, Prepare) == [], "it must remember what it prepared"
    assert sent(effects, ViewChange), "and treat the conflicting proposal as equivocation"


def test_a_restarted_backup_resends_byte_identical_votes() -> None:
    first = replica(1)
    effects = first.on_message(T0, proposal(1, T0))
    [original] = sent(effects, Prepare)
    restarted = replica(1, persisted(effects))
    [resent] = sent(restarted.on_timer(T0, RESEND), Prepare)
    assert resent == original


def test_prepares_with_bad_signatures_do_not_count() -> None:
    r = replica(1)
    prop = proposal(1, T0)
    r.on_message(T0, prop)
    digest = prop.pre_prepare.digest
    bad = Prepare(0, 1, digest, 2, b"\x01" * 64)
    assert sent(r.on_message(T0, bad), Commit) == []
    good = Prepare(0, 1, digest, 2).signed(KEYS[2], CHAIN)
    assert sent(r.on_message(T0, good), Commit), "2f prepares from backups prepare it"


class Router:
    """Delivers every Send at once to the replicas that are up; collects Executes."""

    def __init__(self, replicas: dict[int, Replica]) -> None:
        self.replicas = replicas
        self.executed: dict[int, list[Execute]] = {i: [] for i in replicas}

    def run(self, source: int, effects: list[Effect]) -> None:
        queue = deque((source, e) for e in effects)
        while queue:
            frm, effect = queue.popleft()
            if isinstance(effect, Execute):
                self.executed[frm].append(effect)
                block = effect.block
                root = sha256(block.digest())
                queue.extend((frm, e) for e in self.replicas[frm].on_executed(
                    T0, block.height, root, block.time_ms))
            elif isinstance(effect, Send):
                targets = [effect.to] if effect.to is not None else [
                    i for i in self.replicas if i != frm]
                for i in targets:
                    if i in self.replicas:
                        queue.extend((i, e) for e in self.replicas[i].on_message(
                            T0, effect.message))


def test_a_quorum_commits_with_a_verifiable_certificate_and_one_crash_is_tolerated() -> None:
    replicas = {i: replica(i) for i in (0, 1, 2)}  # validator 3 is down
    router = Router(replicas)
    txs = [(sha256(b"tx%d" % i), b"tx%d" % i) for i in range(3)]
    _, effects = replicas[0].add_txs(T0, txs)
    router.run(0, effects)
    router.run(0, replicas[0].on_timer(T0, BATCH))
    for i in replicas:
        [execute] = router.executed[i]
        assert execute.block.txs == tuple(tx for _, tx in txs)
        assert VS.commit_certificate_error(execute.certificate, execute.block) is None
        assert len(replicas[i].mempool) == 0


def test_a_new_primary_does_not_propose_again_what_its_new_view_re_proposes() -> None:
    """Block 1 (holding tx) is prepared in view 0 but not committed when the view
    changes; replica 1, the new primary, also holds tx in its mempool. Proposing it
    again at height 2 made it commit twice and rewrote its lookup."""
    tx = b"tx re-proposed by a new view"
    prop = proposal(1, T0, (tx,))
    prepares = {i: Prepare(0, 1, prop.pre_prepare.digest, i).signed(KEYS[i], CHAIN)
                for i in (1, 2, 3)}
    replicas = {i: replica(i) for i in (1, 2, 3)}
    replicas[1].add_txs(T0, [(sha256(tx), tx)])
    for i, r in replicas.items():
        r.on_message(T0, prop)
        for j, p in prepares.items():
            if j != i:
                r.on_message(T0, p)
        assert 1 in r.prepared
    for i, r in replicas.items():
        hear_from(r, tuple(j for j in range(4) if j != i))
    view_changes = [vc for i in (2, 3) for vc in sent(replicas[i].on_timer(T0, PROGRESS),
                                                      ViewChange)]
    new_primary = replicas[1]
    effects = new_primary.on_timer(T0, PROGRESS)
    for vc in view_changes:
        effects += new_primary.on_message(T0, vc)
    [nv] = sent(effects, NewView)
    assert [p.block.txs for p in nv.proposals] == [(tx,)]  # type: ignore[attr-defined]
    assert new_primary.view == 1 and len(new_primary.mempool) == 1
    effects += new_primary.on_timer(T0, BATCH)
    effects += new_primary.on_timer(T0 + PARAMS.empty_block_interval_ms, IDLE)
    again = [p for p in sent(effects, Proposal) if tx in p.block.txs]  # type: ignore
    assert [p.block.height for p in again] == [], "tx proposed again"  # type: ignore


def test_a_replica_behind_or_cut_off_does_not_start_a_view_change_on_its_own() -> None:
    """Pending requests show a stalling primary only to a replica that is up to date and
    hears from f+1 peers; otherwise a view change would be its alone."""
    r = replica(1)
    r.add_txs(T0, [(sha256(b"tx"), b"tx")])
    assert sent(r.on_timer(T0, PROGRESS), ViewChange) == [], "it heard from no peer"
    hear_from(r, (2, 3), height=5)
    assert sent(r.on_timer(T0, PROGRESS), ViewChange) == [], "f+1 peers are ahead of it"
    assert r.status()["view_changes"] == 0

    up_to_date = replica(1)
    up_to_date.add_txs(T0, [(sha256(b"tx"), b"tx")])
    hear_from(up_to_date, (2, 3))
    [vc] = sent(up_to_date.on_timer(T0, PROGRESS), ViewChange)
    assert vc.view == 1  # type: ignore[attr-defined]


FAR = 3 * PARAMS.window
"""A checkpoint beyond the two windows of votes a replica at stable checkpoint 0 keeps."""


def checkpoint(seq: int, root: bytes, signer: int) -> Checkpoint:
    return Checkpoint(seq, root, signer).signed(KEYS[signer], CHAIN)  # type: ignore[return-value]


def test_checkpoint_votes_beyond_the_windows_make_a_lagging_replica_stable() -> None:
    r = replica(1)
    root = sha256(b"the state at FAR")
    r.on_message(T0, checkpoint(FAR, root, 0))
    r.on_message(T0, checkpoint(FAR, sha256(b"another root"), 2))
    r.on_message(T0, replace(checkpoint(FAR, root, 3), signature=b"\x01" * 64))
    assert r.stable_seq == 0, "one vote, a disagreeing one and a forged one are no proof"
    later = FAR + PARAMS.checkpoint_interval
    r.on_message(T0, checkpoint(later, root, 0))
    r.on_message(T0, checkpoint(later, root, 2))
    effects = r.on_message(T0, checkpoint(later, root, 3))
    assert r.stable_seq == later
    [stable] = [e for e in effects if isinstance(e, StableCheckpoint)]
    cert = CheckpointCertificate.decode(stable.certificate_bytes)
    assert (cert.seq, cert.state_root) == (later, root)
    assert VS.checkpoint_certificate_error(cert) is None


def test_state_transfer_carries_the_stable_checkpoint_certificate() -> None:
    root = sha256(b"the state at FAR")
    cert = CheckpointCertificate(FAR, root, tuple(
        (i, checkpoint(FAR, root, i).signature) for i in (0, 2, 3)))
    forged = replace(cert, signatures=((0, b"\x01" * 64), *cert.signatures[1:]))
    r = replica(1)
    r.on_message(T0, Blocks((), FAR, (forged,), 2))
    assert r.stable_seq == 0
    effects = r.on_message(T0, Blocks((), FAR, (cert,), 2))
    assert r.stable_seq == FAR and r.stable_cert == cert
    assert [e for e in effects if isinstance(e, StableCheckpoint)]
    assert [m.first for m in sent(effects, FetchBlocks)] == [1]  # type: ignore[attr-defined]
