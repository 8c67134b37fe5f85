"""Models named ``package.module:function``: imported from the process's path, held to the
zoo's rules (shapes, seeded weights), compiled by flobc, and clear errors otherwise."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from flobc.ml.models import (
    LEARNING_RATE,
    MNIST_TASK,
    ModelError,
    build_model,
    check_importable,
    initial_weights,
    model_builder,
)

BUILDERS = '''
import keras

def layers():
    return [keras.Input((28, 28, 1)), keras.layers.Flatten()]

def build(seed):
    init = keras.initializers.GlorotUniform(seed)
    return keras.Sequential(layers() + [
        keras.layers.Dense(10, activation="softmax", kernel_initializer=init)])

def compiled(seed):
    model = build(seed)
    model.compile(optimizer="adam", loss="mse")
    return model

def unseeded(seed):
    return keras.Sequential(layers() + [keras.layers.Dense(10, activation="softmax")])

def three_classes(seed):
    return keras.Sequential(layers() + [keras.layers.Dense(3, activation="softmax")])

def unbuilt(seed):
    return keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])

def not_a_model(seed):
    return "a model"

not_callable = 3
'''


@pytest.fixture(scope="module", autouse=True)
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Modules ``flobc_test_plugins`` (builders) and ``flobc_test_broken`` (fails on
    import) on the path, as PYTHONPATH would put them."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "flobc_test_plugins.py").write_text(BUILDERS)
    (folder / "flobc_test_broken.py").write_text('raise RuntimeError("needs a GPU")\n')
    sys.path.insert(0, str(folder))
    yield
    sys.path.remove(str(folder))
    for name in ("flobc_test_plugins", "flobc_test_broken"):
        sys.modules.pop(name, None)


def test_a_builder_is_imported_compiled_by_flobc_and_seeded() -> None:
    model = build_model("flobc_test_plugins:build", 3)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(LEARNING_RATE)
    first = initial_weights("flobc_test_plugins:build", 3)
    assert all(np.array_equal(a, b)
               for a, b in zip(first, initial_weights("flobc_test_plugins:build", 3),
                               strict=True))
    assert not np.array_equal(first[0], initial_weights("flobc_test_plugins:build", 4)[0])


def test_a_builders_own_compile_is_replaced() -> None:
    model = build_model("flobc_test_plugins:compiled", 0)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.loss == "sparse_categorical_crossentropy"


def test_unseeded_initial_weights_are_refused() -> None:
    with pytest.raises(ModelError, match="'flobc_test_plugins:unseeded' is not deterministic: "
                                         "two builds with seed 0 gave different weights"):
        initial_weights("flobc_test_plugins:unseeded", 0)


@pytest.mark.parametrize(("name", "message"), [
    ("flobc_test_plugins:three_classes",
     r"maps \(None, 28, 28, 1\) to \(None, 3\); for this dataset \(classification\) it "
     r"must map \(None, 28, 28, 1\) features to \(None, 10\) class probabilities"),
    ("flobc_test_plugins:unbuilt", r"has no weights; start it with keras.Input\(\(28, 28, 1\)\)"),
    ("flobc_test_plugins:not_a_model", "the builder returned str, not a keras.Model"),
])
def test_a_model_that_does_not_fit_the_data_is_refused(name: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_model(name, 0, MNIST_TASK)


@pytest.mark.parametrize(("name", "message"), [
    ("flobc_test_missing:build", r"cannot import module 'flobc_test_missing' \(No module "
                                 r"named 'flobc_test_missing'\); every validator and trainer "
                                 r"needs it on its path"),
    ("flobc_test_missing.sub:build", "cannot import module 'flobc_test_missing.sub'"),
    ("flobc_test_broken:build",
     "importing module 'flobc_test_broken' failed: RuntimeError: needs a GPU"),
    ("flobc_test_plugins:nope", "module 'flobc_test_plugins' has no function 'nope'"),
    ("flobc_test_plugins:not_callable", "has no function 'not_callable'"),
    ("resnet", "unknown model 'resnet'; known models: breast_cancer_mlp, diabetes_mlp, "
     "digits_mlp, mnist_cnn, mnist_mlp, or a builder"),
])
def test_a_name_that_builds_nothing_is_named(name: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        model_builder(name)


def test_import_errors_come_before_tensorflow(tmp_path: Path) -> None:
    """A missing module fails before Keras is imported, so the error is quick to see."""
    code = ("import sys\nfrom flobc.ml.models import ModelError, build_model\n"
            "try:\n    build_model('flobc_test_missing:build', 0)\n"
            "except ModelError:\n    print('keras' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == "False"


def test_a_validator_checks_the_module_is_there_without_running_it() -> None:
    for name in ("mnist_cnn", "flobc_test_plugins:build", "flobc_test_broken:build"):
        check_importable(name)
    assert "flobc_test_broken" not in sys.modules, "found, not imported"
    for name in ("flobc_test_missing:build", "flobc_test_missing.sub:build"):
        with pytest.raises(ModelError, match="cannot import module 'flobc_test_missing"):
            check_importable(name)
