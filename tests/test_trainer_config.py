"""trainer.toml and its command-line overrides: what loads, and clear errors otherwise;
settings that contradict the chain's genesis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flobc.config import ConfigError, Genesis, ValidatorInfo, save_key
from flobc.crypto import PrivateKey, sha256
from flobc.ml.learner import learner_for
from flobc.ml.weights import encode_weights
from flobc.protocol.settings import FLConfig
from flobc.trainer.config import TrainerConfig
from flobc.trainer.loop import Trainer

VALID = """\
validators = ["http://127.0.0.1:26601", "http://127.0.0.1:26603"]
partition_index = 1
partitions = 4
partitioner = "iid"
dataset = "mnist_5k"
local_epochs = 2
batch_size = 16
seed = 5
"""


def home_with(tmp_path: Path, text: str) -> Path:
    (tmp_path / "trainer.toml").write_text(text)
    return tmp_path


def load_error(tmp_path: Path, text: str, **overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        TrainerConfig.load(home_with(tmp_path, text), **overrides)
    return str(info.value)


def test_a_written_file_loads(tmp_path: Path):
    cfg = TrainerConfig.load(home_with(tmp_path, VALID))
    assert cfg.validators == ("http://127.0.0.1:26601", "http://127.0.0.1:26603")
    assert (cfg.partition_index, cfg.partitions, cfg.local_epochs, cfg.batch_size,
            cfg.seed) == (1, 4, 2, 16, 5)
    assert (cfg.behaviour, cfg.rounds, cfg.model) == ("honest", None, None)
    assert cfg.key_path == tmp_path / "trainer_key.json"
    assert cfg.genesis_model_path == tmp_path / "genesis-model.bin"


def test_flags_override_the_file_and_unset_flags_do_not(tmp_path: Path):
    cfg = TrainerConfig.load(home_with(tmp_path, VALID), local_epochs=3, batch_size=None,
                             behaviour="sign_flip", behaviour_scale=2.5, rounds=2,
                             model="mnist_cnn")
    assert (cfg.local_epochs, cfg.batch_size, cfg.behaviour, cfg.behaviour_scale,
            cfg.rounds, cfg.model) == (3, 16, "sign_flip", 2.5, 2, "mnist_cnn")


def test_overrides_are_checked_too(tmp_path: Path):
    assert "local_epochs must be an integer of at least 1, got 0" in load_error(
        tmp_path, VALID, local_epochs=0)
    assert ("behaviour must be one of honest, sign_flip, noise, label_flip, scaling, zero, "
            "replay, copy, alie, ipm; got 'evil'") in load_error(tmp_path, VALID,
                                                                 behaviour="evil")
    assert "behaviour_scale is only used with a Byzantine behaviour" in load_error(
        tmp_path, VALID, behaviour_scale=2.0)


@pytest.mark.parametrize(("text", "fragment"), [
    (VALID + "epochs = 3\n", "unknown setting 'epochs'; known settings: batch_size"),
    (VALID.replace("partitions = 4", ""), "missing setting 'partitions'"),
    (VALID.replace('"http://127.0.0.1:26603"', '"ftp://x"'), "'ftp://x' is not an http(s) URL"),
    (VALID.replace('validators = [', 'validators = "http://a:1" #['),
     "validators must be a list of API URLs"),
    (VALID.replace('["http://127.0.0.1:26601", "http://127.0.0.1:26603"]', "[]"),
     "validators must list at least one API URL"),
    (VALID.replace("partition_index = 1", "partition_index = 4"),
     "partition_index must be in 0..3, got 4"),
    (VALID.replace('"iid"', '"random"'), "partitioner must be one of iid, dirichlet"),
    (VALID.replace('"mnist_5k"', '"file"'),
     "dataset_path is needed with a dataset read from a file ('file' is one)"),
    (VALID.replace("seed = 5", "seed = -1"), "seed must be an integer of at least 0"),
    (VALID.replace("batch_size = 16", "batch_size = 1.5"), "batch_size must be an integer"),
    (VALID + "partitioner_options = 3\n", "partitioner_options must be a table"),
    (VALID + "partitioner_options = {alpha = 0.5}\n",
     "partitioner_options: partitioner 'iid' has no option alpha"),
    (VALID.replace('"iid"', '"dirichlet"') + "partitioner_options = {alpha = -1}\n",
     "partitioner_options: alpha must be a positive number"),
    (VALID + "validators = 1\n", "trainer.toml: Cannot overwrite a value"),
])
def test_a_bad_file_is_refused_naming_the_setting(tmp_path: Path, text: str, fragment: str):
    message = load_error(tmp_path, text)
    assert fragment in message
    assert str(tmp_path / "trainer.toml") in message


def test_a_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read .*trainer.toml: No such file"):
        TrainerConfig.load(tmp_path)


def learning_home(home: Path, trainer_toml: str, **settings: object) -> TrainerConfig:
    """A trainer home of a one-validator learning chain with ``settings`` in genesis
    (a tiny stand-in genesis model: nothing here builds one)."""
    key = PrivateKey.generate()
    model_v0 = encode_weights([np.zeros((2, 2), np.float32)])
    fl = FLConfig(sha256(model_v0), trainers=(key.public_key,), **settings)
    genesis = Genesis("trainer-test", 0, (ValidatorInfo("v0", PrivateKey.generate().public_key),),
                      app={"name": "fl", **fl.to_app_dict()})
    (home / "genesis.toml").write_text(genesis.to_toml())
    (home / "genesis-model.bin").write_bytes(model_v0)
    save_key(home / "trainer_key.json", key)
    return TrainerConfig.load(home_with(home, trainer_toml))


def test_a_dataset_other_than_the_chains_is_refused(tmp_path: Path):
    cfg = learning_home(tmp_path, VALID, dataset="file")
    with pytest.raises(ConfigError, match=r"dataset 'mnist_5k' in .*trainer.toml contradicts "
                                          r"the chain's dataset 'file' in .*genesis.toml"):
        Trainer(cfg, learner_for)


def test_a_chain_model_this_trainer_cannot_import_is_named(tmp_path: Path):
    cfg = learning_home(tmp_path, VALID, model="no_such_flobc_models:build")
    with pytest.raises(ConfigError, match="cannot build the chain's model: .*cannot import "
                                          "module 'no_such_flobc_models'"):
        Trainer(cfg, learner_for)
