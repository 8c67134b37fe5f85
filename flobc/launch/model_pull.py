"""``flobc model pull``: a committed model version as a model file, trusted only once verified.

The weights come from any of the given validators, and nothing they say is believed:
``flobc.trainer.verify.ModelStore`` checks the checkpoint certificate and the Merkle
proof of the record ``fl/model/<v>`` against the genesis validator keys, and the
weights' SHA-256 against the proven record, exactly as a trainer does before it
trains. Verification is always on: an unverified copy is one HTTP GET of
``/fl/models/{v}/weights`` away and needs no command. Only then is the model named in
genesis built (by the learner factory every trainer and validator uses), given the
weights and saved in its framework's file format (a ``.keras`` file that
``keras.models.load_model`` opens, for a Keras model).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flobc.config import ConfigError, Genesis
from flobc.consensus.light import VerificationError
from flobc.errors import LaunchError
from flobc.launch.testnet import GENESIS_MODEL
from flobc.ml.learner import Learner
from flobc.protocol.settings import FLConfig
from flobc.trainer.client import ClientError, ValidatorClient
from flobc.trainer.verify import ModelStore, VerifiedModel, verify_genesis_model

CERTIFY_WAIT_S = 30.0
"""How long to wait for a stable checkpoint to cover an existing version."""
POLL_S = 0.2

# The store and the client log each validator they skip; the error says it all.
logging.getLogger("flobc.trainer").addHandler(logging.NullHandler())


@dataclass(frozen=True)
class PulledModel:
    version: int
    hash: bytes
    checkpoint: int
    """Height of the checkpoint that certified it (0 for the genesis model)."""
    model: str
    path: Path


def build(fl: FLConfig) -> Learner:
    """The learner of the model genesis names, with its seeded initial weights."""
    # Nothing is computed here, only built and saved: oneDNN's numerics do not matter,
    # and turning it off silences the notice TensorFlow prints about them on import.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    from flobc.ml.learner import learner_for

    try:
        return learner_for(fl.model, fl.seed)
    except ValueError as exc:
        raise ConfigError(f"genesis model: {exc}") from exc


def genesis_model(genesis: Genesis, genesis_path: Path, fl: FLConfig,
                  learner: Learner) -> VerifiedModel:
    """Version 0, checked against ``model_v0_hash``: from ``genesis-model.bin`` beside the
    genesis, else the weights of ``learner``, just built from the model name and seed."""
    from flobc.ml.weights import encode_weights

    beside = genesis_path.parent / GENESIS_MODEL
    rebuilt = not beside.is_file()
    blob = encode_weights(learner.get_weights()) if rebuilt else beside.read_bytes()
    try:
        v0 = verify_genesis_model(genesis, fl.model_v0_hash, blob, max_bytes=fl.max_blob_bytes)
    except VerificationError as exc:
        source = str(beside) if not rebuilt else (
            f"version 0 rebuilt from model {fl.model!r} and seed {fl.seed} (there is no "
            f"{beside})")
        raise VerificationError(f"{source}: {exc}") from exc
    return v0


def fetch_verified(store: ModelStore, client: ValidatorClient, version: int | None,
                   wait_s: float) -> VerifiedModel:
    """Version ``version`` (None: the latest the validators report), verified."""
    if version != 0:
        status = client.status()
        if status is None:
            raise LaunchError(f"{client.current} has not executed its first block yet")
        if version is None:
            version = status.version
        elif version > status.version:
            raise LaunchError(f"model version {version} does not exist yet: {client.current} "
                           f"is at version {status.version}")
    deadline = time.monotonic() + wait_s
    while (model := store.get(version)) is None:
        if time.monotonic() >= deadline:
            raise LaunchError(f"no validator serves a checkpoint proof of model version "
                           f"{version} after {wait_s:g} s")
        time.sleep(POLL_S)
    return model


def save(learner: Learner, out: Path) -> None:
    """Write ``out`` in one step: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.",
                               suffix=learner.file_suffix)
    os.close(fd)
    try:
        learner.save(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pull_model(genesis_path: Path, urls: Sequence[str], version: int | None, out: Path, *,
               wait_s: float = CERTIFY_WAIT_S) -> PulledModel:
    """Fetch, verify and save model ``version`` (None: latest) as ``out``, a file of the
    model's framework (``.keras``, or ``.pt`` for PyTorch)."""
    if not out.parent.is_dir():
        raise LaunchError(f"{out.parent} is not a folder")
    genesis = Genesis.load(genesis_path)
    fl = FLConfig.from_genesis(genesis, genesis_path)
    learner = build(fl)
    if out.suffix != learner.file_suffix:
        raise LaunchError(f"--out {out} must end in {learner.file_suffix} (model "
                          f"{fl.model!r} is saved in its framework's file format)")
    v0 = genesis_model(genesis, genesis_path, fl, learner)
    with ValidatorClient(list(urls), max_blob_bytes=fl.max_blob_bytes) as client, \
            tempfile.TemporaryDirectory(prefix="flobc-pull-") as scratch:
        # The store keeps what it verified in a home; this one is thrown away.
        store = ModelStore(genesis, v0, client, Path(scratch), max_bytes=fl.max_blob_bytes)
        try:
            verified = fetch_verified(store, client, version, wait_s)
        except ClientError as exc:
            raise LaunchError(str(exc)) from exc
        except VerificationError as exc:
            raise VerificationError(f"{exc} (checked against the keys in {genesis_path})"
                                    ) from exc
    from flobc.ml.weights import WeightsError

    try:
        learner.set_weights(verified.weights)
    except WeightsError as exc:
        raise VerificationError(f"model version {verified.version} does not fit model "
                                f"{fl.model!r}: {exc}") from exc
    save(learner, out)
    return PulledModel(verified.version, verified.hash, verified.checkpoint, fl.model, out)
