"""The light client: verify blocks and state knowing nothing but the genesis file.

A light client trusts no validator. It takes the bytes a validator served and checks
them against the genesis validator keys: a block against its commit certificate, a
state value against a checkpoint certificate and a Merkle proof. These are pure
functions, without I/O, so that the CLI, trainers and tests share one verifier.
"""

from __future__ import annotations

from flobc.config import Genesis
from flobc.consensus.messages import (
    Block,
    CheckpointCertificate,
    CommitCertificate,
)
from flobc.consensus.validators import ValidatorSet
from flobc.errors import ConsensusError, InputError
from flobc.storage.merkle import MerkleProof, verify_proof


class VerificationError(ConsensusError, InputError):
    """Served data that does not verify against the genesis validator set."""


def verify_block(genesis: Genesis, block_bytes: bytes, certificate_bytes: bytes, *,
                 height: int | None = None) -> Block:
    """Return the block once its commit certificate proves a quorum committed it.

    ``height``, when given, is the height the caller asked for: a certified block from
    another height is refused too, since a validator could otherwise answer with any
    genuine block.
    """
    validators = _validator_set(genesis)
    try:
        block = Block.decode(block_bytes)
    except ValueError as exc:
        raise VerificationError(f"block does not decode: {exc}") from exc
    try:
        certificate = CommitCertificate.decode(certificate_bytes)
    except ValueError as exc:
        raise VerificationError(f"commit certificate does not decode: {exc}") from exc
    error = validators.commit_certificate_error(certificate, block)
    if error is not None:
        raise VerificationError(error)
    if height is not None and block.height != height:
        raise VerificationError(f"asked for height {height}, got a block at {block.height}")
    return block


def verify_state(genesis: Genesis, checkpoint_bytes: bytes, key: bytes, value: bytes,
                 proof_bytes: bytes) -> int:
    """Check that ``key`` maps to ``value`` in certified state.

    The checkpoint certificate proves a quorum signed the state root at its height; the
    Merkle proof ties ``key`` and ``value`` to that root. Returns the checkpoint height.
    """
    validators = _validator_set(genesis)
    try:
        certificate = CheckpointCertificate.decode(checkpoint_bytes)
    except ValueError as exc:
        raise VerificationError(f"checkpoint certificate does not decode: {exc}") from exc
    error = validators.checkpoint_certificate_error(certificate)
    if error is not None:
        raise VerificationError(error)
    try:
        proof = MerkleProof.decode(proof_bytes)
    except ValueError as exc:
        raise VerificationError(f"Merkle proof does not decode: {exc}") from exc
    if not verify_proof(certificate.state_root, key, value, proof):
        raise VerificationError(
            f"Merkle proof does not show key {key.hex()} = {value.hex()} under the state root "
            f"{certificate.state_root.hex()} of checkpoint {certificate.seq}")
    return certificate.seq


def _validator_set(genesis: Genesis) -> ValidatorSet:
    try:
        return ValidatorSet(genesis.chain_id, genesis.public_keys)
    except ValueError as exc:
        raise VerificationError(f"genesis validator set is unusable: {exc}") from exc
