"""Connection admission: capacity, per-address limits, the share kept for known
addresses, and the node settings that size them."""

from __future__ import annotations

from pathlib import Path

import pytest

from flobc.admission import Admission, Refused, host_of, normalize
from flobc.config import ConfigError, NodeConfig


def test_capacity_refuses_beyond_the_pool_and_names_it() -> None:
    pool = Admission(capacity=4, per_address=4, reserved=0)
    slots = [pool.admit("10.0.0.1") for _ in range(4)]
    with pytest.raises(Refused, match="all 4 connections are in use"):
        pool.admit("10.0.0.2")
    assert pool.in_use == 4 and len(slots) == 4


def test_one_address_is_limited_but_others_still_get_in() -> None:
    pool = Admission(capacity=10, per_address=2, reserved=0)
    pool.admit("10.0.0.1")
    pool.admit("10.0.0.1")
    with pytest.raises(Refused, match="10.0.0.1 already holds 2 connections"):
        pool.admit("10.0.0.1")
    pool.admit("10.0.0.2")
    assert pool.in_use == 3


def test_reserved_share_stays_free_for_known_addresses() -> None:
    pool = Admission(capacity=6, per_address=1, reserved=2, known=["10.9.9.9"])
    for i in range(4):
        pool.admit(f"10.0.0.{i}")
    with pytest.raises(Refused, match="the 4 connections open to unknown addresses"):
        pool.admit("10.0.0.50")
    # a known address is not limited per address and may use the reserved share
    known = [pool.admit("10.9.9.9"), pool.admit("10.9.9.9")]
    assert all(not s.stranger for s in known)
    with pytest.raises(Refused, match="all 6 connections"):
        pool.admit("10.9.9.9")


def test_learned_address_gets_the_reserved_share() -> None:
    pool = Admission(capacity=2, per_address=1, reserved=1)
    pool.admit("10.0.0.1")
    with pytest.raises(Refused):
        pool.admit("10.0.0.2")
    pool.learn("::ffff:10.0.0.2")
    assert not pool.admit("10.0.0.2").stranger


def test_ipv6_mapped_and_plain_ipv4_count_as_one_address() -> None:
    assert normalize("::ffff:127.0.0.2") == "127.0.0.2"
    assert normalize("::1") == "::1"
    assert host_of(("::ffff:10.1.2.3", 80, 0, 0)) == "10.1.2.3"
    assert host_of(None) == "unknown"
    pool = Admission(capacity=10, per_address=1, reserved=0, known=["::ffff:10.9.9.9"])
    pool.admit("::ffff:127.0.0.2")
    with pytest.raises(Refused, match="127.0.0.2 already holds 1"):
        pool.admit("127.0.0.2")
    assert not pool.admit("10.9.9.9").stranger


def test_release_frees_the_slot_once() -> None:
    pool = Admission(capacity=2, per_address=1, reserved=1)
    slot = pool.admit("10.0.0.1")
    with pytest.raises(Refused):
        pool.admit("10.0.0.1")
    slot.release()
    slot.release()  # a second release must not free a slot it no longer holds
    assert pool.in_use == 0
    again = pool.admit("10.0.0.1")
    with pytest.raises(Refused):
        pool.admit("10.0.0.3")
    again.release()
    assert pool.in_use == 0


@pytest.mark.parametrize("args", [(0, 1, 0), (4, 0, 0), (4, 5, 0), (4, 1, 4), (4, 1, -1)])
def test_inconsistent_pool_is_refused(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        Admission(*args)


def _config(tmp_path: Path, **settings: object) -> NodeConfig:
    return NodeConfig(home=tmp_path, index=0, peer_listen="127.0.0.1:0",
                      api_listen="127.0.0.1:0", peers=(), **settings)


@pytest.mark.parametrize(("settings", "named"), [
    ({"api_max_connections": 0}, "api_max_connections must be an integer of at least 1"),
    ({"api_max_connections": "many"}, "api_max_connections must be an integer"),
    ({"api_max_connections_per_address": 300},
     "api_max_connections_per_address \\(300\\) must not exceed api_max_connections"),
    ({"api_reserved_connections": 256},
     "api_reserved_connections \\(256\\) must be less than api_max_connections"),
    ({"api_reserved_connections": -1}, "api_reserved_connections must be an integer"),
    ({"api_header_timeout_ms": 0}, "api_header_timeout_ms must be an integer in 1..3600000"),
    ({"api_body_timeout_ms": 1.5}, "api_body_timeout_ms must be an integer"),
    ({"api_known_addresses": ("",)}, "api_known_addresses must be a list"),
    ({"peer_max_pending_handshakes": 0}, "peer_max_pending_handshakes must be an integer"),
    ({"peer_max_pending_per_address": 65},
     "peer_max_pending_per_address \\(65\\) must not exceed peer_max_pending_handshakes"),
    ({"peer_reserved_handshakes": 64},
     "peer_reserved_handshakes \\(64\\) must be less than peer_max_pending_handshakes"),
])
def test_bad_limit_settings_name_the_setting(tmp_path: Path, settings: dict[str, object],
                                             named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _config(tmp_path, **settings)


def test_limit_settings_round_trip_through_config_toml(tmp_path: Path) -> None:
    config = _config(tmp_path, api_max_connections=100, api_header_timeout_ms=500,
                     api_known_addresses=("10.0.0.7", "trainer.local"),
                     peer_reserved_handshakes=3)
    config.save()
    assert NodeConfig.load(tmp_path) == config


def test_bad_setting_in_config_toml_names_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.save()
    path = tmp_path / "config.toml"
    path.write_text(path.read_text().replace("api_body_timeout_ms = 60000",
                                             "api_body_timeout_ms = -5"))
    with pytest.raises(ConfigError, match="api_body_timeout_ms"):
        NodeConfig.load(tmp_path)
