"""End to end: a model whose update blob (about 10 MB) is bigger than a peer frame trains
through 4 validators, its blobs travelling between them in chunks.

The model is a builder on the processes' path (``package.module:function``), the chain's
``max_blob_bytes`` is raised to fit it with ``testnet init --max-blob-bytes``, and 2
trainers run one round, all as real processes on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import wait_until

from flobc.consensus.messages import MAX_FRAME
from flobc.crypto import sha256
from flobc.launch.cluster import ClusterOptions, Trainers, init_testnet
from flobc.launch.localnet import LocalNet
from flobc.protocol.genesis import GENESIS_MODEL

pytestmark = pytest.mark.slow

BUILDER = '''
import keras

def build(seed):
    """About 2.5 million float32 weights: a 10 MB update blob."""
    init = keras.initializers.GlorotUniform(seed)
    return keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Flatten(),
        keras.layers.Dense(3200, activation="relu", kernel_initializer=init),
        keras.layers.Dense(10, activation="softmax", kernel_initializer=init)])
'''
MAX_BLOB_BYTES = 16 * 1024 * 1024
ROUND_TIMEOUT_S = 300.0
"""TensorFlow loads in 6 processes, then the trainers train and the validators vote."""


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalNet, Path]]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "flobc_big_model.py").write_text(BUILDER)
    monkeypatch.setenv("PYTHONPATH", str(plugins))  # every process imports the builder
    workdir = tmp_path / "net"
    options = ClusterOptions(validators=4, trainers=2, model="flobc_big_model:build",
                             max_blob_bytes=MAX_BLOB_BYTES)
    init_testnet(workdir, options)
    local = LocalNet.open(workdir)
    trainers = Trainers(workdir, options)
    try:
        local.start_all()
        trainers.start_all()
        yield local, workdir
    finally:
        trainers.stop_all()
        local.stop_all()


def test_a_model_bigger_than_a_frame_trains_through_four_validators(
        net: tuple[LocalNet, Path]) -> None:
    local, workdir = net
    model_v0 = (workdir / GENESIS_MODEL).read_bytes()
    assert MAX_FRAME < len(model_v0) < MAX_BLOB_BYTES

    with httpx.Client(timeout=10.0) as client:
        def version_1() -> list[dict[str, Any]] | None:
            records = []
            for url in local.urls:
                try:
                    response = client.get(f"{url}/fl/models/1")
                except httpx.TransportError:
                    return None
                if response.status_code != 200:
                    return None
                records.append(response.json())
            return records

        def logs() -> str:
            return "\n".join(f"--- validator {i}\n{local.log_tail(i)}"
                             for i in range(len(local.urls)))

        records = wait_until(version_1, ROUND_TIMEOUT_S, "version 1 on every validator", logs)
        assert len({r["hash"] for r in records}) == 1, records
        assert records[0]["updates"], f"version 1 has no accepted update:\n{logs()}"
        weights = [client.get(f"{url}/fl/models/1/weights").content for url in local.urls]
    assert all(sha256(w).hex() == records[0]["hash"] for w in weights)
    assert len(weights[0]) == len(model_v0)
    for i in range(len(local.urls)):
        log = (local.configs[i].home / "validator.log").read_text(errors="replace")
        assert "not sending a frame" not in log, f"validator {i} refused to send a frame"
