"""``flobc testnet init --hosts/--listen-host``: validators on hosts of their own.

In containers each validator has its own hostname and listens on every interface, so
the addresses it is *reached* at (peers, trainers) differ from the one it *listens* on.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from flobc.config import Genesis, NodeConfig, load_key
from flobc.launch.localnet import LocalNet, free_port_range

COMMIT_TIMEOUT_S = 60


def flobc(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flobc", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def user_error(result: subprocess.CompletedProcess) -> str:
    """The one ``flobc: error:`` line of a failed command."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flobc: error: "), result.stderr
    return lines[0]


def configs(out: Path, n: int) -> list[NodeConfig]:
    return [NodeConfig.load(out / f"validator-{i}") for i in range(n)]


def test_template_hosts_with_listen_host(tmp_path: Path):
    out = tmp_path / "net"
    result = flobc("testnet", "init", "--validators", 4, "--out", out, "--base-port", 31000,
                   "--hosts", "validator{i}", "--listen-host", "0.0.0.0")
    assert result.returncode == 0, result.stderr
    genesis = Genesis.load(out / "genesis.toml")
    for i, config in enumerate(configs(out, 4)):
        assert load_key(config.key_path).public_key == genesis.public_keys[i]
        assert config.peer_listen == f"0.0.0.0:{31000 + 2 * i}"
        assert config.api_listen == f"0.0.0.0:{31000 + 2 * i + 1}"
        assert sorted(p.index for p in config.peers) == [j for j in range(4) if j != i]
        for peer in config.peers:
            assert peer.peer_address == f"validator{peer.index}:{31000 + 2 * peer.index}"
            assert peer.api_address == f"validator{peer.index}:{31000 + 2 * peer.index + 1}"
        # What it prints is where the validator is reached, and where it listens.
        assert (f"peers at validator{i}:{31000 + 2 * i}, API at "
                f"http://validator{i}:{31001 + 2 * i} (listening on 0.0.0.0)") in result.stdout


def test_comma_separated_hosts_listen_where_reached_by_default(tmp_path: Path):
    out = tmp_path / "net"
    result = flobc("testnet", "init", "--validators", 3, "--out", out, "--base-port", 32000,
                   "--hosts", "alpha, beta.example ,10.0.0.7")
    assert result.returncode == 0, result.stderr
    hosts = ["alpha", "beta.example", "10.0.0.7"]
    for i, config in enumerate(configs(out, 3)):
        assert config.peer_listen == f"{hosts[i]}:{32000 + 2 * i}"
        assert config.api_listen == f"{hosts[i]}:{32000 + 2 * i + 1}"
        for peer in config.peers:
            assert peer.peer_address == f"{hosts[peer.index]}:{32000 + 2 * peer.index}"


def test_ipv6_hosts_are_bracketed(tmp_path: Path):
    out = tmp_path / "net"
    result = flobc("testnet", "init", "--validators", 2, "--out", out, "--base-port", 33000,
                   "--hosts", "fd00::1,fd00::2", "--listen-host", "::")
    assert result.returncode == 0, result.stderr
    first, second = configs(out, 2)
    assert first.peer_listen == "[::]:33000"
    assert first.peers[0].api_address == "[fd00::2]:33003"
    assert second.peers[0].peer_address == "[fd00::1]:33000"


def test_learning_testnet_trainers_reach_validators_by_host(tmp_path: Path):
    out = tmp_path / "flnet"
    result = flobc("testnet", "init", "--app", "fl", "--validators", 4, "--trainers", 2,
                   "--out", out, "--hosts", "validator{i}", "--listen-host", "0.0.0.0")
    assert result.returncode == 0, result.stderr
    expected = [f"http://validator{i}:{26601 + 2 * i}" for i in range(4)]
    for t in range(2):
        trainer = tomllib.loads((out / f"trainer-{t}" / "trainer.toml").read_text())
        assert trainer["validators"] == expected
    assert configs(out, 4)[2].api_listen == "0.0.0.0:26605"


def test_default_is_unchanged_loopback(tmp_path: Path):
    out = tmp_path / "net"
    result = flobc("testnet", "init", "--validators", 2, "--out", out, "--base-port", 34000)
    assert result.returncode == 0, result.stderr
    first, second = configs(out, 2)
    assert (first.peer_listen, first.api_listen) == ("127.0.0.1:34000", "127.0.0.1:34001")
    assert second.peers[0].api_address == "127.0.0.1:34001"


@pytest.mark.parametrize("hosts, fragment", [
    ("a,b,c", "--hosts names 3 host(s) for 4 validator(s)"),
    ("a,b,,d", "--hosts: '' is not a host name"),
    ('v"{i}', "--hosts: 'v\"0' is not a host name"),
    ("v {i}", "--hosts: 'v 0' is not a host name"),
])
def test_bad_hosts_are_refused_before_writing(tmp_path: Path, hosts: str, fragment: str):
    out = tmp_path / "net"
    line = user_error(flobc("testnet", "init", "--validators", 4, "--out", out,
                            "--hosts", hosts))
    assert fragment in line
    assert not out.exists()


def test_bad_listen_host_is_refused(tmp_path: Path):
    out = tmp_path / "net"
    line = user_error(flobc("testnet", "init", "--validators", 1, "--out", out,
                            "--listen-host", "0.0.0.0/0"))
    assert "--listen-host: '0.0.0.0/0' is not a host name or IP address" in line
    assert not out.exists()


def test_host_and_hosts_exclude_each_other(tmp_path: Path):
    result = flobc("testnet", "init", "--validators", 2, "--out", tmp_path / "net",
                   "--host", "127.0.0.1", "--hosts", "a,b")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_validators_reached_by_name_commit_blocks(tmp_path: Path):
    """Validators whose peers know them by a host name (resolved when dialling) and who
    listen on another address still form a quorum and commit."""
    out = tmp_path / "net"
    base = free_port_range(8)
    result = flobc("testnet", "init", "--validators", 4, "--out", out, "--base-port", base,
                   "--hosts", ",".join(["localhost"] * 4), "--listen-host", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert configs(out, 4)[1].peers[0].peer_address == f"localhost:{base}"
    with LocalNet.open(out) as net:
        net.start_all()
        assert flobc("keys", "generate", "--out", tmp_path / "client.json").returncode == 0
        sent = flobc("tx", "send", "--validator", net.urls[1], "--key", tmp_path / "client.json",
                     "--set", "where=localhost", "--wait", COMMIT_TIMEOUT_S)
        assert sent.returncode == 0, sent.stderr + net.log_tail(1)
        deadline = time.monotonic() + COMMIT_TIMEOUT_S
        heights: list[int] = []
        while time.monotonic() < deadline:
            statuses = [httpx.get(f"{u}/status", timeout=5).json() for u in net.urls]
            heights = [s["height"] for s in statuses]
            if min(heights) >= 1 and all(len(s["peers_connected"]) == 3 for s in statuses):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"validators at heights {heights} did not all commit through named "
                        f"peers:\n{net.log_tail(3)}")
