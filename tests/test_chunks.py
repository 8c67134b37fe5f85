"""Blob chunks: their strict wire form, and putting a blob back together from them."""

from __future__ import annotations

import os

import pytest

from flobc import codec
from flobc.consensus.chunks import Assembler, chunks_of, split_blobs
from flobc.consensus.messages import (
    CHUNK_BYTES,
    MAX_FRAME,
    BlobChunk,
    MessageError,
    decode_message,
    encode_message,
)
from flobc.crypto import sha256

BLOB = os.urandom(3 * CHUNK_BYTES + 12_345)
DIGEST = sha256(BLOB)


def frame(*fields: object) -> bytes:
    return codec.pack(["blobchunk", *fields])


def test_chunks_cover_the_blob_in_order_and_each_fits_a_frame() -> None:
    pieces = list(chunks_of(BLOB, 2))
    assert [c.offset for c in pieces] == [0, CHUNK_BYTES, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES]
    assert b"".join(c.data for c in pieces) == BLOB
    for chunk in pieces:
        wire = encode_message(chunk)
        assert len(wire) < MAX_FRAME
        assert decode_message(wire) == chunk
    assert {(c.digest, c.total, c.replica) for c in pieces} == {(DIGEST, len(BLOB), 2)}


@pytest.mark.parametrize(("fields", "problem"), [
    ((DIGEST[:31], 0, 10, b"x" * 10, 0), "digest: expected 32 bytes"),
    ((DIGEST, 1, 10, b"x" * 9, 0), "offset: 1 is not a multiple"),
    ((DIGEST, CHUNK_BYTES, CHUNK_BYTES, b"x", 0), "is not a multiple of .* below total"),
    ((DIGEST, 0, 10, b"x" * 9, 0), "data: 9 bytes at offset 0 of 10, expected 10"),
    ((DIGEST, 0, 2 * CHUNK_BYTES, b"x" * 10, 0), f"expected {CHUNK_BYTES}"),
    ((DIGEST, 0, 2 * CHUNK_BYTES, b"x" * (CHUNK_BYTES + 1), 0), "exceeds"),
    ((DIGEST, 0, 0, b"", 0), "below total 0"),
    ((DIGEST, -1, 10, b"x" * 10, 0), "offset: expected a non-negative integer"),
    ((DIGEST, 0, True, b"x", 0), "total: expected a non-negative integer"),
    ((DIGEST, 0, 1, "x", 0), "data: expected bytes"),
    ((DIGEST, 0, 1, b"x"), "expected 5 fields"),
])
def test_a_malformed_chunk_is_refused_naming_the_field(fields: tuple, problem: str) -> None:
    with pytest.raises(MessageError, match=problem):
        decode_message(frame(*fields))


def test_small_blobs_travel_whole_within_the_budget_and_big_ones_as_chunks() -> None:
    small, big = b"s" * 100, b"b" * (CHUNK_BYTES + 1)
    assert split_blobs([small, big, small], 150) == ([small], [big, small])
    assert split_blobs([small, small], 200) == ([small, small], [])


def assemble(assembler: Assembler, pieces: list[BlobChunk], sender: int = 1) -> list[bytes]:
    return [b for c in pieces if (b := assembler.add(sender, c)) is not None]


def test_chunks_in_any_order_and_repeated_give_the_blob_once() -> None:
    assembler = Assembler(len(BLOB))
    pieces = list(chunks_of(BLOB, 1))
    shuffled = [pieces[2], pieces[0], pieces[2], pieces[3], pieces[0], pieces[1]]
    assert assemble(assembler, shuffled) == [BLOB]
    assert assembler.held_bytes() == 0
    assert not assembler.assembling(DIGEST)


def test_a_blob_that_does_not_match_its_digest_is_refused_and_forgotten() -> None:
    assembler = Assembler(len(BLOB))
    pieces = list(chunks_of(BLOB, 1))
    forged = BlobChunk(DIGEST, pieces[1].offset, len(BLOB), b"\0" * CHUNK_BYTES, 1)
    assert assemble(assembler, [pieces[0], forged, *pieces[2:]]) == []
    assert assembler.refused == 1
    assert assembler.held_bytes() == 0
    assert assemble(assembler, pieces) == [BLOB], "honest chunks still make the blob"


def test_chunks_of_a_blob_over_the_limit_are_refused_before_anything_is_kept() -> None:
    assembler = Assembler(len(BLOB) - 1)
    assert assemble(assembler, list(chunks_of(BLOB, 1))) == []
    assert assembler.refused == 4
    assert assembler.held_bytes() == 0


def test_each_peer_spoils_only_its_own_copy() -> None:
    assembler = Assembler(len(BLOB))
    pieces = list(chunks_of(BLOB, 1))
    forged = BlobChunk(DIGEST, 0, len(BLOB), b"\0" * CHUNK_BYTES, 2)
    assembler.add(2, forged)
    assembler.add(1, pieces[0])
    for chunk in pieces[1:]:
        assert assembler.add(2, chunk) is None, "validator 2's copy has a forged chunk"
    assert assemble(assembler, pieces[1:], sender=1) == [BLOB]


def test_a_changed_total_starts_the_peers_copy_over() -> None:
    assembler = Assembler(2 * len(BLOB))
    pieces = list(chunks_of(BLOB, 1))
    assembler.add(1, BlobChunk(DIGEST, 0, len(BLOB) + CHUNK_BYTES, pieces[0].data, 1))
    assert assemble(assembler, pieces) == [BLOB]


def test_a_peer_keeps_a_bounded_number_and_size_of_partial_blobs() -> None:
    assembler = Assembler(len(BLOB), peer_partials=2)
    blobs = [os.urandom(2 * CHUNK_BYTES) for _ in range(3)]
    for blob in blobs:
        assembler.add(1, next(chunks_of(blob, 1)))
    assert [assembler.assembling(sha256(b)) for b in blobs] == [False, True, True]
    assert assembler.held_bytes() == 2 * CHUNK_BYTES

    by_size = Assembler(len(BLOB), peer_bytes=CHUNK_BYTES + 1)
    first, second = (list(chunks_of(b, 1)) for b in blobs[:2])
    assert assemble(by_size, [first[0], *second]) == [blobs[1]], "the newest keeps its room"
    assert not by_size.assembling(sha256(blobs[0]))
    assert by_size.held_bytes() == 0


def test_partial_blobs_nobody_needs_are_dropped() -> None:
    assembler = Assembler(len(BLOB))
    other = os.urandom(2 * CHUNK_BYTES)
    assembler.add(1, next(chunks_of(BLOB, 1)))
    assembler.add(2, next(chunks_of(other, 2)))
    assert assembler.progressed() == {DIGEST, sha256(other)}
    assert assembler.progressed() == set()
    assembler.keep_only({DIGEST})
    assert assembler.assembling(DIGEST) and not assembler.assembling(sha256(other))
    assembler.forget(DIGEST)
    assert assembler.held_bytes() == 0
