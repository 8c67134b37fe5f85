"""Hashing (SHA-256) and Ed25519 signatures (pynacl).

Keys travel as raw 32-byte values (hex in files); signatures are 64 bytes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

HASH_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


def sha256(data: bytes) -> bytes:
    """The project's one hash function."""
    return hashlib.sha256(data).digest()


class PrivateKey:
    """An Ed25519 signing key."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError(f"private key seed must be 32 bytes, got {len(seed)}")
        self._key = SigningKey(seed)
        self.seed = bytes(seed)
        self.public_key = bytes(self._key.verify_key)

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(bytes(SigningKey.generate()))

    @classmethod
    def from_hex(cls, text: str) -> PrivateKey:
        return cls(bytes.fromhex(text.strip()))

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte signature of ``message``."""
        return self._key.sign(message).signature


VERIFIED_CACHE_SIZE = 1 << 17
_verified: OrderedDict[bytes, None] = OrderedDict()
"""Digests of (key, signature, message) triples that verified: a transaction is checked
when it enters the mempool and again when its block executes, and the second check is
then a lookup. Verification is a pure function, so caching it cannot change a result."""


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s signature of ``message``; never raises."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    entry = hashlib.sha256(public_key + signature + message).digest()
    if entry in _verified:
        return True
    try:
        VerifyKey(public_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    _verified[entry] = None
    if len(_verified) > VERIFIED_CACHE_SIZE:
        _verified.popitem(last=False)
    return True
