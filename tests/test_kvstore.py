"""The key-value test application against real LevelDB state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flobc import codec
from flobc.consensus.kvstore import MAX_KEY, MAX_TX_BYTES, MAX_VALUE, KVStore, make_tx
from flobc.crypto import PrivateKey, sha256
from flobc.storage.ledger import Ledger

ALICE = PrivateKey(bytes(range(32)))
BOB = PrivateKey(bytes(range(1, 33)))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "ledger")
    yield ledger
    ledger.close()


def commit(ledger: Ledger, txs: list[bytes]) -> list[str | None]:
    """Execute ``txs`` as the next block and store it, as the host does."""
    overlay = ledger.state.overlay()
    results = KVStore().execute_block(ledger.height + 1, 1_000, txs, overlay)
    encoded = [b"" if r is None else r.encode() for r in results]
    ledger.commit_block(ledger.height + 1, codec.pack(txs), b"cert", sha256(codec.pack(txs)),
                        1_000, [sha256(tx) for tx in txs], encoded, overlay)
    return results


def signed_fields(key: PrivateKey, nonce: int, k: bytes, v: bytes) -> list:
    return codec.unpack(make_tx(key, nonce, k, v))


def test_valid_tx_is_admitted_executed_and_queryable(ledger: Ledger) -> None:
    app = KVStore()
    tx = make_tx(ALICE, 1, b"colour", b"blue")
    assert app.check_tx(tx, ledger.state) is None
    root_before = ledger.state.root
    assert commit(ledger, [tx]) == [None]
    assert ledger.state.get(b"kv/colour") == b"blue"
    assert ledger.state.root != root_before
    assert app.query("kv", {"key": "colour"}, ledger.state) == {
        "key": "colour", "value": b"blue".hex()}
    assert app.query("kv", {"key": "absent"}, ledger.state) == {"key": "absent", "value": None}


def test_replay_is_refused_after_commit_and_skipped_in_a_block(ledger: Ledger) -> None:
    app = KVStore()
    tx = make_tx(ALICE, 7, b"k", b"v1")
    assert commit(ledger, [tx]) == [None]
    assert app.check_tx(tx, ledger.state) == (
        "nonce 7 already used by this public key (replayed tx)")
    # Same nonce, different content: still a replay of the nonce.
    assert "already used" in app.check_tx(make_tx(ALICE, 7, b"k", b"v2"), ledger.state)
    # Another key may use the same nonce; nonces need not be consecutive.
    assert app.check_tx(make_tx(BOB, 7, b"k", b"v3"), ledger.state) is None
    assert app.check_tx(make_tx(ALICE, 3, b"k", b"v4"), ledger.state) is None
    root = ledger.state.root
    assert commit(ledger, [tx]) == ["nonce 7 already used by this public key (replayed tx)"]
    assert ledger.state.root == root
    assert ledger.state.get(b"kv/k") == b"v1"


def test_duplicate_inside_one_block_applies_once(ledger: Ledger) -> None:
    first = make_tx(ALICE, 1, b"k", b"first")
    second = make_tx(ALICE, 1, b"k", b"second")
    results = commit(ledger, [first, second, make_tx(BOB, 1, b"j", b"x")])
    assert results[0] is None and results[2] is None
    assert "already used" in results[1]
    assert ledger.state.get(b"kv/k") == b"first"


def test_bad_txs_in_a_block_are_skipped_deterministically(ledger: Ledger) -> None:
    good = make_tx(ALICE, 1, b"a", b"1")
    fields = signed_fields(ALICE, 2, b"b", b"2")
    fields[3] = b"tampered"
    results = commit(ledger, [b"\xc1garbage", codec.pack(fields), good])
    assert results[0].startswith("tx is not valid msgpack")
    assert results[1] == "bad signature"
    assert results[2] is None
    assert list(ledger.state.items(b"kv/")) == [(b"kv/a", b"1")]


def _tampered(index: int, value: object) -> bytes:
    fields = signed_fields(ALICE, 1, b"key", b"value")
    fields[index] = value
    return codec.pack(fields)


@pytest.mark.parametrize(("tx", "reason"), [
    (b"", "tx is not valid msgpack"),
    (b"\x95\xc4", "tx is not valid msgpack"),
    (b"\xc1\xc1\xc1", "tx is not valid msgpack"),
    (make_tx(ALICE, 1, b"k", b"v") + b"\x00", "tx is not valid msgpack"),
    (b"\x00" * (MAX_TX_BYTES + 1), f"tx is {MAX_TX_BYTES + 1} bytes, limit is {MAX_TX_BYTES}"),
    (codec.pack({"key": b"k"}), "tx must be an array"),
    (codec.pack([1, 2, 3]), "tx must be an array"),
    (_tampered(0, b"short"), "public_key must be 32 bytes"),
    (_tampered(0, "text" * 8), "public_key must be 32 bytes"),
    (_tampered(1, -1), "nonce must be an integer"),
    (_tampered(1, "1"), "nonce must be an integer"),
    (_tampered(1, True), "nonce must be an integer"),
    (_tampered(1, 1.0), "nonce must be an integer"),
    (_tampered(2, "key"), "key must be bytes"),
    (_tampered(2, b""), "key is 0 bytes, must be 1..256"),
    (_tampered(2, b"k" * (MAX_KEY + 1)), f"key is {MAX_KEY + 1} bytes, must be 1..{MAX_KEY}"),
    (_tampered(3, None), "value must be bytes"),
    (_tampered(3, b"v" * (MAX_VALUE + 1)), f"value is {MAX_VALUE + 1} bytes, limit is "
                                           f"{MAX_VALUE}"),
    (_tampered(4, b"s" * 63), "signature must be 64 bytes"),
    (_tampered(4, bytes(64)), "bad signature"),
    (_tampered(3, b"other value"), "bad signature"),
    (_tampered(0, BOB.public_key), "bad signature"),
])
def test_malformed_tx_is_refused_with_a_reason(ledger: Ledger, tx: bytes, reason: str) -> None:
    got = KVStore().check_tx(tx, ledger.state)
    assert got is not None and got.startswith(reason), got


def test_non_canonical_encoding_is_refused(ledger: Ledger) -> None:
    fields = signed_fields(ALICE, 1, b"k", b"v")
    # The same nonce written as a uint64 (0xcf) instead of a positive fixint.
    head, tail = codec.pack(fields[:1]), codec.pack(fields[2:])
    tx = b"\x95" + head[1:] + b"\xcf" + (1).to_bytes(8, "big") + tail[1:]
    assert codec.unpack(tx) == fields
    assert KVStore().check_tx(tx, ledger.state) == "tx is not canonically encoded"


def test_largest_well_formed_tx_fits_the_size_limit(ledger: Ledger) -> None:
    tx = make_tx(ALICE, 2**64 - 1, b"k" * MAX_KEY, b"v" * MAX_VALUE)
    assert len(tx) <= MAX_TX_BYTES
    assert KVStore().check_tx(tx, ledger.state) is None


@pytest.mark.parametrize(("path", "params", "reason"), [
    ("nope", {"key": "a"}, "unknown query"),
    ("kv", {}, "needs a 'key' parameter"),
    ("kv", {"key": ""}, "key is 0 bytes"),
    ("kv", {"key": "é" * 129}, "key is 258 bytes"),
    ("kv", {"key": "\udc80"}, "key is not valid UTF-8"),
])
def test_bad_queries_raise_value_error(ledger: Ledger, path: str, params: dict[str, str],
                                       reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        KVStore().query(path, params, ledger.state)
