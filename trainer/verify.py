"""Certified model versions: fetched from any validator, trusted only once verified.

A trainer trains on a model only after checking, with the genesis keys alone, that a
quorum of validators certified it: the checkpoint certificate and the Merkle proof
show the record ``fl/model/<v>`` in certified state, and the weights' SHA-256 equals
the record's hash. Version 0 needs no validator at all: ``genesis-model.bin`` must
hash to ``model_v0_hash`` in genesis. A validator that serves anything else is skipped
for the next one.

Verified versions are kept in the trainer's home with their proofs, so a restart does
not fetch them again; the cache is verified again when read, so it is never a trust
root of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flobc import codec
from flobc.config import Genesis
from flobc.consensus.light import VerificationError
from flobc.crypto import sha256
from flobc.ml.weights import Spec, WeightsError, decode_weights, spec
from flobc.protocol.state import model_key, verify_model_record
from flobc.trainer.client import ModelProof, ValidatorClient
from flobc.trainer.files import write_atomic

log = logging.getLogger("flobc.trainer.verify")

CACHE_DIR = "models"
PROOF_SLACK_BYTES = 64 * 1024


@dataclass(frozen=True)
class VerifiedModel:
    version: int
    hash: bytes
    weights: list[np.ndarray]
    checkpoint: int
    """Height of the checkpoint that certified it (0 for the genesis model)."""


def verify_genesis_model(genesis: Genesis, model_v0_hash: bytes, blob: bytes, *,
                         max_bytes: int) -> VerifiedModel:
    """Version 0 from ``genesis-model.bin``: its hash must be the one genesis names."""
    digest = sha256(blob)
    if digest != model_v0_hash:
        raise VerificationError(
            f"genesis model has SHA-256 {digest.hex()}, but genesis {genesis.chain_id!r} "
            f"names {model_v0_hash.hex()} (model_v0_hash)")
    try:
        weights = decode_weights(blob, max_bytes=max_bytes)
    except WeightsError as exc:
        raise VerificationError(f"genesis model does not decode: {exc}") from exc
    return VerifiedModel(0, digest, weights, 0)


def verify_model(genesis: Genesis, version: int, served: ModelProof, blob: bytes, *,
                 max_bytes: int, expected: Spec) -> VerifiedModel:
    """Model ``version`` once its proof, record and weights all check out."""
    key = model_key(version)
    if served.key != key:
        raise VerificationError(
            f"model {version}: proof is for state key {served.key.hex()}, not {key.hex()}")
    record, height = verify_model_record(genesis, version, served.value, served.checkpoint,
                                         served.proof)
    digest = sha256(blob)
    if digest != record.hash:
        raise VerificationError(
            f"model {version}: weights have SHA-256 {digest.hex()}, but the certified "
            f"record says {record.hash.hex()}")
    try:
        weights = decode_weights(blob, max_bytes=max_bytes, expected=expected)
    except WeightsError as exc:
        raise VerificationError(f"model {version}: certified weights do not fit the "
                                f"model: {exc}") from exc
    return VerifiedModel(version, digest, weights, height)


class ModelStore:
    """Verified model versions: from the home's cache, or fetched from validators."""

    def __init__(self, genesis: Genesis, genesis_model: VerifiedModel, client: ValidatorClient,
                 home: Path, *, max_bytes: int) -> None:
        self.genesis = genesis
        self.client = client
        self.cache = home / CACHE_DIR
        self.max_bytes = max_bytes
        self._genesis_model = genesis_model
        self._spec = spec(genesis_model.weights)

    def get(self, version: int) -> VerifiedModel | None:
        """Version ``version``, verified; None while no checkpoint certifies it yet.

        Raises ``VerificationError`` when every validator served something that does not
        verify, and ``ClientError`` when none answers.
        """
        if version == 0:
            return self._genesis_model
        cached = self._load(version)
        if cached is not None:
            return cached
        problems: dict[str, str] = {}
        for _ in self.client.urls:
            served = self.client.model_proof(version)
            url = self.client.current
            if served is None:
                # Not certified yet, or this validator lags: ask the next one next time.
                self.client.skip_current()
                return None
            blob = self.client.weights(version)
            url = self.client.current
            try:
                if blob is None:
                    raise VerificationError(f"model {version}: weights are not served")
                model = verify_model(self.genesis, version, served, blob,
                                     max_bytes=self.max_bytes, expected=self._spec)
            except VerificationError as exc:
                problems[url] = str(exc)
                log.warning("validator %s served an unverifiable model: %s", url, exc)
                self.client.skip_current()
                continue
            self._save(version, served, blob)
            return model
        raise VerificationError(f"no validator served a verifiable model version {version}: "
                                + "; ".join(f"{u}: {p}" for u, p in problems.items()))

    def _path(self, version: int) -> Path:
        return self.cache / f"v{version:08d}.msgpack"

    def _save(self, version: int, served: ModelProof, blob: bytes) -> None:
        write_atomic(self._path(version), codec.pack(
            [served.key, served.value, served.proof, served.checkpoint, blob]))

    def _load(self, version: int) -> VerifiedModel | None:
        path = self._path(version)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            key, value, proof, checkpoint, blob = codec.unpack(
                raw, max_size=self.max_bytes + PROOF_SLACK_BYTES)
            return verify_model(self.genesis, version, ModelProof(key, value, proof, checkpoint),
                                blob, max_bytes=self.max_bytes, expected=self._spec)
        except (codec.DecodeError, VerificationError, TypeError, ValueError) as exc:
            log.warning("cached model %s does not verify (%s); fetching it again", path, exc)
            path.unlink(missing_ok=True)
            return None
