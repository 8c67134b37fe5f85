"""The validator set from genesis: quorum sizes, primaries and signature checks.

Everything that verifies a signed message or a certificate goes through here, so a
light client needs nothing but this class and the genesis keys.
"""

from __future__ import annotations

from functools import cached_property

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from flobc.consensus.messages import (
    Block,
    CheckpointCertificate,
    CommitCertificate,
    Message,
)
from flobc.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE


class ValidatorSet:
    """n validators tolerating f = (n-1)//3 faults; quorums of n-f intersect in f+1."""

    def __init__(self, chain_id: str, public_keys: list[bytes] | tuple[bytes, ...]) -> None:
        if not public_keys:
            raise ValueError("a validator set needs at least one validator")
        for i, key in enumerate(public_keys):
            if len(key) != PUBLIC_KEY_SIZE:
                raise ValueError(f"validator {i}: public key must be {PUBLIC_KEY_SIZE} bytes")
        if len(set(public_keys)) != len(public_keys):
            raise ValueError("validator public keys must be distinct")
        self.chain_id = chain_id
        self.public_keys = tuple(bytes(k) for k in public_keys)
        self.n = len(self.public_keys)
        self.f = (self.n - 1) // 3
        self.quorum = self.n - self.f
        self.weak_quorum = self.f + 1

    @cached_property
    def _verify_keys(self) -> tuple[VerifyKey, ...]:
        return tuple(VerifyKey(k) for k in self.public_keys)

    def primary(self, view: int) -> int:
        return view % self.n

    def check_signature(self, replica: int, message: bytes, signature: bytes) -> bool:
        if not 0 <= replica < self.n or len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._verify_keys[replica].verify(message, signature)
        except (BadSignatureError, ValueError):
            return False
        return True

    def verify(self, msg: Message) -> bool:
        """True when ``msg`` is signed by the validator it names."""
        return self.check_signature(msg.replica, msg.signing_bytes(self.chain_id),  # type: ignore[attr-defined]
                                    msg.signature)  # type: ignore[attr-defined]

    def _quorum_error(self, signers: list[int], valid: list[bool], what: str) -> str | None:
        if len(set(signers)) != len(signers):
            return f"{what}: a validator signed twice"
        good = sum(valid)
        if good != len(valid):
            return f"{what}: {len(valid) - good} invalid signature(s)"
        if good < self.quorum:
            return f"{what}: {good} signatures, {self.quorum} needed"
        return None

    def commit_certificate_error(self, cert: CommitCertificate,
                                 block: Block | None = None) -> str | None:
        """Why ``cert`` does not certify ``block`` (or its own digest), or None if it does."""
        if block is not None:
            if block.height != cert.seq:
                return f"certificate is for height {cert.seq}, block is {block.height}"
            if block.digest() != cert.digest:
                return "block does not match the certificate's digest"
        commits = cert.commits()
        return self._quorum_error([c.replica for c in commits],
                                  [self.verify(c) for c in commits], "commit certificate")

    def checkpoint_certificate_error(self, cert: CheckpointCertificate) -> str | None:
        checkpoints = cert.checkpoints()
        return self._quorum_error([c.replica for c in checkpoints],
                                  [self.verify(c) for c in checkpoints], "checkpoint certificate")
