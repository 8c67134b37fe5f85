"""PBFT under the deterministic simulator: thousands of seeded schedules, then scenarios.

Every replica is the production ReplicaHost over a real LevelDB ledger. Random schedules
run in chunks, so a failure names its chunk and prints one replay line per failing
seed; each chunk must also show, in aggregate, that view changes, re-proposed prepared
blocks, stable checkpoints, state transfers and crashes holding prepared blocks really
happened. The scenarios then pin down the cases the random runs only hit by chance,
and show that each invariant check can fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from flobc.consensus.byzantine import BEHAVIOURS
from flobc.consensus.invariants import SignatureLog, checkpoint_violations, ledger_violations
from flobc.consensus.messages import (
    Block,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    CommitCertificate,
    Prepare,
)
from flobc.consensus.simulator import (
    CHAIN_ID,
    PARAMS,
    Crash,
    Partition,
    Report,
    Schedule,
    Simulation,
    Stats,
    main,
    random_schedule,
    simulate,
    validator_key,
)
from flobc.consensus.validators import ValidatorSet
from flobc.crypto import sha256
from flobc.storage.ledger import Ledger

SEEDS_FROM = int(os.environ.get("FLOBC_SIM_SEEDS_FROM", "0"))
"""First seed of the random schedules; set it to explore other seeds than CI's."""
RUNS = {4: (1400, 100), 7: (600, 50)}
"""n -> (schedules, chunk size)."""
CHUNKS = [(n, SEEDS_FROM + start, min(size, total - start))
          for n, (total, size) in RUNS.items() for start in range(0, total, size)]
VALIDATORS = ValidatorSet(CHAIN_ID, [validator_key(i).public_key for i in range(4)])


@pytest.fixture
def shm_dir() -> Iterator[str]:
    """A directory for ledgers, in memory where the system has /dev/shm."""
    path = tempfile.mkdtemp(prefix="flobc-test-sim-",
                            dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def explain(report: Report) -> str:
    return f"{report.summary()}\n  {report.replay}"


def blocks(path: str) -> list[Block]:
    with Ledger(path) as ledger:
        return [Block.decode(ledger.block(h)) for h in range(1, ledger.height + 1)]  # type: ignore


# --- random schedules -------------------------------------------------------------------


@pytest.mark.parametrize(("n", "first", "count"), CHUNKS,
                         ids=[f"n{n}-seeds{a}-{a + c - 1}" for n, a, c in CHUNKS])
def test_random_schedules(n: int, first: int, count: int) -> None:
    reports = [simulate(seed, n) for seed in range(first, first + count)]
    failed = [r for r in reports if not r.ok]
    assert not failed, f"{len(failed)} of {count} schedules failed:\n" + "\n".join(
        explain(r) for r in failed)
    total = sum((r.stats for r in reports), Stats())
    print(f"n={n} seeds {first}-{first + count - 1}: {total}")
    assert total.new_views > 0, "no view change completed"
    assert total.reproposed > 0, "no NEW-VIEW carried a prepared block"
    assert total.stable_checkpoints > 0, "no checkpoint became stable"
    assert total.state_transfers > 0, "no replica caught up by state transfer"
    assert total.crashes_with_prepared > 0, "no replica crashed holding prepared blocks"


def test_same_seed_same_run() -> None:
    first, again, other = simulate(17, 4), simulate(17, 4), simulate(18, 4)
    assert random_schedule(17, 4) == random_schedule(17, 4)
    assert first.fingerprint == again.fingerprint
    assert first.stats == again.stats
    assert other.fingerprint != first.fingerprint


def test_a_seed_replays_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate(3, 4).replay == \
        "replay: .venv/bin/python -m flobc.consensus.simulator --seed 3 --n 4"
    assert main(["--seed", "3", "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "schedule: n=4" in out
    assert "LIVENESS: all hold" in out


# --- scenarios --------------------------------------------------------------------------


def test_primary_crash_leads_to_a_view_change_and_commits_resume(shm_dir: str) -> None:
    schedule = Schedule(seed=11, n=4, heal_ms=1200, crashes=(Crash(0, 300, None),), txs=24)
    report = Simulation(schedule, root=shm_dir).run()
    assert report.ok, explain(report)
    assert report.stats.new_views >= 1 and report.stats.view >= 1
    chain = blocks(os.path.join(shm_dir, "r1"))
    assert any(b.txs for b in chain if b.proposer == 0), "no commits before the crash"
    assert any(b.txs for b in chain if b.proposer != 0), "commits did not resume"


def test_equivocating_primary_splits_no_one_and_is_replaced() -> None:
    sim = Simulation(Schedule(seed=2, n=4, heal_ms=1000, byzantine=((0, "equivocate"),),
                              txs=20))
    assert sim.nodes[0].behaviour.fooled == {2, 3}  # type: ignore[union-attr]
    report = sim.run()
    assert report.ok, explain(report)
    assert report.stats.equivocated_slots > 0, "honest replicas never saw two versions"
    assert report.stats.new_views >= 1 and report.stats.reproposed >= 1


def test_two_equivocating_primaries_in_a_row() -> None:
    byzantine = ((0, "equivocate"), (1, "equivocate"))
    report = Simulation(Schedule(seed=6, n=7, heal_ms=1000, byzantine=byzantine,
                                 txs=20)).run()
    assert report.ok, explain(report)
    assert report.stats.equivocated_slots > 0
    assert report.stats.view >= 2 and report.stats.reproposed >= 1


def test_partitioned_replica_catches_up_by_state_transfer() -> None:
    schedule = Schedule(seed=5, n=4, heal_ms=2500, partitions=(Partition(50, 2400, (3,)),),
                        txs=40)
    sim = Simulation(schedule)
    report = sim.run()
    assert report.ok, explain(report)
    assert sim.transferred[3] > PARAMS.window, "it should have fallen out of the window"
    assert sim.transferred[:3] == [0, 0, 0]


def test_replicas_restarted_holding_prepared_blocks_never_equivocate() -> None:
    crashes = tuple(Crash(r, at, at + 60, lose_in_flight=True)
                    for r, at in [(1, 150), (2, 300), (1, 450), (3, 600), (0, 750), (2, 900)])
    schedule = Schedule(seed=7, n=4, heal_ms=1100, delay_ms=(1, 30), crashes=crashes, txs=40)
    report = Simulation(schedule).run()
    assert report.ok, explain(report)
    assert report.stats.crashes_with_prepared >= 4


def test_new_primary_restarted_right_after_its_new_view_keeps_its_proposals() -> None:
    """Its NEW-VIEW is all it durably holds of the pre-prepares it made for the view; a
    restart that forgot them proposed other blocks for the same sequence numbers."""
    base = dict(seed=4, n=4, heal_ms=1500, delay_ms=(1, 40), loss=0.1, txs=40)
    notes: list[str] = []
    Simulation(Schedule(crashes=(Crash(0, 150, None),), **base),  # type: ignore[arg-type]
               note=notes.append).run()
    sent = next(line for line in notes if "r1 NEW-VIEW 1" in line)
    assert "re-proposing [1, 2" in sent
    at = int(sent.split()[0]) + 1
    crashes = (Crash(0, 150, None), Crash(1, at, at + 100))
    report = Simulation(Schedule(crashes=crashes, **base)).run()  # type: ignore[arg-type]
    assert report.ok, explain(report)


def test_view_change_completes_when_restarts_lost_the_votes_for_it() -> None:
    """r1 (primary of view 1) is dead, so the view change must go on to view 2; the
    restarted replicas lost the view-1 votes that made another replica move on, and
    counting only exact-view votes left every replica waiting with no timer armed."""
    schedule = Schedule(seed=31, n=4, heal_ms=1000, loss=0.1, partitions=(
        Partition(600, 1000, (0, 2)), Partition(900, 1000, (3,))), crashes=(
        Crash(1, 20, None), Crash(0, 450, 760, True), Crash(3, 550, 850, True)), txs=40)
    report = Simulation(schedule).run()
    assert report.ok, explain(report)
    assert report.stats.view >= 2


def test_a_backup_restarted_under_load_rejoins_so_a_second_backup_kill_costs_no_view_change(
        ) -> None:
    """r2 is down while the others commit past its stable checkpoint by more than the
    two windows of checkpoint votes it keeps; r3 then dies for good. r2 must be back in
    the current view, with the others' stable checkpoint and proofs served against it,
    for r0, r1 and r2 to keep committing with no view change."""
    schedule = Schedule(seed=41, n=4, heal_ms=3000, delay_ms=(1, 10), txs=150, crashes=(
        Crash(2, 200, 1500), Crash(3, 2200, None)))
    sim = Simulation(schedule)
    report = sim.run()
    assert report.ok, explain(report)
    assert sim.transferred[2] > 2 * PARAMS.window, "r2 should have fallen two windows behind"
    [(replica, blocks)] = sim.rejoins
    assert replica == 2 and blocks is not None, "r2 never caught up its stable checkpoint"
    assert blocks <= PARAMS.checkpoint_interval, blocks
    assert report.stats.new_views == 0 and report.stats.view == 0
    assert report.stats.txs_committed == len(sim.required)


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_byzantine_primary_behaviour(behaviour: str) -> None:
    schedule = Schedule(seed=2, n=4, heal_ms=800, loss=0.05, byzantine=((0, behaviour),),
                        txs=15)
    report = Simulation(schedule).run()
    assert report.ok, explain(report)


# --- the checks themselves can fail -------------------------------------------------------


def test_liveness_check_fails_when_no_quorum_can_form() -> None:
    split = Partition(0, 10**9, (0, 1))
    schedule = Schedule(seed=1, n=4, heal_ms=300, partitions=(split,), txs=5,
                        liveness_ms=1500)
    report = Simulation(schedule).run()
    assert not report.ok
    assert report.violations[0].startswith("LIVENESS"), report.violations


def test_schedules_beyond_f_faults_are_refused() -> None:
    with pytest.raises(ValueError, match="faulty"):
        Schedule(seed=1, n=4, byzantine=((0, "garbage"),),
                 crashes=(Crash(1, 10, None),)).check()


def test_signature_log_flags_an_honest_replica_signing_twice() -> None:
    log = SignatureLog(frozenset({1, 2}))
    a, b = sha256(b"a"), sha256(b"b")
    log.record(Prepare(0, 1, a, 1))
    log.record(Prepare(0, 1, a, 1))
    log.record(Prepare(0, 1, b, 3))  # replica 3 is faulty: not the honest replicas' fault
    log.record(Prepare(0, 1, b, 2))
    assert log.violations == [] and log.split_slots == 1
    log.record(Commit(0, 1, a, 2))
    log.record(Commit(0, 1, b, 2))
    assert len(log.violations) == 1 and "replica 2" in log.violations[0]


def certify(block: Block) -> bytes:
    sigs = tuple((i, Commit(0, block.height, block.digest(), i).signed(  # type: ignore
        validator_key(i), CHAIN_ID).signature) for i in range(VALIDATORS.quorum))
    return CommitCertificate(0, block.height, block.digest(), sigs).encode()


def append(ledger: Ledger, block: Block, certificate: bytes) -> None:
    ledger.commit_block(block.height, block.encode(), certificate, block.digest(),
                        block.time_ms, [], [], ledger.state.overlay())


def test_ledger_checks_catch_forks_bad_certificates_and_bad_checkpoints(shm_dir: str) -> None:
    report = Simulation(Schedule(seed=3, n=4, heal_ms=400, txs=6), root=shm_dir).run()
    assert report.ok, explain(report)
    a, b = Ledger(os.path.join(shm_dir, "r0")), Ledger(os.path.join(shm_dir, "r1"))
    try:
        assert a.height == b.height > 0
        assert ledger_violations(VALIDATORS, {0: a, 1: b}) == []
        top = a.height + 1
        append(a, fork := Block(top, 1, 0, (b"x",)), certify(fork))
        append(b, other := Block(top, 1, 0, (b"y",)), certify(other))
        found = ledger_violations(VALIDATORS, {0: a, 1: b})
        assert [v.split(":")[0] for v in found] == ["SAFETY"], found
        append(a, Block(top + 1, 1, 0, ()), certify(Block(top + 1, 2, 0, ())))
        found = ledger_violations(VALIDATORS, {0: a})
        assert [v.split(":")[0] for v in found] == ["CERTIFICATE"], found

        seq = b.height - b.height % PARAMS.checkpoint_interval
        assert seq > 0
        wrong = sha256(b"not the state root")
        sigs = tuple((i, Checkpoint(seq, wrong, i).signed(validator_key(i), CHAIN_ID)  # type: ignore
                      .signature) for i in range(VALIDATORS.quorum))
        b.put_checkpoint(seq, CheckpointCertificate(seq, wrong, sigs).encode())
        found, _ = checkpoint_violations(VALIDATORS, {1: b}, seq, 0)
        assert len(found) == 1 and "differs" in found[0], found
    finally:
        a.close()
        b.close()
