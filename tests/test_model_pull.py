"""``flobc model pull`` against a real learning testnet: 4 validator and 4 trainer
processes on loopback, stopped training once version 1 is certified. The pulled file
must load in Keras with exactly the committed weights, and nothing that does not
verify against the genesis keys may be written."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from flobc.config import Genesis, ValidatorInfo
from flobc.crypto import PrivateKey, sha256
from flobc.launch.cluster import ClusterOptions, Trainers, init_testnet
from flobc.launch.localnet import LocalNet
from flobc.ml.weights import encode_weights

pytestmark = pytest.mark.slow

CERTIFIED_TIMEOUT_S = 300.0
POLL_S = 0.2


def flobc(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flobc", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def dead_url() -> str:
    """The URL of a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def certified(url: str, version: int) -> bool:
    """True once the validator serves a checkpoint proof of model ``version``."""
    try:
        return httpx.get(f"{url}/fl/models/{version}/proof", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNet]:
    """A learning testnet whose validators have certified model version 1."""
    workdir = tmp_path_factory.mktemp("pull") / "net"
    options = ClusterOptions()
    init_testnet(workdir, options)
    testnet = LocalNet.open(workdir)
    trainers = Trainers(workdir, options)
    try:
        testnet.start_all()
        trainers.start_all()
        deadline = time.monotonic() + CERTIFIED_TIMEOUT_S
        while not certified(testnet.urls[0], 1):
            assert time.monotonic() < deadline, (
                f"model version 1 not certified after {CERTIFIED_TIMEOUT_S:g} s:\n"
                f"{testnet.log_tail(0)}")
            time.sleep(POLL_S)
        trainers.stop_all()  # the CPU is for the pulls now
        yield testnet
    finally:
        trainers.stop_all()
        testnet.stop_all()


def committed(url: str, version: int) -> tuple[str, bytes]:
    """The committed hash (hex) and the weights blob of ``version``."""
    record = httpx.get(f"{url}/fl/models/{version}", timeout=5).json()
    blob = httpx.get(f"{url}/fl/models/{version}/weights", timeout=5).content
    return record["hash"], blob


def test_pull_writes_a_keras_file_with_the_committed_weights(net: LocalNet, tmp_path: Path):
    out = tmp_path / "model.keras"
    done = flobc("model", "pull", "--validator", dead_url(), "--validator", net.urls[1],
                 "--genesis", net.workdir / "genesis.toml", "--version", 1, "--out", out,
                 "--verify")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    record_hash, blob = committed(net.urls[2], 1)
    assert f"model version 1 verified against {net.workdir / 'genesis.toml'}" in done.stdout
    assert record_hash in done.stdout

    import keras

    from flobc.ml.data import load_dataset, split

    model = keras.models.load_model(out)
    assert model.name == "mnist_cnn"
    weights = [np.asarray(w) for w in model.get_weights()]
    assert encode_weights(weights) == blob
    assert sha256(blob).hex() == record_hash
    test = split(load_dataset(), seed=0).test
    assert model.evaluate(test.x, test.y, verbose=0, return_dict=True)["accuracy"] > 0.2


def test_pull_latest_rebuilds_version_0_from_genesis_alone(net: LocalNet, tmp_path: Path):
    genesis = tmp_path / "genesis.toml"  # without genesis-model.bin beside it
    shutil.copy(net.workdir / "genesis.toml", genesis)
    out = tmp_path / "latest.keras"
    done = flobc("model", "pull", "--validator", net.urls[0], "--genesis", genesis,
                 "--version", "latest", "--out", out)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    version = int(first.split()[2])
    assert version >= 1
    import keras

    record_hash, blob = committed(net.urls[0], version)
    assert record_hash in first
    assert encode_weights([np.asarray(w) for w in keras.models.load_model(out).get_weights()]
                          ) == blob


def test_pull_refuses_a_model_the_genesis_keys_did_not_certify(net: LocalNet, tmp_path: Path):
    genesis = Genesis.load(net.workdir / "genesis.toml")
    impostors = tuple(ValidatorInfo(v.name, PrivateKey.generate().public_key)
                      for v in genesis.validators)
    tampered = tmp_path / "genesis.toml"
    tampered.write_text(replace(genesis, validators=impostors).to_toml())
    shutil.copy(net.workdir / "genesis-model.bin", tmp_path / "genesis-model.bin")
    out = tmp_path / "model.keras"
    done = flobc("model", "pull", "--validator", net.urls[0], "--validator", net.urls[3],
                 "--genesis", tampered, "--version", 1, "--out", out)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("flobc: error: no validator served a verifiable model "
                               "version 1"), lines[0]
    assert re.search(r"checkpoint certificate: [34] invalid signature\(s\)", lines[0]), lines[0]
    assert f"checked against the keys in {tampered}" in lines[0]
    assert set(tmp_path.iterdir()) == {tampered, tmp_path / "genesis-model.bin"}, "no output"


def test_pull_of_a_version_not_committed_yet_fails_clearly(net: LocalNet, tmp_path: Path):
    out = tmp_path / "model.keras"
    done = flobc("model", "pull", "--validator", net.urls[0], "--genesis",
                 net.workdir / "genesis.toml", "--version", 1000, "--out", out)
    assert done.returncode == 1, done
    assert done.stderr.startswith("flobc: error: model version 1000 does not exist yet"), \
        done.stderr
    assert not out.exists()


def test_pull_into_a_file_of_another_framework_is_refused(net: LocalNet, tmp_path: Path):
    out = tmp_path / "model.pt"
    done = flobc("model", "pull", "--validator", net.urls[0], "--genesis",
                 net.workdir / "genesis.toml", "--out", out)
    assert done.returncode == 1, done
    assert done.stderr.startswith(f"flobc: error: --out {out} must end in .keras (model "
                                  "'mnist_cnn' is saved in its framework's file format)"), \
        done.stderr
    assert not out.exists()
