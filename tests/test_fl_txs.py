"""Learning transactions: built and signed by their authors, decoded with bounds."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flobc import codec
from flobc.crypto import PrivateKey, sha256
from flobc.protocol.txs import (
    MAX_TX_BYTES,
    Close,
    Register,
    Update,
    Vote,
    decode_tx,
    make_close,
    make_register,
    make_update,
    make_vote,
    signing_bytes,
)

CHAIN = "fl-test"
TRAINER = PrivateKey(bytes(range(32)))
VALIDATOR = PrivateKey(bytes(range(1, 33)))
BLOB = sha256(b"delta")


def test_each_kind_round_trips_with_its_signer() -> None:
    assert decode_tx(make_register(TRAINER, 7, CHAIN), CHAIN) == Register(TRAINER.public_key, 7)
    update = make_update(TRAINER, CHAIN, 3, 2, BLOB, 600, 412, 913, 9)
    assert decode_tx(update, CHAIN) == Update(TRAINER.public_key, 3, 2, BLOB, 600, 412, 913, 9)
    vote = make_vote(VALIDATOR, CHAIN, 3, TRAINER.public_key, BLOB, False, -25)
    assert decode_tx(vote, CHAIN) == Vote(VALIDATOR.public_key, 3, TRAINER.public_key, BLOB,
                                          False, -25)
    close = make_close(VALIDATOR, CHAIN, 4, 12_000)
    assert decode_tx(close, CHAIN) == Close(VALIDATOR.public_key, 4, 12_000)
    assert all(len(tx) <= MAX_TX_BYTES for tx in (update, vote))


def test_a_transaction_for_another_chain_does_not_verify() -> None:
    tx = make_close(VALIDATOR, "other-chain", 4, 0)
    assert decode_tx(tx, CHAIN) == "bad signature (or a transaction for another chain)"


def _resigned(kind: str, body: list, key: PrivateKey = TRAINER) -> bytes:
    """A well-signed transaction with an arbitrary body, to reach the field checks."""
    signature = key.sign(signing_bytes(CHAIN, kind, body, key.public_key))
    return codec.pack([kind, body, key.public_key, signature])


def test_a_changed_body_or_kind_breaks_the_signature() -> None:
    kind, body, signer, signature = codec.unpack(make_update(TRAINER, CHAIN, 3, 2, BLOB, 600,
                                                             412, 913, 9))
    body[3] = 60_000  # claim more samples
    assert "bad signature" in decode_tx(codec.pack([kind, body, signer, signature]), CHAIN)
    # Signed as a register, sent as a close of the same (well-formed) body.
    _, body, signer, signature = codec.unpack(_resigned("register", [4, 0], VALIDATOR))
    assert "bad signature" in decode_tx(codec.pack(["close", body, signer, signature]), CHAIN)


@pytest.mark.parametrize(("kind", "body", "reason"), [
    ("register", [], "register body must be [nonce]"),
    ("register", [-1], "nonce must be an integer in 0..18446744073709551615"),
    ("update", [1, 0, BLOB, 1, 0, 0], "update body must be"),
    ("update", [0, 0, BLOB, 1, 0, 0, 0], "round must be an integer in 1.."),
    ("update", [True, 0, BLOB, 1, 0, 0, 0], "round must be an integer"),
    ("update", [1, -1, BLOB, 1, 0, 0, 0], "base_version must be an integer"),
    ("update", [1, 0, BLOB[:31], 1, 0, 0, 0], "blob_hash must be 32 bytes"),
    ("update", [1, 0, BLOB, 0, 0, 0, 0], "samples must be an integer in 1.."),
    ("update", [1, 0, BLOB, 1, -5, 0, 0], "loss_milli must be an integer"),
    ("update", [1, 0, BLOB, 1, 0, 1001, 0], "accuracy_milli must be an integer in 0..1000"),
    ("update", [1, 0, BLOB, 1, 0, 0, 1.5], "nonce must be an integer"),
    ("vote", [1, b"short", BLOB, True, 0], "trainer must be 32 bytes"),
    ("vote", [1, BLOB, BLOB, 1, 0], "accept must be true or false"),
    ("vote", [1, BLOB, BLOB, True, 2**31], "score_milli must be an integer"),
    ("close", [1], "close body must be [round, deadline_ms]"),
    ("close", ["1", 0], "round must be an integer"),
    ("close", [1, -1], "deadline_ms must be an integer"),
    ("mint", [1], "unknown transaction kind 'mint'"),
])
def test_fields_out_of_shape_or_bounds_are_named(kind: str, body: list, reason: str) -> None:
    assert reason in decode_tx(_resigned(kind, body), CHAIN)


def test_envelope_problems_are_named() -> None:
    assert decode_tx(b"\x00" * (MAX_TX_BYTES + 1), CHAIN) == (
        f"tx is {MAX_TX_BYTES + 1} bytes, limit is {MAX_TX_BYTES}")
    assert decode_tx(b"\xc1", CHAIN).startswith("tx is not valid msgpack")
    assert decode_tx(codec.pack([1, 2, 3]), CHAIN) == (
        "tx must be an array [kind, body, signer, signature]")
    assert decode_tx(codec.pack([1, [], b"k" * 32, b"s" * 64]), CHAIN) == (
        "kind must be a string")
    assert decode_tx(codec.pack(["close", 1, b"k" * 32, b"s" * 64]), CHAIN) == (
        "body must be an array")
    assert decode_tx(codec.pack(["close", [1], b"k" * 31, b"s" * 64]), CHAIN) == (
        "signer must be 32 bytes")
    assert decode_tx(codec.pack(["close", [1], b"k" * 32, b"s" * 63]), CHAIN) == (
        "signature must be 64 bytes")


def test_a_non_canonical_encoding_is_refused() -> None:
    kind, body, signer, signature = codec.unpack(make_close(VALIDATOR, CHAIN, 4, 0))
    # The round as a 64-bit integer instead of msgpack's shortest form.
    loose = msgpack.packb([kind, [], signer, signature], use_bin_type=True)
    loose = loose.replace(b"\x90", b"\x92\xcf" + (4).to_bytes(8, "big") + b"\x00", 1)
    assert codec.unpack(loose) == [kind, body, signer, signature]
    assert decode_tx(loose, CHAIN) == "tx is not canonically encoded"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decode_tx(data, CHAIN), str)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.integers(-(2**63), 2**64 - 1), st.binary(max_size=40),
                          st.booleans(), st.none(), st.text(max_size=5)), max_size=8),
       st.sampled_from(["register", "update", "vote", "close"]))
def test_arbitrary_signed_bodies_decode_or_are_named(body: list, kind: str) -> None:
    result = decode_tx(_resigned(kind, body), CHAIN)
    assert isinstance(result, str | Register | Update | Vote | Close)
