"""The ``flobc`` command line, run as a real subprocess as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from flobc.config import ConsensusParams, Genesis, NodeConfig, ValidatorInfo, load_key
from flobc.crypto import PrivateKey
from flobc.launch.localnet import LocalNet

COMMIT_TIMEOUT_S = 60


def flobc(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flobc", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def assert_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user error: exit 1 and exactly one line on stderr, containing ``fragments``."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flobc: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dead_url() -> str:
    """The URL of a loopback port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- keys -------------------------------------------------------------------------------


def test_keys_generate_writes_owner_only_file_and_prints_public_key(tmp_path: Path):
    out = tmp_path / "client.json"
    result = flobc("keys", "generate", "--out", out)
    assert result.returncode == 0, result.stderr
    assert mode(out) == 0o600
    assert result.stdout.strip() == load_key(out).public_key.hex()


def test_keys_generate_refuses_to_overwrite(tmp_path: Path):
    out = tmp_path / "client.json"
    assert flobc("keys", "generate", "--out", out).returncode == 0
    before = out.read_bytes()
    assert_error(flobc("keys", "generate", "--out", out), str(out), "exists", "--force")
    assert out.read_bytes() == before


def test_keys_generate_force_replaces_key_with_owner_only_file(tmp_path: Path):
    out = tmp_path / "client.json"
    assert flobc("keys", "generate", "--out", out).returncode == 0
    old = load_key(out).public_key
    out.chmod(0o644)
    result = flobc("keys", "generate", "--out", out, "--force")
    assert result.returncode == 0, result.stderr
    assert load_key(out).public_key != old
    assert result.stdout.strip() == load_key(out).public_key.hex()
    assert mode(out) == 0o600


def test_keys_generate_into_missing_folder_fails_clearly(tmp_path: Path):
    assert_error(flobc("keys", "generate", "--out", tmp_path / "nowhere" / "k.json"),
                 "cannot write", "No such file or directory")


# --- testnet init -----------------------------------------------------------------------


def test_testnet_init_writes_consistent_homes(tmp_path: Path):
    out = tmp_path / "net"
    result = flobc("testnet", "init", "--validators", 4, "--out", out, "--chain-id", "c-1",
                   "--base-port", 31000, "--checkpoint-interval", 8)
    assert result.returncode == 0, result.stderr
    genesis_text = (out / "genesis.toml").read_text()
    genesis = Genesis.from_toml(genesis_text)
    assert genesis.chain_id == "c-1"
    assert genesis.consensus.checkpoint_interval == 8
    assert len(genesis.validators) == 4
    assert len(set(genesis.public_keys)) == 4

    configs = [NodeConfig.load(out / f"validator-{i}") for i in range(4)]
    for i, config in enumerate(configs):
        assert config.index == i
        assert config.genesis_path.read_text() == genesis_text
        assert load_key(config.key_path).public_key == genesis.validators[i].public_key
        assert mode(config.key_path) == 0o600
        assert config.peer_listen == f"127.0.0.1:{31000 + 2 * i}"
        assert config.api_listen == f"127.0.0.1:{31000 + 2 * i + 1}"
    for config in configs:
        assert sorted(p.index for p in config.peers) == [j for j in range(4) if j != config.index]
        for peer in config.peers:
            assert peer.peer_address == configs[peer.index].peer_listen
            assert peer.api_address == configs[peer.index].api_listen
    addresses = [a for c in configs for a in (c.peer_listen, c.api_listen)]
    assert len(set(addresses)) == 8


def test_testnet_init_single_validator_has_no_peers(tmp_path: Path):
    assert flobc("testnet", "init", "--validators", 1, "--out", tmp_path / "n").returncode == 0
    assert NodeConfig.load(tmp_path / "n" / "validator-0").peers == ()


def test_testnet_init_refuses_zero_validators(tmp_path: Path):
    assert_error(flobc("testnet", "init", "--validators", 0, "--out", tmp_path / "n"),
                 "--validators must be at least 1")
    assert not (tmp_path / "n").exists()


def test_testnet_init_refuses_non_empty_dir_unless_forced(tmp_path: Path):
    out = tmp_path / "net"
    assert flobc("testnet", "init", "--validators", 4, "--out", out).returncode == 0
    (out / "notes.txt").write_text("mine")
    first = Genesis.load(out / "genesis.toml")

    assert_error(flobc("testnet", "init", "--validators", 2, "--out", out), "not empty", "--force")
    assert Genesis.load(out / "genesis.toml") == first

    result = flobc("testnet", "init", "--validators", 2, "--out", out, "--force")
    assert result.returncode == 0, result.stderr
    second = Genesis.load(out / "genesis.toml")
    assert len(second.validators) == 2
    assert not set(second.public_keys) & set(first.public_keys)
    assert sorted(p.name for p in out.iterdir()) == ["genesis.toml", "notes.txt",
                                                     "validator-0", "validator-1"]


def test_testnet_init_scales_window_with_checkpoint_interval(tmp_path: Path):
    result = flobc("testnet", "init", "--validators", 1, "--out", tmp_path / "n",
                   "--checkpoint-interval", 50)
    assert result.returncode == 0, result.stderr
    params = Genesis.load(tmp_path / "n" / "genesis.toml").consensus
    assert (params.checkpoint_interval, params.window) == (50, 100)


def test_testnet_init_reports_bad_consensus_parameters(tmp_path: Path):
    assert_error(flobc("testnet", "init", "--validators", 1, "--out", tmp_path / "n",
                       "--checkpoint-interval", 40, "--window", 50),
                 "consensus.window must be at least 2 x checkpoint_interval")


def test_testnet_init_refuses_ports_beyond_range(tmp_path: Path):
    assert_error(flobc("testnet", "init", "--validators", 4, "--out", tmp_path / "n",
                       "--base-port", 65530), "65530..65537")


# --- talking to validators without any running --------------------------------------------


def test_status_of_unreachable_validator_fails_clearly():
    url = dead_url()
    assert_error(flobc("status", "--validator", url), f"cannot reach validator at {url}")


def test_status_refuses_non_http_url():
    assert_error(flobc("status", "--validator", "ftp://127.0.0.1:1"), "not an http(s) URL")


def test_verify_with_unreadable_genesis_fails_clearly(tmp_path: Path):
    (tmp_path / "genesis.toml").write_text("chain_id = [")
    assert_error(flobc("verify", "--genesis", tmp_path / "genesis.toml", "--validator",
                       dead_url(), "--height", 1), "genesis")


# --- against a running testnet ------------------------------------------------------------


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNet]:
    """Four validator processes, each run by ``flobc validator start``."""
    params = ConsensusParams(checkpoint_interval=4)
    with LocalNet(tmp_path_factory.mktemp("testnet"), 4, params=params,
                  chain_id="cli-test") as net:
        net.start_all()
        yield net


def wait_for(condition: Callable[[], object], what: str,
             timeout: float = COMMIT_TIMEOUT_S) -> object:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def height(url: str) -> int:
    return httpx.get(f"{url}/status", timeout=5).json()["height"]


@pytest.mark.slow
def test_status_prints_consensus_state(testnet: LocalNet):
    result = flobc("status", "--validator", testnet.urls[1])
    assert result.returncode == 0, result.stderr
    for row in ("chain", "height", "view", "primary", "peers", "last commit"):
        assert row in result.stdout
    raw = flobc("status", "--validator", testnet.urls[1], "--json")
    assert raw.returncode == 0, raw.stderr
    status = json.loads(raw.stdout)
    assert status["chain_id"] == "cli-test"
    assert status["index"] == 1


@pytest.mark.slow
def test_tx_send_commits_and_verify_proves_block_and_state(testnet: LocalNet, tmp_path: Path):
    key_file = tmp_path / "client.json"
    assert flobc("keys", "generate", "--out", key_file).returncode == 0
    sent = flobc("tx", "send", "--validator", testnet.urls[2], "--key", key_file,
                 "--set", "greeting=hello", "--wait", COMMIT_TIMEOUT_S)
    assert sent.returncode == 0, sent.stderr
    assert "committed at height" in sent.stdout
    committed_at = int(sent.stdout.split("committed at height ")[1].split(",")[0])

    genesis = testnet.workdir / "genesis.toml"
    result = flobc("verify", "--genesis", genesis, "--validator", testnet.urls[0],
                   "--height", committed_at)
    assert result.returncode == 0, result.stderr
    assert f"block {committed_at} verified" in result.stdout

    state_key = b"kv/greeting".hex()
    wait_for(lambda: httpx.get(f"{testnet.urls[3]}/state/proof", params={"key": state_key},
                               timeout=5).json().get("value") == b"hello".hex(),
             "a stable checkpoint holding the transaction")
    result = flobc("verify", "--genesis", genesis, "--validator", testnet.urls[3],
                   "--height", committed_at, "--key", state_key)
    assert result.returncode == 0, result.stderr
    assert f"state key {state_key} = {b'hello'.hex()}" in result.stdout
    assert "verified at checkpoint" in result.stdout


@pytest.mark.slow
def test_verify_fails_against_tampered_genesis(testnet: LocalNet, tmp_path: Path):
    wait_for(lambda: height(testnet.urls[0]) >= 1, "a first block")
    genesis = Genesis.load(testnet.workdir / "genesis.toml")
    # Any commit certificate holds 3 of the 4 signatures, so replacing two keys hits one.
    impostors = tuple(ValidatorInfo(v.name, PrivateKey.generate().public_key)
                      for v in genesis.validators[:2])
    tampered = tmp_path / "genesis.toml"
    tampered.write_text(Genesis(genesis.chain_id, genesis.genesis_time_ms,
                                (*impostors, *genesis.validators[2:]),
                                genesis.consensus).to_toml())
    assert_error(flobc("verify", "--genesis", tampered, "--validator", testnet.urls[0],
                       "--height", 1), "commit certificate", "invalid signature")
    ok = flobc("verify", "--genesis", testnet.workdir / "genesis.toml", "--validator",
               testnet.urls[0], "--height", 1)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
def test_verify_of_missing_block_and_absent_key_fail_clearly(testnet: LocalNet):
    genesis = testnet.workdir / "genesis.toml"
    assert_error(flobc("verify", "--genesis", genesis, "--validator", testnet.urls[0],
                       "--height", 10**9), "has no block at height 1000000000")
    wait_for(lambda: httpx.get(f"{testnet.urls[0]}/state/proof", params={"key": "00"},
                               timeout=5).status_code == 200, "a stable checkpoint")
    wait_for(lambda: height(testnet.urls[0]) >= 1, "a first block")
    assert_error(flobc("verify", "--genesis", genesis, "--validator", testnet.urls[0],
                       "--height", 1, "--key", b"kv/never-written".hex()),
                 "absent", "cannot be verified")


@pytest.mark.slow
def test_demo_runs_a_testnet_and_checks_agreement():
    result = flobc("demo", "--validators", 4, "--seconds", 4, "--rate", 200, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    live = [line for line in lines if line.startswith("height=")]
    assert len(live) >= 3, result.stdout
    assert all(" tx/s=" in line and " view=" in line for line in live)
    assert "commit certificate that verifies against the genesis keys" in result.stdout
    assert_processes_gone(result.stdout)


def assert_processes_gone(stdout: str) -> None:
    pids = [int(line.split("(pid ")[1].split(")")[0]) for line in stdout.splitlines()
            if line.startswith("started validator")]
    assert len(pids) == 4
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_demo_stops_validators_on_ctrl_c():
    demo = subprocess.Popen([sys.executable, "-m", "flobc", "demo", "--seconds", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in demo.stdout:
            output.append(line)
            if line.startswith("height="):
                break
        demo.send_signal(signal.SIGINT)  # as Ctrl-C in a terminal
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    stdout = "".join(output) + rest
    assert demo.returncode == 0, stdout
    assert "stopped 4 validators" in stdout
    assert_processes_gone(stdout)


def test_testnet_init_writes_the_partition_into_every_trainer_home(tmp_path: Path):
    from flobc.trainer.config import TrainerConfig

    out = tmp_path / "net"
    result = flobc("testnet", "init", "--validators", "1", "--app", "fl", "--trainers", "2",
                   "--partition", "dirichlet:0.1", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "oneDNN" not in result.stderr and "absl" not in result.stderr, result.stderr
    for index in range(2):
        cfg = TrainerConfig.load(out / f"trainer-{index}")
        assert (cfg.partitioner, cfg.partitioner_options) == ("dirichlet", {"alpha": 0.1})
        assert (cfg.partition_index, cfg.partitions) == (index, 2)


@pytest.mark.parametrize("spec, fragment", [
    ("bogus", "unknown partitioner 'bogus'"),
    ("dirichlet:x", "alpha must be a number"),
    ("iid:3", "takes no value"),
])
def test_testnet_init_refuses_a_bad_partition(tmp_path: Path, spec: str, fragment: str):
    result = flobc("testnet", "init", "--validators", "1", "--app", "fl",
                   "--partition", spec, "--out", tmp_path / "net")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    assert "argument --partition: " in result.stderr and fragment in result.stderr
    assert not (tmp_path / "net").exists()
