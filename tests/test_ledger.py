"""The ledger over a real LevelDB: blocks and their effects committed atomically, the
transaction index, consensus records, checkpoints, blobs, and the state overlay."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flobc.storage.ledger import BlockMeta, Ledger, TxLocation
from flobc.storage.merkle import EMPTY_ROOT, MAX_KEY_SIZE, verify_proof


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "node" / "ledger") as store:
        yield store


def commit(ledger: Ledger, writes: dict[bytes, bytes], txs: tuple[bytes, ...] = ()) -> bytes:
    """Commit the next block, writing ``writes`` to state and indexing ``txs``."""
    height = ledger.height + 1
    overlay = ledger.state.overlay()
    for key, value in writes.items():
        overlay.put(key, value)
    block = b"block %d" % height
    return ledger.commit_block(height, block, b"cert %d" % height, _hash(block),
                               1000 * height, [_hash(tx) for tx in txs],
                               [b"ok " + tx for tx in txs], overlay)


def test_an_empty_ledger(ledger):
    assert ledger.height == 0
    assert ledger.block(1) is None and ledger.certificate(1) is None
    assert ledger.meta(1) is None and ledger.tx(_hash(b"tx")) is None
    assert ledger.state.root == EMPTY_ROOT
    assert ledger.latest_checkpoint() is None and list(ledger.records()) == []
    for impossible in (-1, 2**64):
        assert ledger.block(impossible) is None and ledger.meta(impossible) is None
        assert ledger.certificate(impossible) is None and ledger.checkpoint(impossible) is None


def test_commit_block_round_trips_everything_it_stores(ledger):
    root1 = commit(ledger, {b"a": b"1"}, (b"tx1", b"tx2"))
    root2 = commit(ledger, {b"b": b"2"}, (b"tx3",))
    assert ledger.height == 2 and root1 != root2 == ledger.state.root
    assert ledger.block(1) == b"block 1" and ledger.certificate(2) == b"cert 2"
    assert ledger.meta(1) == BlockMeta(1, _hash(b"block 1"), bytes(32), root1, 1000, 2)
    assert ledger.meta(2) == BlockMeta(2, _hash(b"block 2"), _hash(b"block 1"), root2, 2000, 1)
    assert ledger.tx(_hash(b"tx2")) == TxLocation(1, 1, b"ok tx2")
    assert ledger.tx(_hash(b"tx3")) == TxLocation(2, 0, b"ok tx3")
    assert ledger.state.get(b"a") == b"1" and ledger.state.get(b"b") == b"2"
    assert verify_proof(root2, b"a", b"1", ledger.state.prove(b"a"))


def test_a_reincluded_transaction_keeps_the_lookup_of_the_block_where_it_took_effect(
        tmp_path):
    path = tmp_path / "ledger"
    with Ledger(path) as ledger:
        commit(ledger, {}, (b"tx1",))
        commit(ledger, {}, (b"tx2", b"tx1"))
        commit(ledger, {}, (b"tx1", b"tx3", b"tx3"))
    with Ledger(path) as ledger:  # what a restarted node, and GET /txs, read back
        assert ledger.tx(_hash(b"tx1")) == TxLocation(1, 0, b"ok tx1")
        assert ledger.tx_duplicates(_hash(b"tx1")) == [TxLocation(2, 1, b"ok tx1"),
                                                       TxLocation(3, 0, b"ok tx1")]
        assert ledger.tx(_hash(b"tx3")) == TxLocation(3, 1, b"ok tx3")
        assert ledger.tx_duplicates(_hash(b"tx3")) == [TxLocation(3, 2, b"ok tx3")]
        assert ledger.tx_duplicates(_hash(b"tx2")) == []
        assert ledger.meta(2).tx_count == 2  # type: ignore[union-attr]


def _assert_nothing_after_first_block(ledger: Ledger, root: bytes) -> None:
    assert ledger.height == 1 and ledger.state.root == root
    assert ledger.block(2) is None and ledger.certificate(2) is None and ledger.meta(2) is None
    assert ledger.tx(_hash(b"late")) is None and ledger.state.get(b"late") is None


@pytest.mark.parametrize(("change", "problem"), [
    ({"height": 1}, "next height is 2"),
    ({"height": 3}, "next height is 2"),
    ({"height": 0}, "next height is 2"),
    ({"results": []}, "1 tx hashes but 0 results"),
    ({"block_hash": b"short"}, "block_hash"),
    ({"time_ms": -1}, "time_ms"),
])
def test_commit_block_refuses_bad_input_and_writes_nothing(tmp_path, change, problem):
    path = tmp_path / "ledger"
    with Ledger(path) as ledger:
        root = commit(ledger, {b"a": b"1"})
        overlay = ledger.state.overlay()
        overlay.put(b"late", b"x")
        args = {"height": 2, "block": b"block 2", "certificate": b"cert 2",
                "block_hash": _hash(b"block 2"), "time_ms": 2000,
                "tx_hashes": [_hash(b"late")], "results": [b"ok"], "overlay": overlay} | change
        with pytest.raises(ValueError, match=problem):
            ledger.commit_block(**args)
        _assert_nothing_after_first_block(ledger, root)
    with Ledger(path) as ledger:
        _assert_nothing_after_first_block(ledger, root)


def test_a_block_whose_write_fails_leaves_no_trace(tmp_path):
    path = tmp_path / "ledger"
    with Ledger(path) as ledger:
        root = commit(ledger, {b"a": b"1"})
        overlay = ledger.state.overlay()
        overlay.put(b"late", b"x")
        with pytest.raises(TypeError):
            ledger.commit_block(2, "not bytes", b"cert", _hash(b"b"), 2000,  # type: ignore
                                [_hash(b"late")], [b"ok"], overlay)
        _assert_nothing_after_first_block(ledger, root)
        assert commit(ledger, {b"late": b"x"}, (b"late",)) != root
    with Ledger(path) as ledger:
        assert ledger.height == 2 and ledger.state.get(b"late") == b"x"


def test_commit_block_refuses_an_overlay_of_another_ledger(tmp_path, ledger):
    with Ledger(tmp_path / "other") as other:
        overlay = other.state.overlay()
        overlay.put(b"k", b"v")
        with pytest.raises(ValueError, match="another state"):
            ledger.commit_block(1, b"b", b"c", _hash(b"b"), 1, [], [], overlay)
    assert ledger.height == 0 and ledger.block(1) is None


def test_reopening_rebuilds_the_same_ledger_and_root(tmp_path):
    path = tmp_path / "ledger"
    with Ledger(path) as ledger:
        for i in range(5):
            commit(ledger, {b"key %d" % j: b"v%d" % i for j in range(i * 40)}, (b"tx %d" % i,))
        root = ledger.state.root
        ledger.write_records([(b"view", b"3")], [])
        ledger.put_checkpoint(4, b"checkpoint 4")
        digest = ledger.put_blob(b"weights")
    with Ledger(path) as ledger:
        assert ledger.height == 5 and ledger.state.root == root
        assert ledger.meta(5).state_root == root and ledger.block(5) == b"block 5"
        assert ledger.tx(_hash(b"tx 4")) == TxLocation(5, 0, b"ok tx 4")
        assert verify_proof(root, b"key 7", b"v4", ledger.state.prove(b"key 7"))
        assert ledger.record(b"view") == b"3"
        assert ledger.latest_checkpoint() == (4, b"checkpoint 4")
        assert ledger.blob(digest) == b"weights"
        assert commit(ledger, {b"key 0": b"after"}) != root and ledger.height == 6


def test_records_are_replaced_in_one_batch_and_scanned_by_prefix(ledger):
    ledger.write_records([(b"vote/2", b"b"), (b"vote/1", b"a"), (b"view", b"0")], [])
    ledger.write_records([(b"vote/3", b"c"), (b"view", b"1")], [b"vote/1", b"missing"])
    assert list(ledger.records(b"vote/")) == [(b"vote/2", b"b"), (b"vote/3", b"c")]
    assert ledger.record(b"view") == b"1" and ledger.record(b"vote/1") is None
    assert [k for k, _ in ledger.records()] == [b"view", b"vote/2", b"vote/3"]
    ledger.write_records([(b"view", b"2")], [b"view"])
    assert ledger.record(b"view") == b"2", "deletes apply before puts"


def test_records_are_apart_from_state(ledger):
    ledger.write_records([(b"k", b"record")], [])
    commit(ledger, {b"k": b"state"})
    assert ledger.record(b"k") == b"record" and ledger.state.get(b"k") == b"state"


def test_checkpoints_are_ordered_numerically(ledger):
    for seq in (2, 256, 255, 10):
        ledger.put_checkpoint(seq, b"cert %d" % seq)
    assert ledger.latest_checkpoint() == (256, b"cert 256")
    assert ledger.checkpoint(255) == b"cert 255" and ledger.checkpoint(3) is None
    with pytest.raises(ValueError, match="seq"):
        ledger.put_checkpoint(-1, b"cert")


def test_blobs_are_content_addressed_and_idempotent(ledger):
    digest = ledger.put_blob(b"model weights")
    assert digest == _hash(b"model weights")
    assert ledger.put_blob(b"model weights") == digest
    assert ledger.blob(digest) == b"model weights" and ledger.has_blob(digest)
    assert ledger.put_blob(b"") == _hash(b"") and ledger.blob(_hash(b"")) == b""
    assert not ledger.has_blob(_hash(b"other")) and ledger.blob(_hash(b"other")) is None


# --- the overlay a block executes against -----------------------------------------


def test_overlay_reads_its_own_writes_and_deletes(ledger):
    commit(ledger, {b"a": b"1", b"b": b"2"})
    overlay = ledger.state.overlay()
    overlay.put(b"a", b"changed")
    overlay.delete(b"b")
    overlay.put(b"c", b"3")
    assert overlay.get(b"a") == b"changed" and overlay.get(b"b") is None
    assert overlay.get(b"c") == b"3"
    assert overlay.writes == {b"a": b"changed", b"b": None, b"c": b"3"}
    assert ledger.state.get(b"a") == b"1" and ledger.state.get(b"c") is None


def test_overlay_refuses_bad_keys_and_values(ledger):
    overlay = ledger.state.overlay()
    for bad in (b"", b"k" * (MAX_KEY_SIZE + 1)):
        with pytest.raises(ValueError, match="state key"):
            overlay.put(bad, b"v")
        with pytest.raises(ValueError, match="state key"):
            overlay.delete(bad)
    with pytest.raises(TypeError, match="state key"):
        overlay.put("text", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state value"):
        overlay.put(b"k", "text")  # type: ignore[arg-type]
    overlay.put(b"k" * MAX_KEY_SIZE, b"v")
    assert overlay.writes == {b"k" * MAX_KEY_SIZE: b"v"}


_keys = st.binary(min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, st.binary(max_size=3), max_size=10),
       st.dictionaries(_keys, st.none() | st.binary(max_size=3), max_size=10),
       st.binary(max_size=2))
def test_overlay_items_merge_pending_writes_in_key_order(tmp_path_factory, committed,
                                                         pending, prefix):
    with Ledger(tmp_path_factory.mktemp("ledger")) as ledger:
        commit(ledger, committed)
        overlay = ledger.state.overlay()
        for key, value in pending.items():
            if value is None:
                overlay.delete(key)
            else:
                overlay.put(key, value)
        merged = {**committed, **pending}
        expected = sorted((k, v) for k, v in merged.items()
                          if v is not None and k.startswith(prefix))
        assert list(overlay.items(prefix)) == expected
        assert list(ledger.state.items(prefix)) == sorted(
            (k, v) for k, v in committed.items() if k.startswith(prefix))
