"""The light client refuses every forgery a validator could serve, and only those."""

from __future__ import annotations

from pathlib import Path

import pytest

from flobc.config import Genesis, ValidatorInfo
from flobc.consensus.light import VerificationError, verify_block, verify_state
from flobc.consensus.messages import (
    Block,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    CommitCertificate,
)
from flobc.crypto import PrivateKey
from flobc.storage.db import Database
from flobc.storage.state import AppState

CHAIN = "light-test"
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
OUTSIDER = PrivateKey(b"\x99" * 32)
GENESIS = Genesis(CHAIN, 1_700_000_000_000,
                  tuple(ValidatorInfo(f"validator-{i}", k.public_key) for i, k in enumerate(KEYS)))
BLOCK = Block(7, 1_700_000_001_000, 3, (b"tx-a", b"tx-b"))


def commit_cert(block: Block, signers: list[tuple[int, PrivateKey]], *, view: int = 2,
                chain: str = CHAIN) -> bytes:
    """A commit certificate where each (index, key) pair signs as validator index."""
    digest = block.digest()
    sigs = tuple((i, Commit(view, block.height, digest, i).signed(key, chain).signature)
                 for i, key in signers)
    return CommitCertificate(view, block.height, digest, sigs).encode()


QUORUM = [(0, KEYS[0]), (2, KEYS[2]), (3, KEYS[3])]


def refused(block_bytes: bytes, cert_bytes: bytes, genesis: Genesis = GENESIS, **kw) -> str:
    with pytest.raises(VerificationError) as info:
        verify_block(genesis, block_bytes, cert_bytes, **kw)
    return str(info.value)


def test_certified_block_verifies():
    block = verify_block(GENESIS, BLOCK.encode(), commit_cert(BLOCK, QUORUM), height=7)
    assert block == BLOCK


def test_all_signers_verify():
    every = [(i, k) for i, k in enumerate(KEYS)]
    assert verify_block(GENESIS, BLOCK.encode(), commit_cert(BLOCK, every)) == BLOCK


def test_changed_transaction_is_refused():
    forged = Block(BLOCK.height, BLOCK.time_ms, BLOCK.proposer, (b"tx-a", b"tx-evil"))
    assert "digest" in refused(forged.encode(), commit_cert(BLOCK, QUORUM))


def test_block_at_other_height_than_certificate_is_refused():
    moved = Block(8, BLOCK.time_ms, BLOCK.proposer, BLOCK.txs)
    assert "certificate is for height 7, block is 8" in refused(
        moved.encode(), commit_cert(BLOCK, QUORUM))


def test_genuine_block_at_other_height_than_asked_is_refused():
    message = refused(BLOCK.encode(), commit_cert(BLOCK, QUORUM), height=9)
    assert "asked for height 9" in message


def test_signature_by_non_validator_is_refused():
    signers = [(0, KEYS[0]), (2, KEYS[2]), (3, OUTSIDER)]
    assert "1 invalid signature" in refused(BLOCK.encode(), commit_cert(BLOCK, signers))


def test_signer_index_outside_validator_set_is_refused():
    signers = [*QUORUM, (4, OUTSIDER)]
    assert "1 invalid signature" in refused(BLOCK.encode(), commit_cert(BLOCK, signers))


def test_duplicated_signer_is_refused():
    signers = [(0, KEYS[0]), (2, KEYS[2]), (2, KEYS[2])]
    assert "signed twice" in refused(BLOCK.encode(), commit_cert(BLOCK, signers))


def test_too_few_signatures_are_refused():
    signers = [(0, KEYS[0]), (2, KEYS[2])]
    assert "2 signatures, 3 needed" in refused(BLOCK.encode(), commit_cert(BLOCK, signers))


def test_signatures_from_another_chain_are_refused():
    cert = commit_cert(BLOCK, QUORUM, chain="other-chain")
    assert "3 invalid signature" in refused(BLOCK.encode(), cert)


def test_other_genesis_keys_refuse_the_block():
    tampered = Genesis(CHAIN, GENESIS.genesis_time_ms,
                       (ValidatorInfo("validator-0", OUTSIDER.public_key),
                        *GENESIS.validators[1:]))
    message = refused(BLOCK.encode(), commit_cert(BLOCK, QUORUM), genesis=tampered)
    assert "1 invalid signature" in message


def test_garbage_block_bytes_are_refused():
    assert "block does not decode" in refused(b"\xc1garbage", commit_cert(BLOCK, QUORUM))
    assert "block does not decode" in refused(b"\x93\x01\x02\x03", commit_cert(BLOCK, QUORUM))


def test_garbage_certificate_bytes_are_refused():
    assert "commit certificate does not decode" in refused(BLOCK.encode(), b"\xff" * 40)
    assert "commit certificate does not decode" in refused(BLOCK.encode(), b"")


def test_genesis_with_duplicate_keys_is_refused():
    doubled = Genesis(CHAIN, GENESIS.genesis_time_ms,
                      (GENESIS.validators[0], GENESIS.validators[0]))
    assert "genesis validator set" in refused(BLOCK.encode(), commit_cert(BLOCK, QUORUM),
                                              genesis=doubled)


# --- state proofs ----------------------------------------------------------------------


PAIRS = {b"kv/alpha": b"1", b"kv/beta": b"two", b"kv/gamma": b"\x00\xff"}
PAIRS.update({f"kv/filler-{i}".encode(): str(i).encode() for i in range(200)})


@pytest.fixture
def state(tmp_path: Path):
    """A real LevelDB state holding PAIRS, committed the way a block commits it."""
    db = Database(tmp_path / "state")
    app = AppState(db)
    overlay = app.overlay()
    for k, v in PAIRS.items():
        overlay.put(k, v)
    batch = db.batch()
    root, apply = app.stage(overlay, batch)
    db.write(batch)
    apply()
    assert app.root == root
    yield app
    db.close()


def checkpoint_cert(seq: int, root: bytes, signers: list[tuple[int, PrivateKey]]) -> bytes:
    sigs = tuple((i, Checkpoint(seq, root, i).signed(key, CHAIN).signature) for i, key in signers)
    return CheckpointCertificate(seq, root, sigs).encode()


def test_proven_value_verifies(state: AppState):
    cert = checkpoint_cert(32, state.root, QUORUM)
    for key in (b"kv/alpha", b"kv/beta", b"kv/gamma", b"kv/filler-117"):
        proof = state.prove(key)
        assert verify_state(GENESIS, cert, key, PAIRS[key], proof.encode()) == 32


def refused_state(state: AppState, *, cert: bytes | None = None, key: bytes = b"kv/beta",
                  value: bytes = b"two", proof: bytes | None = None) -> str:
    cert = checkpoint_cert(32, state.root, QUORUM) if cert is None else cert
    proof = state.prove(b"kv/beta").encode() if proof is None else proof
    with pytest.raises(VerificationError) as info:
        verify_state(GENESIS, cert, key, value, proof)
    return str(info.value)


def test_wrong_value_is_refused(state: AppState):
    assert "does not show key" in refused_state(state, value=b"three")


def test_proof_of_another_key_is_refused(state: AppState):
    assert "does not show key" in refused_state(state, key=b"kv/alpha", value=b"1")


def test_proof_against_another_root_is_refused(state: AppState):
    cert = checkpoint_cert(32, b"\x11" * 32, QUORUM)
    assert "state root 1111" in refused_state(state, cert=cert)


def test_checkpoint_with_too_few_signatures_is_refused(state: AppState):
    cert = checkpoint_cert(32, state.root, QUORUM[:2])
    assert "checkpoint certificate: 2 signatures, 3 needed" in refused_state(state, cert=cert)


def test_checkpoint_signed_by_outsider_is_refused(state: AppState):
    cert = checkpoint_cert(32, state.root, [*QUORUM[:2], (1, OUTSIDER)])
    assert "checkpoint certificate: 1 invalid signature" in refused_state(state, cert=cert)


def test_checkpoint_with_duplicated_signer_is_refused(state: AppState):
    cert = checkpoint_cert(32, state.root, [*QUORUM[:2], QUORUM[0]])
    assert "signed twice" in refused_state(state, cert=cert)


def test_checkpoint_root_swapped_after_signing_is_refused(state: AppState):
    signed = CheckpointCertificate.decode(checkpoint_cert(32, b"\x22" * 32, QUORUM))
    swapped = CheckpointCertificate(32, state.root, signed.signatures).encode()
    assert "3 invalid signature" in refused_state(state, cert=swapped)


def test_garbage_checkpoint_is_refused(state: AppState):
    assert "checkpoint certificate does not decode" in refused_state(state, cert=b"\x01\x02")


def test_garbage_proof_is_refused(state: AppState):
    assert "Merkle proof does not decode" in refused_state(state, proof=b"\x92\x01")
    assert "Merkle proof does not decode" in refused_state(state, proof=b"\xc1")
