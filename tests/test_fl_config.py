"""The learning settings in genesis: defaults, strict parsing, TOML round trip; the model
and dataset a chain names, and where each node finds that dataset."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flobc.config import ConfigError, Genesis, NodeConfig, ValidatorInfo
from flobc.crypto import PrivateKey, sha256
from flobc.launch.cli import main
from flobc.protocol.aggregation import AGGREGATORS
from flobc.protocol.settings import FLConfig
from flobc.validator.fl.services import node_dataset_file

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


def test_the_aggregator_table_names_a_rule_and_its_settings() -> None:
    toml = (f'[app]\nname = "fl"\nmodel_v0_hash = "{V0.hex()}"\nadmission = "open"\n'
            '[app.aggregator]\nname = "krum"\nf = 2\nm = 3\n')
    config = FLConfig.from_app(Genesis.from_toml(
        'chain_id = "fl-test"\ngenesis_time_ms = 0\n[[validators]]\nname = "v0"\n'
        f'public_key = "{TRAINERS[0].hex()}"\n' + toml).app)
    assert config == FLConfig(V0, admission="open", aggregator="krum", krum_f=2, krum_m=3)
    assert config.make_aggregator() == AGGREGATORS.get("krum")(f=2, m=3)


@pytest.mark.parametrize(("table", "reason"), [
    ({"f": 1}, "app.aggregator.name is missing"),
    ({"name": "mean"}, "app.aggregator.name: unknown aggregator 'mean'"),
    ({"name": "trimmed_mean", "f": 1}, "app.aggregator: unknown setting 'f' of trimmed_mean"),
    ({"name": "median", "trim_fraction": 0.1}, "unknown setting 'trim_fraction' of median"),
    ({"name": "trimmed_mean", "trim_fraction": 0.6}, "app.trim_fraction must be below 0.5"),
])
def test_a_bad_aggregator_table_is_named(table: dict, reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        FLConfig.from_app({"model_v0_hash": V0.hex(), "admission": "open",
                           "aggregator": table})


def test_an_aggregator_setting_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="app.aggregator.f is also set as app.krum_f"):
        FLConfig.from_app({"model_v0_hash": V0.hex(), "admission": "open", "krum_f": 1,
                           "aggregator": {"name": "krum", "f": 2}})


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


def fl_genesis(app: dict) -> Genesis:
    return Genesis("fl-test", 0, (ValidatorInfo("v0", TRAINERS[0]),), app=app)


def test_from_genesis_reads_a_learning_chain_and_refuses_others() -> None:
    config = FLConfig(V0, admission="open", dataset="file")
    assert FLConfig.from_genesis(fl_genesis({"name": "fl", **config.to_app_dict()})) == config
    for app in ({}, {"name": "kv"}, config.to_app_dict()):
        with pytest.raises(ConfigError, match=r"net/genesis.toml is not a learning chain's "
                                              r'genesis \(\[app\] name = "fl"\)'):
            FLConfig.from_genesis(fl_genesis(app), "net/genesis.toml")


@pytest.mark.parametrize("model", ["mnist_cnn", "mnist_mlp", "model:build",
                                   "my_models.vision.small:build_v2", "_m:_f"])
def test_model_is_the_zoo_or_a_builder_reference(model: str) -> None:
    assert FLConfig(V0, admission="open", model=model).model == model


@pytest.mark.parametrize("model", ["resnet", "model:", ":build", "model.build", "a b:c",
                                   "pkg..mod:f", "pkg.mod:f.g", "1pkg:f", "m:f" + "x" * 126])
def test_a_model_that_names_nothing_is_refused_before_anything_is_imported(model: str) -> None:
    with pytest.raises(ConfigError, match=r"app.model must be a model of the zoo \(.*mnist_cnn, "
                                          r"mnist_mlp\) or a builder named "
                                          r"package.module:function"):
        FLConfig(V0, admission="open", model=model)


def test_dataset_defaults_to_the_embedded_sample_and_is_checked() -> None:
    assert FLConfig(V0, admission="open").dataset == "mnist_5k"
    with pytest.raises(ConfigError, match="app.dataset must be one of .*got 'imagenet'"):
        FLConfig.from_app({"model_v0_hash": V0.hex(), "admission": "open",
                           "dataset": "imagenet"})


def node(tmp_path: Path, dataset_file: str | None) -> NodeConfig:
    config = NodeConfig(home=tmp_path, index=0, peer_listen="127.0.0.1:1",
                        api_listen="127.0.0.1:2", peers=(), dataset_file=dataset_file)
    config.save()
    return NodeConfig.load(tmp_path)


def test_a_node_config_keeps_its_dataset_file(tmp_path: Path) -> None:
    assert node(tmp_path, None).dataset_file is None
    assert "dataset_file" not in (tmp_path / "config.toml").read_text()
    loaded = node(tmp_path, "data/my digits.npz")
    assert loaded.dataset_file == "data/my digits.npz"
    assert loaded.dataset_path == tmp_path / "data" / "my digits.npz"
    (tmp_path / "config.toml").write_text((tmp_path / "config.toml").read_text()
                                          .replace('"data/my digits.npz"', "3"))
    with pytest.raises(ConfigError, match="config.toml: dataset_file must be a file name"):
        NodeConfig.load(tmp_path)


def test_a_validator_evaluates_on_its_own_copy_of_a_file_dataset(tmp_path: Path) -> None:
    file_chain = FLConfig(V0, admission="open", dataset="file")
    (tmp_path / "digits.npz").write_bytes(b"")
    assert node_dataset_file(node(tmp_path, "digits.npz"), file_chain) == str(
        tmp_path / "digits.npz")
    assert node_dataset_file(node(tmp_path, None), FLConfig(V0, admission="open")) is None
    cases = [(None, file_chain, 'genesis names app.dataset = "file"; set dataset_file'),
             ("missing.npz", file_chain, "dataset_file '.*missing.npz' is not a file"),
             ("digits.npz", FLConfig(V0, admission="open"),
              "dataset_file is only used when genesis names a dataset read from a file "
              "\\(it names 'mnist_5k'\\)"),
             (None, FLConfig(V0, admission="open", dataset="csv"),
              'genesis names app.dataset = "csv"; set dataset_file')]
    for dataset_file, fl, message in cases:
        with pytest.raises(ConfigError, match=message):
            node_dataset_file(node(tmp_path, dataset_file), fl)


@pytest.mark.parametrize(("argv", "message"), [
    (["--dataset", "file"],
     "--dataset-file is needed with --dataset file or csv, and only with them"),
    (["--dataset-file", "x.npz"], "--dataset-file is needed with --dataset file or csv"),
    (["--dataset", "file", "--dataset-file", "missing.npz"],
     "--dataset-file: .*missing.npz: not a readable .npz file"),
    (["--model", "no such:model"], "app.model must be a model of the zoo"),
])
def test_testnet_init_refuses_a_dataset_or_model_it_cannot_use(
        tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    out = tmp_path / "net"
    assert main(["testnet", "init", "--app", "fl", "--validators", "1", "--out", str(out),
                 *argv]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists(), "nothing is written before the settings are checked"


def test_dataset_options_only_apply_to_a_learning_chain(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["testnet", "init", "--validators", "1", "--out", str(tmp_path / "net"),
                 "--dataset", "mnist_5k", "--dataset-file", "x.npz"]) == 1
    assert "--dataset, --dataset-file only apply with --app fl" in capsys.readouterr().err


def test_the_dataset_table_names_a_source_and_its_options() -> None:
    app = {"model_v0_hash": V0.hex(), "admission": "open",
           "dataset": {"name": "csv", "target": "label", "features": ["age", "dose"],
                       "task": "classification"}}
    config = FLConfig.from_app(app)
    assert (config.dataset, config.dataset_options) == (
        "csv", {"target": "label", "features": ["age", "dose"], "task": "classification"})
    assert config.to_app_dict()["dataset"] == app["dataset"]
    written = fl_genesis({"name": "fl", **config.to_app_dict()}).to_toml()
    assert FLConfig.from_genesis(Genesis.from_toml(written)) == config


def test_a_dataset_named_by_a_string_is_written_back_as_one() -> None:
    out = FLConfig(V0, admission="open", dataset="digits").to_app_dict()
    assert out["dataset"] == "digits" and "dataset_options" not in out


@pytest.mark.parametrize(("dataset", "reason"), [
    ({"target": "y"}, "app.dataset.name is missing"),
    ({"name": "parquet"}, "app.dataset.name: .*parquet"),
    ({"name": "csv", "colour": "red"}, "app.dataset: dataset 'csv' has no option 'colour'; "
                                       "its options: classes, features, target, task"),
    ({"name": "csv", "task": "ranking"}, "app.dataset: dataset 'csv': task must be "
                                         "classification, regression or multilabel"),
    ({"name": "digits", "classes": 3}, "app.dataset: dataset 'digits' has no option "
                                       "'classes'; its options: none"),
    ({"name": "python"}, "app.dataset: dataset 'python': loader must name a function as "
                         "package.module:function, got ''"),
    ({"name": "python", "loader": "data.load"}, "loader must name a function"),
])
def test_bad_dataset_options_are_named(dataset: dict, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        FLConfig.from_app({"model_v0_hash": V0.hex(), "admission": "open",
                           "dataset": dataset})


def test_dataset_options_are_set_by_the_table_only() -> None:
    with pytest.raises(ConfigError, match="app: unknown setting 'dataset_options'"):
        FLConfig.from_app({"model_v0_hash": V0.hex(), "admission": "open",
                           "dataset_options": {"target": "y"}})
