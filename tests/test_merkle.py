"""The bucketed Merkle tree: hashing rules, proofs, and the incrementally maintained
state root checked against a from-scratch recomputation over a real LevelDB."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flobc import codec
from flobc.storage.db import Database
from flobc.storage.merkle import (
    BUCKETS,
    EMPTY_BUCKET,
    EMPTY_ROOT,
    EMPTY_SUBTREE,
    TOP_DEPTH,
    MerkleProof,
    bucket_of,
    bucket_root,
    leaf_hash,
    make_proof,
    node_hash,
    verify_proof,
)
from flobc.storage.state import AppState


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def reference_tree(state: dict[bytes, bytes]) -> list[dict[int, bytes]]:
    """Every non-empty node per level (0 = bucket roots, 16 = root), from scratch."""
    buckets: dict[int, list[bytes]] = defaultdict(list)
    for key in sorted(state):
        buckets[bucket_of(key)].append(leaf_hash(key, state[key]))
    levels = [{b: bucket_root(leaves) for b, leaves in buckets.items()}]
    for level in range(TOP_DEPTH):
        below, empty = levels[-1], EMPTY_SUBTREE[level]
        levels.append({i >> 1: node_hash(below.get(i & ~1, empty), below.get(i | 1, empty))
                       for i in below})
    return levels


def reference_root(state: dict[bytes, bytes]) -> bytes:
    return reference_tree(state)[TOP_DEPTH].get(0, EMPTY_ROOT)


def _crowded_keys() -> list[bytes]:
    """Keys from the most crowded buckets, so that states have multi-leaf buckets."""
    by_bucket: dict[int, list[bytes]] = defaultdict(list)
    for i in range(60_000):
        by_bucket[bucket_of(b"k%d" % i)].append(b"k%d" % i)
    return [k for keys in sorted(by_bucket.values(), key=len)[-12:] for k in keys]


CROWDED = _crowded_keys()
keys = st.one_of(st.sampled_from(CROWDED), st.binary(min_size=1, max_size=24))
values = st.binary(max_size=40)
states = st.dictionaries(keys, values, min_size=1, max_size=40)


@contextmanager
def fresh_state(factory):
    with Database(factory.mktemp("state")) as db:
        yield db, AppState(db)


def commit(db: Database, state: AppState, writes: dict[bytes, bytes | None]) -> bytes:
    overlay = state.overlay()
    for key, value in writes.items():
        if value is None:
            overlay.delete(key)
        else:
            overlay.put(key, value)
    batch = db.batch()
    root, apply = state.stage(overlay, batch)
    db.write(batch)
    apply()
    assert state.root == root
    return root


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 1]) + h[1:]


# --- hashing rules ----------------------------------------------------------------


def test_hashes_follow_the_published_layout():
    key, value = b"key", b"value"
    leaf = _sha(b"\x00" + (3).to_bytes(4, "big") + key + _sha(value))
    assert leaf_hash(key, value) == leaf
    assert bucket_of(key) == int.from_bytes(_sha(key)[:2], "big")
    a, b, c = (_sha(bytes([i])) for i in range(3))
    # An odd node is promoted unchanged, never paired with itself.
    assert bucket_root([a, b, c]) == _sha(b"\x01" + _sha(b"\x01" + a + b) + c)
    assert bucket_root([a]) == a
    assert bucket_root([]) == EMPTY_BUCKET == _sha(b"\x02")


def test_empty_root_is_the_full_top_tree_over_empty_buckets():
    level = [EMPTY_BUCKET] * BUCKETS
    while len(level) > 1:
        level = [_sha(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    assert EMPTY_ROOT == level[0] == reference_root({})


@settings(max_examples=60)
@given(st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=70, unique=True),
       st.lists(st.binary(min_size=32, max_size=32), min_size=16, max_size=16),
       st.data())
def test_bucket_paths_prove_every_position_of_any_bucket_size(bucket_keys, top, data):
    bucket_keys.sort()
    pairs = [(k, leaf_hash(k, k + b"!")) for k in bucket_keys]
    key = data.draw(st.sampled_from(bucket_keys))
    # The root that a bucket holding these leaves at ``key``'s position would give.
    h, index = bucket_root([leaf for _, leaf in pairs]), bucket_of(key)
    for sibling in top:
        h = _sha(b"\x01" + sibling + h) if index & 1 else _sha(b"\x01" + h + sibling)
        index >>= 1
    proof = make_proof(key, pairs, top)
    assert proof is not None and verify_proof(h, key, key + b"!", proof)
    assert make_proof(b"absent: longer than any", pairs, top) is None


# --- proofs against real state ----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(states, st.binary(min_size=1, max_size=8))
def test_every_present_key_proves_and_any_tampering_fails(tmp_path_factory, contents,
                                                          absent):
    with fresh_state(tmp_path_factory) as (db, state):
        root = commit(db, state, dict(contents))
        assert root == reference_root(contents)
        other_keys = sorted(contents)
        for key, value in contents.items():
            proof = state.prove(key)
            assert proof is not None and verify_proof(root, key, value, proof)
            assert verify_proof(root, key, value, MerkleProof.decode(proof.encode()))
            assert not verify_proof(root, key, value + b"x", proof)
            assert not verify_proof(_flip(root), key, value, proof)
            other = other_keys[(other_keys.index(key) + 1) % len(other_keys)]
            if other != key:
                assert not verify_proof(root, other, contents[other], proof)
                assert not verify_proof(root, other, contents[other],
                                        replace(proof, key=other))
                assert not verify_proof(root, key, value, replace(proof, key=other))
            for level in range(TOP_DEPTH):
                top = list(proof.top_siblings)
                top[level] = _flip(top[level])
                assert not verify_proof(root, key, value, replace(proof, top_siblings=tuple(top)))
            for step, (sibling, left) in enumerate(proof.bucket_path):
                for tampered in ((_flip(sibling), left), (sibling, not left)):
                    path = list(proof.bucket_path)
                    path[step] = tampered
                    assert not verify_proof(root, key, value,
                                            replace(proof, bucket_path=tuple(path)))
        if absent not in contents:
            assert state.prove(absent) is None


def test_some_generated_states_have_multi_leaf_buckets():
    """The property tests above only mean something if bucket paths are exercised."""
    assert len(CROWDED) > 12 * 4
    assert len({bucket_of(k) for k in CROWDED}) == 12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(keys, st.none() | values, max_size=12), min_size=1,
                max_size=6))
def test_incremental_root_equals_recomputation_after_random_blocks(tmp_path_factory,
                                                                   blocks):
    with fresh_state(tmp_path_factory) as (db, state):
        model: dict[bytes, bytes] = {}
        for writes in blocks:
            root = commit(db, state, writes)
            for key, value in writes.items():
                if value is None:
                    model.pop(key, None)
                else:
                    model[key] = value
            assert root == reference_root(model)
            assert dict(state.items()) == model
        tree = reference_tree(model)
        stored = {int.from_bytes(k, "big"): h for k, h in db.table("mnode").items()}
        assert stored == tree[0], "mnode must hold exactly the non-empty bucket roots"
        assert AppState(db).root == root


@settings(max_examples=40, deadline=None)
@given(states, st.randoms(use_true_random=False), st.integers(1, 5))
def test_root_is_independent_of_insertion_order(tmp_path_factory, contents, rng, blocks):
    items = list(contents.items())
    with fresh_state(tmp_path_factory) as (db, state):
        in_order = commit(db, state, dict(sorted(items)))
    rng.shuffle(items)
    with fresh_state(tmp_path_factory) as (db, state):
        # Different block boundaries, plus a key that comes and goes again.
        commit(db, state, {b"\x00transient": b"x"})
        for i in range(blocks):
            commit(db, state, dict(items[i::blocks]))
        shuffled = commit(db, state, {b"\x00transient": None})
    assert in_order == shuffled == reference_root(contents)


@settings(max_examples=30, deadline=None)
@given(states)
def test_deleting_everything_gives_the_empty_root_and_empty_tables(tmp_path_factory,
                                                                   contents):
    with fresh_state(tmp_path_factory) as (db, state):
        commit(db, state, dict(contents))
        assert commit(db, state, dict.fromkeys(contents)) == EMPTY_ROOT
        for table in ("state", "mbucket", "mnode"):
            assert list(db.table(table).items()) == []
        assert AppState(db).root == EMPTY_ROOT


def test_snapshot_proofs_stay_valid_for_their_root_after_later_commits(tmp_path_factory):
    with fresh_state(tmp_path_factory) as (db, state):
        old = {k: b"old " + k for k in CROWDED[:30]}
        old_root = commit(db, state, old)
        with state.snapshot() as snapshot:
            changed = {k: (None if i % 3 == 0 else b"new") for i, k in enumerate(old)}
            new_root = commit(db, state, changed)
            assert new_root != old_root and snapshot.root == old_root
            for key, value in old.items():
                assert snapshot.get(key) == value
                proof = snapshot.prove(key)
                assert proof is not None and verify_proof(old_root, key, value, proof)
                assert not verify_proof(new_root, key, value, proof)
                assert (state.prove(key) is None) == (changed[key] is None)
            assert list(snapshot.items(b"k")) == sorted(old.items())
        for key, value in changed.items():
            if value is not None:
                assert verify_proof(new_root, key, value, state.prove(key))


def test_nothing_changes_when_the_staged_batch_is_never_written(tmp_path_factory):
    with fresh_state(tmp_path_factory) as (db, state):
        root = commit(db, state, {b"a": b"1"})
        overlay = state.overlay()
        overlay.put(b"a", b"2")
        overlay.put(b"b", b"3")
        batch = db.batch()
        new_root, _ = state.stage(overlay, batch)
        batch.put(db.table("state"), b"c", "not bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            db.write(batch)
        assert new_root != root and state.root == root
        assert state.get(b"a") == b"1" and state.get(b"b") is None
        assert verify_proof(root, b"a", b"1", state.prove(b"a"))
        assert AppState(db).root == root


def test_stage_refuses_foreign_overlays_and_stale_applies(tmp_path_factory):
    with fresh_state(tmp_path_factory) as (db, state), \
            fresh_state(tmp_path_factory) as (_, other):
        with pytest.raises(ValueError, match="another state"):
            state.stage(other.overlay(), db.batch())
        first, second = state.overlay(), state.overlay()
        first.put(b"a", b"1")
        second.put(b"b", b"2")
        _, apply_first = state.stage(first, db.batch())
        _, apply_second = state.stage(second, db.batch())
        apply_first()
        with pytest.raises(RuntimeError, match="staged"):
            apply_second()


# --- proof decoding ---------------------------------------------------------------


def _proof() -> MerkleProof:
    return MerkleProof(b"key", ((b"\x11" * 32, True), (b"\x22" * 32, False)),
                       tuple(bytes([i]) * 32 for i in range(16)))


def test_proof_encoding_round_trips():
    assert MerkleProof.decode(_proof().encode()) == _proof()


@pytest.mark.parametrize(("raw", "problem"), [
    ([b"key", []], "expected \\[key"),
    ({"key": b"k"}, "expected \\[key"),
    ([b"", [], [b"\x00" * 32] * 16], "proof.key"),
    ([b"k" * 1025, [], [b"\x00" * 32] * 16], "proof.key"),
    (["key", [], [b"\x00" * 32] * 16], "proof.key"),
    ([b"key", [[b"\x00" * 31, True]], [b"\x00" * 32] * 16], "proof.bucket_path"),
    ([b"key", [[b"\x00" * 32, 1]], [b"\x00" * 32] * 16], "proof.bucket_path"),
    ([b"key", [[b"\x00" * 32]], [b"\x00" * 32] * 16], "proof.bucket_path"),
    ([b"key", [[b"\x00" * 32, True]] * 65, [b"\x00" * 32] * 16], "proof.bucket_path"),
    ([b"key", {}, [b"\x00" * 32] * 16], "proof.bucket_path"),
    ([b"key", [], [b"\x00" * 32] * 15], "proof.top_siblings"),
    ([b"key", [], [b"\x00" * 32] * 15 + [b"\x00"]], "proof.top_siblings"),
])
def test_decode_names_the_malformed_field(raw, problem):
    with pytest.raises(ValueError, match=problem):
        MerkleProof.decode(codec.pack(raw))


def test_decode_rejects_trailing_and_oversized_input():
    with pytest.raises(ValueError):
        MerkleProof.decode(_proof().encode() + b"\x00")
    with pytest.raises(ValueError):
        MerkleProof.decode(b"\xc4" + b"\x00" * 9000)


@given(st.binary(max_size=200))
def test_decode_of_garbage_raises_value_error_or_gives_a_valid_proof(data):
    try:
        proof = MerkleProof.decode(data)
    except ValueError:
        return
    assert MerkleProof.decode(proof.encode()) == proof


@pytest.mark.parametrize("proof", [
    MerkleProof(b"key", ((b"short", True),), (b"\x00" * 32,) * 16),
    MerkleProof(b"key", (), (b"\x00" * 32,) * 3),
    MerkleProof(b"key", None, None),  # type: ignore[arg-type]
    None,
])
def test_verify_never_raises_on_malformed_proofs(proof):
    assert verify_proof(EMPTY_ROOT, b"key", b"value", proof) is False
    assert verify_proof(b"short root", b"key", b"value", _proof()) is False
