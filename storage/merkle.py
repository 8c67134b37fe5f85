"""The bucketed Merkle tree that commits to application state, and its proofs.

Keys are spread over 65536 buckets by the first two bytes of their SHA-256. A bucket's
root is a plain binary Merkle tree over its leaves in key order (an odd node moves up
unchanged); above the buckets sits a complete binary tree of depth 16. A block that
touches a few hundred keys thus rehashes only a few hundred small buckets and their
ancestors, whatever the size of the state, and an empty subtree has a fixed hash, so
only non-empty nodes need storing.

Leaves, interior nodes and empty buckets hash under distinct one-byte domain tags, so
no node of one kind can pass for another. This module is pure (no I/O): a light client
imports it to check a proof against a state root taken from a certified block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flobc import codec
from flobc.crypto import HASH_SIZE, sha256

TOP_DEPTH = 16
BUCKETS = 1 << TOP_DEPTH
MAX_KEY_SIZE = 1024
MAX_BUCKET_PATH = 64
MAX_PROOF_SIZE = 8192

EMPTY_BUCKET = sha256(b"\x02")


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node of both the bucket trees and the top tree."""
    return sha256(b"\x01" + left + right)


def _empty_subtrees() -> tuple[bytes, ...]:
    hashes = [EMPTY_BUCKET]
    for _ in range(TOP_DEPTH):
        hashes.append(node_hash(hashes[-1], hashes[-1]))
    return tuple(hashes)


EMPTY_SUBTREE = _empty_subtrees()
"""EMPTY_SUBTREE[level]: hash of a top-tree node at ``level`` (0 = bucket) with no keys."""
EMPTY_ROOT = EMPTY_SUBTREE[TOP_DEPTH]


def leaf_hash(key: bytes, value: bytes) -> bytes:
    """The length prefix keeps (key, value) pairs unambiguous."""
    return sha256(b"\x00" + len(key).to_bytes(4, "big") + key + sha256(value))


def bucket_of(key: bytes) -> int:
    return int.from_bytes(sha256(key)[:2], "big")


def _pair_up(level: list[bytes]) -> list[bytes]:
    paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        paired.append(level[-1])
    return paired


def bucket_root(leaves: list[bytes]) -> bytes:
    """Root over a bucket's leaf hashes, which must be in key order."""
    if not leaves:
        return EMPTY_BUCKET
    level = leaves
    while len(level) > 1:
        level = _pair_up(level)
    return level[0]


def update_top(bucket_roots: Mapping[int, bytes], levels: Sequence[Mapping[int, bytes]]
               ) -> list[dict[int, bytes]]:
    """New hashes of the top-tree nodes above changed buckets.

    ``bucket_roots`` maps each changed bucket to its new root; ``levels[level]`` maps
    index to hash for the current non-empty nodes of each level (0 = buckets). Returns,
    per level 0..16, the new hash of every node on the changed paths (level 16 holds the
    root), so a block rehashes only its dirty paths, never the whole tree.
    """
    updates = [dict(bucket_roots)]
    for level in range(TOP_DEPTH):
        dirty, current, empty = updates[level], levels[level], EMPTY_SUBTREE[level]
        parents: dict[int, bytes] = {}
        for index, h in dirty.items():
            if index >> 1 in parents:
                continue
            sibling = dirty.get(index ^ 1) or current.get(index ^ 1, empty)
            parents[index >> 1] = node_hash(sibling, h) if index & 1 else node_hash(h, sibling)
        updates.append(parents)
    return updates


def top_siblings(bucket: int, node: Callable[[int, int], bytes]) -> tuple[bytes, ...]:
    """The 16 sibling hashes on the path from ``bucket`` up to the root, bottom first."""
    return tuple(node(level, (bucket >> level) ^ 1) for level in range(TOP_DEPTH))


@dataclass(frozen=True)
class MerkleProof:
    """Evidence that ``key`` has a given value under a state root.

    ``bucket_path`` lists, from the leaf up, each sibling hash inside the bucket and
    whether it sits on the left; ``top_siblings`` are the 16 siblings above the bucket.
    """

    key: bytes
    bucket_path: tuple[tuple[bytes, bool], ...]
    top_siblings: tuple[bytes, ...]

    def encode(self) -> bytes:
        return codec.pack([self.key, [[h, left] for h, left in self.bucket_path],
                           list(self.top_siblings)])

    @classmethod
    def decode(cls, data: bytes) -> MerkleProof:
        """Parse a proof, raising ValueError that names the first malformed field."""
        raw = codec.unpack(data, MAX_PROOF_SIZE)
        if not isinstance(raw, list) or len(raw) != 3:
            raise ValueError("proof: expected [key, bucket_path, top_siblings]")
        key, path, top = raw
        _check(key, path, top)
        return cls(key, tuple((h, left) for h, left in path), tuple(top))


def _is_hash(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _check(key: Any, path: Any, top: Any) -> None:
    if not isinstance(key, bytes) or not 0 < len(key) <= MAX_KEY_SIZE:
        raise ValueError(f"proof.key: expected 1 to {MAX_KEY_SIZE} bytes")
    if not isinstance(path, list | tuple) or len(path) > MAX_BUCKET_PATH:
        raise ValueError(f"proof.bucket_path: expected at most {MAX_BUCKET_PATH} steps")
    for step in path:
        if (not isinstance(step, list | tuple) or len(step) != 2 or not _is_hash(step[0])
                or type(step[1]) is not bool):
            raise ValueError("proof.bucket_path: each step must be [32-byte hash, bool]")
    if (not isinstance(top, list | tuple) or len(top) != TOP_DEPTH
            or not all(_is_hash(h) for h in top)):
        raise ValueError(f"proof.top_siblings: expected {TOP_DEPTH} hashes of 32 bytes")


def make_proof(key: bytes, bucket: Sequence[tuple[bytes, bytes]],
               top: Sequence[bytes]) -> MerkleProof | None:
    """Proof for ``key`` from its bucket's (key, leaf hash) pairs in key order and the
    bucket's top siblings; None when the key is not in the bucket."""
    keys = [k for k, _ in bucket]
    try:
        index = keys.index(key)
    except ValueError:
        return None
    level = [leaf for _, leaf in bucket]
    path = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append((level[sibling], sibling < index))
        level = _pair_up(level)
        index >>= 1
    return MerkleProof(key, tuple(path), tuple(top))


def verify_proof(root: bytes, key: bytes, value: bytes, proof: MerkleProof) -> bool:
    """True when ``proof`` shows ``key`` maps to ``value`` under ``root``; never raises."""
    if not isinstance(proof, MerkleProof) or not isinstance(value, bytes):
        return False
    if not _is_hash(root) or proof.key != key:
        return False
    try:
        _check(proof.key, proof.bucket_path, proof.top_siblings)
    except ValueError:
        return False
    h = leaf_hash(key, value)
    for sibling, sibling_is_left in proof.bucket_path:
        h = node_hash(sibling, h) if sibling_is_left else node_hash(h, sibling)
    index = bucket_of(key)
    for sibling in proof.top_siblings:
        h = node_hash(sibling, h) if index & 1 else node_hash(h, sibling)
        index >>= 1
    return h == root
