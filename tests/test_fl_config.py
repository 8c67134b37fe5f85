"""The learning settings in genesis: defaults, strict parsing, TOML round trip."""

from __future__ import annotations

import pytest

from flobc.config import ConfigError, Genesis, ValidatorInfo
from flobc.crypto import PrivateKey, sha256
from flobc.validator.fl.config import FLConfig

V0 = sha256(b"model v0")
TRAINERS = tuple(PrivateKey(bytes([i]) * 32).public_key for i in range(1, 4))


def test_defaults_are_safe_and_complete() -> None:
    config = FLConfig.from_app({"model_v0_hash": V0.hex(),
                                "trainers": [t.hex() for t in TRAINERS]})
    assert (config.admission, config.sync, config.aggregator) == ("allowlist", "bsp", "fedavg")
    assert config.trainers == TRAINERS
    assert config.ssp_min_fraction_micro == 750_000 and config.bap_alpha_micro == 500_000
    assert FLConfig.from_app({"name": "fl", **config.to_app_dict()}) == config


def test_settings_survive_the_genesis_file() -> None:
    config = FLConfig(V0, model="mnist_mlp", seed=7, admission="open", sync="ssp",
                      staleness=3, ssp_min_fraction=0.5, bap_alpha=0.25,
                      round_deadline_ms=5_000, aggregator="krum", krum_f=2, krum_m=3,
                      max_update_norm=12.5, max_blob_bytes=1 << 20)
    allowlisted = FLConfig(V0, trainers=TRAINERS, trim_fraction=0.2, aggregator="trimmed_mean")
    for cfg in (config, allowlisted):
        genesis = Genesis("fl-test", 0, (ValidatorInfo("v0", TRAINERS[0]),),
                          app=cfg.to_app_dict())
        assert FLConfig.from_app(Genesis.from_toml(genesis.to_toml()).app) == cfg


@pytest.mark.parametrize(("app", "reason"), [
    ({}, "app.model_v0_hash is missing"),
    ({"model_v0_hash": "zz"}, "app.model_v0_hash must be 64 hex digits"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "rounds": 3},
     "app: unknown setting 'rounds'"),
    ({"model_v0_hash": V0.hex()}, "app.trainers must list at least one public key"),
    ({"model_v0_hash": V0.hex(), "trainers": "abc"}, "app.trainers must be a list"),
    ({"model_v0_hash": V0.hex(), "trainers": ["00" * 31]}, "app.trainers[0] must be 64 hex"),
    ({"model_v0_hash": V0.hex(), "trainers": [TRAINERS[0].hex()] * 2},
     "app.trainers lists a key twice"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "trainers": [TRAINERS[0].hex()]},
     "app.trainers is only used with admission"),
    ({"model_v0_hash": V0.hex(), "admission": "anyone"}, "app.admission must be one of"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "sync": "async"},
     "app.sync must be one of"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "aggregator": "mean"},
     "app.aggregator must be one of"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "staleness": -1},
     "app.staleness must be an integer in 0..1000"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "round_deadline_ms": 0},
     "app.round_deadline_ms must be an integer"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "round_deadline_ms": True},
     "app.round_deadline_ms must be an integer"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "ssp_min_fraction": 0},
     "app.ssp_min_fraction must be a number in (0, 1]"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "bap_alpha": "half"},
     "app.bap_alpha must be a number in (0, 1]"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "trim_fraction": 0.5},
     "app.trim_fraction must be below 0.5"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "trust_reward": 1_000_001},
     "app.trust_reward must be an integer in 0..1000000"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "trust_threshold": 600_000},
     "app.trust_threshold must not exceed app.trust_initial"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "max_update_norm": float("inf")},
     "app.max_update_norm must be a positive finite number"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "max_blob_bytes": 0},
     "app.max_blob_bytes must be an integer"),
    ({"model_v0_hash": V0.hex(), "admission": "open", "model": ""}, "app.model must be"),
])
def test_bad_settings_are_named(app: dict, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        FLConfig.from_app(app)
    assert reason in str(info.value)


def test_lists_are_written_as_toml_arrays() -> None:
    genesis = Genesis("fl-test", 0, (ValidatorInfo("v0", TRAINERS[0]),),
                      app={"names": ["a", "b\"c"], "sizes": [1, 2.5], "empty": []})
    assert 'names = ["a", "b\\"c"]' in genesis.to_toml()
    assert Genesis.from_toml(genesis.to_toml()).app == genesis.app
