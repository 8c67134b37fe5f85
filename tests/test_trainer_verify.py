"""A trainer trusts a model version only with a quorum certificate, a Merkle proof and
matching weights, all checked with real keys against a real ledger; and it keeps what
it verified, checked again, across restarts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from loopback_http import Reply, Request, bytes_reply, dead_url, json_reply

from flobc import codec
from flobc.config import Genesis, ValidatorInfo
from flobc.consensus.light import VerificationError
from flobc.consensus.messages import (
    Block,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    CommitCertificate,
)
from flobc.crypto import PrivateKey, sha256
from flobc.ml.weights import encode_weights, spec
from flobc.protocol.state import ModelRecord, model_key, write_model
from flobc.storage.ledger import Ledger
from flobc.trainer.client import ModelProof, ValidatorClient
from flobc.trainer.verify import ModelStore, verify_genesis_model, verify_model

CHAIN = "verify-test"
KEYS = [PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
OUTSIDER = PrivateKey(b"\x77" * 32)
GENESIS = Genesis(CHAIN, 1_700_000_000_000,
                  tuple(ValidatorInfo(f"validator-{i}", k.public_key) for i, k in enumerate(KEYS)))
MAX_BYTES = 1 << 20
RNG = np.random.default_rng(7)
V0 = [RNG.normal(size=(3, 4)).astype(np.float32), RNG.normal(size=(4,)).astype(np.float32)]
V1 = [w + np.float32(0.5) for w in V0]
V2 = [w - np.float32(0.25) for w in V0]
BLOBS = {1: encode_weights(V1), 2: encode_weights(V2)}
WRONG_SHAPE = encode_weights([np.zeros((4, 3), np.float32), np.zeros(4, np.float32)])
CHECKPOINT_HEIGHT = 16


def sign_checkpoint(seq: int, root: bytes, keys: list[tuple[int, PrivateKey]]) -> bytes:
    sigs = tuple((i, Checkpoint(seq, root, i).signed(k, CHAIN).signature) for i, k in keys)
    return CheckpointCertificate(seq, root, sigs).encode()


QUORUM = [(0, KEYS[0]), (1, KEYS[1]), (3, KEYS[3])]


class Chain:
    """A real ledger holding model records (and odd ones), with a signed checkpoint."""

    def __init__(self, path: Path) -> None:
        self.ledger = Ledger(path)
        overlay = self.ledger.state.overlay()
        for version, blob in BLOBS.items():
            write_model(overlay, ModelRecord(version, sha256(blob), version, 10 + version,
                                             1_700_000_000_000 + version, version - 1))
        # Certified but odd records, to show each check does its own job:
        overlay.put(model_key(3), overlay.get(model_key(2)))  # key 3 holds version 2's record
        write_model(overlay, ModelRecord(5, sha256(WRONG_SHAPE), 5, 15, 0, 4))
        for i in range(50):
            overlay.put(f"fl/filler/{i}".encode(), bytes([i]))
        block = Block(1, 1_700_000_000_500, 0, ())
        digest = block.digest()
        cert = CommitCertificate(0, 1, digest, tuple(
            (i, Commit(0, 1, digest, i).signed(k, CHAIN).signature) for i, k in QUORUM))
        self.ledger.commit_block(1, block.encode(), cert.encode(), digest, block.time_ms, [],
                                 [], overlay, {sha256(b): b for b in (*BLOBS.values(),
                                                                      WRONG_SHAPE)})
        self.checkpoint = sign_checkpoint(CHECKPOINT_HEIGHT, self.ledger.state.root, QUORUM)

    def served(self, version: int) -> ModelProof:
        key = model_key(version)
        return ModelProof(key, self.ledger.state.get(key),
                          self.ledger.state.prove(key).encode(), self.checkpoint)

    def respond(self, request: Request) -> Reply:
        """What an honest validator's API answers for this ledger."""
        parts = request.path.strip("/").split("/")
        if parts[:2] != ["fl", "models"] or len(parts) != 4:
            return json_reply(404, {"detail": "not here"})
        key = model_key(int(parts[2]))
        value = self.ledger.state.get(key)
        if value is None:
            return json_reply(404, {"detail": "no such version"})
        if parts[3] == "weights":
            return bytes_reply(self.ledger.blob(codec.unpack(value)["hash"]))
        return json_reply(200, {"key": key.hex(), "value": value.hex(),
                                "proof": self.ledger.state.prove(key).encode().hex(),
                                "checkpoint": {"seq": CHECKPOINT_HEIGHT,
                                               "certificate": self.checkpoint.hex()}})


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = Chain(tmp_path / "ledger")
    yield c
    c.ledger.close()


def refused(served: ModelProof, blob: bytes, version: int = 1,
            genesis: Genesis = GENESIS) -> str:
    with pytest.raises(VerificationError) as info:
        verify_model(genesis, version, served, blob, max_bytes=MAX_BYTES, expected=spec(V0))
    return str(info.value)


def test_a_certified_model_verifies(chain: Chain):
    model = verify_model(GENESIS, 1, chain.served(1), BLOBS[1], max_bytes=MAX_BYTES,
                         expected=spec(V0))
    assert model.version == 1 and model.hash == sha256(BLOBS[1])
    assert model.checkpoint == CHECKPOINT_HEIGHT
    for got, want in zip(model.weights, V1, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_tampered_weights_are_refused(chain: Chain):
    blob = bytearray(BLOBS[1])
    blob[-1] ^= 1
    message = refused(chain.served(1), bytes(blob))
    assert f"certified record says {sha256(BLOBS[1]).hex()}" in message


def test_weights_of_another_certified_version_are_refused(chain: Chain):
    assert "weights have SHA-256" in refused(chain.served(1), BLOBS[2])


def test_a_tampered_record_is_refused(chain: Chain):
    served = chain.served(1)
    record = codec.unpack(served.value)
    record["hash"] = sha256(BLOBS[2])
    message = refused(replace(served, value=codec.pack(record)), BLOBS[2])
    assert "Merkle proof does not show key" in message


def test_another_genesis_refuses_the_certificate(chain: Chain):
    other = Genesis(CHAIN, GENESIS.genesis_time_ms,
                    (ValidatorInfo("validator-0", OUTSIDER.public_key), *GENESIS.validators[1:]))
    assert "checkpoint certificate: 1 invalid signature" in refused(
        chain.served(1), BLOBS[1], genesis=other)
    renamed = Genesis("another-chain", GENESIS.genesis_time_ms, GENESIS.validators)
    assert "checkpoint certificate: 3 invalid signature" in refused(
        chain.served(1), BLOBS[1], genesis=renamed)


def test_a_checkpoint_without_a_quorum_is_refused(chain: Chain):
    cert = sign_checkpoint(CHECKPOINT_HEIGHT, chain.ledger.state.root, QUORUM[:2])
    assert "2 signatures, 3 needed" in refused(replace(chain.served(1), checkpoint=cert),
                                               BLOBS[1])


def test_a_proof_of_another_version_is_refused(chain: Chain):
    assert "proof is for state key" in refused(chain.served(2), BLOBS[2], version=1)


def test_a_certified_record_of_another_version_is_refused(chain: Chain):
    assert "certified record is for another version" in refused(chain.served(3), BLOBS[2],
                                                                  version=3)


def test_certified_weights_that_do_not_fit_the_model_are_refused(chain: Chain):
    assert "do not fit the model" in refused(chain.served(5), WRONG_SHAPE, version=5)


def test_the_genesis_model_must_match_genesis():
    blob = encode_weights(V0)
    model = verify_genesis_model(GENESIS, sha256(blob), blob, max_bytes=MAX_BYTES)
    assert model.version == 0 and np.array_equal(model.weights[0], V0[0])
    with pytest.raises(VerificationError, match="names .* \\(model_v0_hash\\)"):
        verify_genesis_model(GENESIS, sha256(blob), BLOBS[1], max_bytes=MAX_BYTES)


# --- the store: fetch from validators, skip forgers, cache across restarts ---------------


def store(home: Path, *urls: str) -> ModelStore:
    blob = encode_weights(V0)
    client = ValidatorClient(list(urls), passes=1, backoff_s=0.01, max_blob_bytes=MAX_BYTES)
    return ModelStore(GENESIS, verify_genesis_model(GENESIS, sha256(blob), blob,
                                                    max_bytes=MAX_BYTES),
                      client, home, max_bytes=MAX_BYTES)


def test_a_restarted_trainer_reads_verified_models_from_its_cache(chain, serve, tmp_path):
    honest = serve(chain.respond)
    first = store(tmp_path, honest.url).get(1)
    assert first is not None and first.hash == sha256(BLOBS[1])
    assert honest.paths() == ["/fl/models/1/proof", "/fl/models/1/weights"]
    again = store(tmp_path, dead_url()).get(1)  # no validator reachable: from the cache
    assert again is not None and np.array_equal(again.weights[1], V1[1])
    assert len(honest.requests) == 2


def test_a_tampered_cache_is_not_trusted_but_fetched_again(chain, serve, tmp_path):
    honest = serve(chain.respond)
    assert store(tmp_path, honest.url).get(2) is not None
    (cached,) = (tmp_path / "models").iterdir()
    data = bytearray(cached.read_bytes())
    data[-1] ^= 1  # the last byte belongs to the weights
    cached.write_bytes(bytes(data))
    model = store(tmp_path, honest.url).get(2)
    assert model is not None and np.array_equal(model.weights[0], V2[0])
    assert honest.paths().count("/fl/models/2/weights") == 2


def test_a_forging_validator_is_skipped_for_an_honest_one(chain, serve, tmp_path):
    def forge(request: Request) -> Reply:
        if request.path.endswith("/weights"):
            return bytes_reply(BLOBS[2])
        return chain.respond(request)
    forger, honest = serve(forge), serve(chain.respond)
    model = store(tmp_path, forger.url, honest.url).get(1)
    assert model is not None and model.hash == sha256(BLOBS[1])
    assert honest.paths() == ["/fl/models/1/proof", "/fl/models/1/weights"]


def test_when_every_validator_forges_the_model_is_refused(chain, serve, tmp_path):
    def forge(request: Request) -> Reply:
        answer = chain.respond(request)
        if request.path.endswith("/proof"):
            data = json.loads(answer[2])
            data["checkpoint"]["certificate"] = sign_checkpoint(
                CHECKPOINT_HEIGHT, chain.ledger.state.root, [(2, OUTSIDER), *QUORUM[:2]]).hex()
            return json_reply(200, data)
        return answer
    a, b = serve(forge), serve(forge)
    with pytest.raises(VerificationError) as info:
        store(tmp_path, a.url, b.url).get(1)
    message = str(info.value)
    assert "no validator served a verifiable model version 1" in message
    assert "checkpoint certificate: 1 invalid signature" in message
    assert a.url in message and b.url in message
    assert not (tmp_path / "models").exists()


def test_an_uncertified_version_is_not_there_yet(chain, serve, tmp_path):
    honest = serve(chain.respond)
    assert store(tmp_path, honest.url).get(9) is None


def test_version_zero_needs_no_validator(tmp_path):
    model = store(tmp_path, dead_url()).get(0)
    assert model is not None and np.array_equal(model.weights[0], V0[0])
