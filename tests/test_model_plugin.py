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

from flobc.ml.dataset import Task
from flobc.ml.models import (
    LEARNING_RATE,
    MNIST_TASK,
    ModelError,
    build_model,
    check_importable,
    initial_weights,
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

def no_seed():
    return build(0)

not_callable = 3
'''

TORCH_BUILDERS = '''
import torch

def unseeded(seed):
    return torch.nn.Linear(30, 2)

def no_weights(seed):
    return torch.nn.ReLU()

class Pair(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(30, 2)

    def forward(self, x):
        return self.linear(x), x

def pair(seed):
    torch.manual_seed(seed)
    return Pair()
'''
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module", autouse=True)
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Modules ``flobc_test_plugins`` (Keras builders), ``flobc_test_torch_plugins``
    (PyTorch ones), ``flobc_test_broken`` (fails on import) and the PyTorch example's
    ``breast_cancer_torch`` on the path, as PYTHONPATH would put them."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "flobc_test_plugins.py").write_text(BUILDERS)
    (folder / "flobc_test_torch_plugins.py").write_text(TORCH_BUILDERS)
    (folder / "flobc_test_broken.py").write_text('raise RuntimeError("needs a GPU")\n')
    paths = [str(folder), str(EXAMPLES / "pytorch")]
    sys.path[:0] = paths
    yield
    for path in paths:
        sys.path.remove(path)
    for name in ("flobc_test_plugins", "flobc_test_torch_plugins", "flobc_test_broken",
                 "breast_cancer_torch"):
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


TABULAR = Task("classification", (30,), 2)


@pytest.mark.parametrize(("name", "task", "message"), [
    # names that build nothing
    ("resnet", None, "unknown model 'resnet'; known models: breast_cancer_mlp, diabetes_mlp, "
     "digits_mlp, mnist_cnn, mnist_mlp, or a builder named package.module:function"),
    ("flobc_test_missing:build", None,
     r"cannot import module 'flobc_test_missing' \(No module named 'flobc_test_missing'\); "
     r"every validator and trainer needs it on its path"),
    ("flobc_test_missing.sub:build", None, "cannot import module 'flobc_test_missing.sub'"),
    ("flobc_test_broken:build", None,
     "importing module 'flobc_test_broken' failed: RuntimeError: needs a GPU"),
    ("flobc_test_plugins:nope", None, "module 'flobc_test_plugins' has no function 'nope'"),
    ("flobc_test_plugins:not_callable", None,
     "flobc_test_plugins.not_callable is int, not a function"),
    ("flobc_test_plugins:no_seed", None,
     r"the builder failed when called with seed 0: TypeError: .*no_seed\(\) takes 0 "
     r"positional arguments but 1 was given"),
    ("flobc_test_plugins:not_a_model", None,
     "the builder returned str, not a keras.Model or a torch.nn.Module"),
    # Keras models that do not fit the dataset, or are not seeded
    ("flobc_test_plugins:three_classes", MNIST_TASK,
     r"maps \(None, 28, 28, 1\) to \(None, 3\); for this dataset \(classification\) it "
     r"must map \(None, 28, 28, 1\) features to \(None, 10\) class probabilities"),
    ("mnist_cnn", Task("classification", (64,), 10),
     r"maps \(None, 28, 28, 1\) to \(None, 10\); for this dataset \(classification\) it "
     r"must map \(None, 64\) features"),
    ("breast_cancer_mlp", Task("regression", (30,), 1),
     r"it must map \(None, 30\) features to \(None, 1\) target values"),
    ("flobc_test_plugins:unbuilt", MNIST_TASK,
     r"has no weights; start it with keras.Input\(\(28, 28, 1\)\)"),
    ("flobc_test_plugins:unseeded", MNIST_TASK,
     "'flobc_test_plugins:unseeded' is not deterministic: two builds with seed 0 gave "
     "different weights"),
    # PyTorch modules likewise
    ("breast_cancer_torch:build", Task("classification", (64,), 2),
     r"cannot take a batch of \(64,\) features: RuntimeError: mat1 and mat2 shapes"),
    ("breast_cancer_torch:build", Task("regression", (30,), 1),
     r"maps a batch of 2 x \(30,\) to \(2, 2\); for this dataset \(regression\) it must "
     r"give \(2, 1\) target values"),
    ("flobc_test_torch_plugins:pair", TABULAR, "returns tuple, not a tensor of class "
                                               "probabilities"),
    ("flobc_test_torch_plugins:no_weights", TABULAR, "has no weights"),
    ("flobc_test_torch_plugins:unseeded", TABULAR,
     "'flobc_test_torch_plugins:unseeded' is not deterministic"),
])
def test_a_bad_model_is_refused_naming_the_problem(name: str, task: Task | None,
                                                   message: str) -> None:
    """Every way a model name or builder can fail the rules, in the one call that every
    process makes first (``testnet init``, trainers, evaluators: the version-0 weights);
    the bad dataset files are in tests/test_ml_data.py."""
    with pytest.raises(ModelError, match=message):
        initial_weights(name, 0, task)


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
