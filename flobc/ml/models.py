"""The model zoo: Keras 3 models by name, with initial weights fixed by a seed.

Every participant must start round one from the same model, so initial weights
depend on the seed alone: each layer gets its own explicitly seeded initializer
(stateless random ops), never the process's global random state. Models train
with plain SGD, FedAvg's local optimizer: it keeps no state between rounds.
Keras is imported inside the functions because importing TensorFlow takes
seconds.

Besides the zoo's names, a model may be named ``package.module:function``: a
builder ``function(seed: int) -> keras.Model`` (or a ``torch.nn.Module``, see
``flobc.ml.torch_learner``) that every validator and trainer
imports from its own path (PYTHONPATH or an installed package). The same rules
hold for it as for the zoo: it takes one sample of the dataset's features and gives
the task's outputs (``flobc.ml.dataset.Task``: softmax probabilities over the
classes, one value per regression target, or a sigmoid per label), and seeds every
initializer from ``seed``. flobc compiles what it returns with its own SGD settings
and the task's loss (a compile in the builder is replaced), so that every
participant trains alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from flobc.errors import InputError
from flobc.ml import imports
from flobc.ml.dataset import Task
from flobc.ml.imports import import_function, is_function_name
from flobc.ml.objectives import OBJECTIVES

if TYPE_CHECKING:
    import keras

LEARNING_RATE = 0.1
CLIP_NORM = 3.0
"""Each SGD step's gradient is scaled down to this global norm at most. Without it, one
epoch on 1,000 samples now and then ends on a step that throws an honest model far off
(its loss on a validator's shard up 1.4 to 2.5 above the base's), and validators rightly
reject it; with it, such steps stay small and learning is as fast (docs/benchmarks.md)."""


class ModelError(InputError):
    """A model name that names nothing buildable, or a builder that breaks the rules."""


def _layer_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent 31-bit seeds derived from one, so no two layers share values."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n) >> 1]


INPUT_SHAPE = (28, 28, 1)
N_CLASSES = 10
MNIST_TASK = Task("classification", INPUT_SHAPE, N_CLASSES)
"""What the MNIST models are for: 28x28 grey images, 10 digits."""


def _mnist_cnn(seed: int) -> keras.Model:
    import keras

    s = iter(_layer_seeds(seed, 4))
    init = keras.initializers.GlorotUniform
    return keras.Sequential([
        keras.Input(INPUT_SHAPE),
        keras.layers.Conv2D(16, 3, activation="relu", kernel_initializer=init(next(s))),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", kernel_initializer=init(next(s))),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init(next(s))),
        keras.layers.Dense(N_CLASSES, activation="softmax", kernel_initializer=init(next(s))),
    ], name="mnist_cnn")


def _mnist_mlp(seed: int) -> keras.Model:
    import keras

    s = iter(_layer_seeds(seed, 2))
    init = keras.initializers.GlorotUniform
    return keras.Sequential([
        keras.Input(INPUT_SHAPE),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", kernel_initializer=init(next(s))),
        keras.layers.Dense(N_CLASSES, activation="softmax", kernel_initializer=init(next(s))),
    ], name="mnist_mlp")


def _dense(name: str, inputs: int, hidden: int, outputs: int, activation: str | None
           ) -> Callable[[int], keras.Model]:
    """A one-hidden-layer network on ``inputs`` features (tabular data, small images)."""
    def build(seed: int) -> keras.Model:
        import keras

        s = iter(_layer_seeds(seed, 2))
        init = keras.initializers.GlorotUniform
        return keras.Sequential([
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu", kernel_initializer=init(next(s))),
            keras.layers.Dense(outputs, activation=activation,
                               kernel_initializer=init(next(s))),
        ], name=name)
    return build


MODELS: dict[str, Callable[[int], keras.Model]] = {
    "mnist_cnn": _mnist_cnn,
    "mnist_mlp": _mnist_mlp,
    "digits_mlp": _dense("digits_mlp", 64, 32, 10, "softmax"),
    "breast_cancer_mlp": _dense("breast_cancer_mlp", 30, 16, 2, "softmax"),
    "diabetes_mlp": _dense("diabetes_mlp", 10, 16, 1, None),
}
MODEL_TASKS: dict[str, Task] = {
    "mnist_cnn": MNIST_TASK,
    "mnist_mlp": MNIST_TASK,
    "digits_mlp": Task("classification", (64,), 10),
    "breast_cancer_mlp": Task("classification", (30,), 2),
    "diabetes_mlp": Task("regression", (10,), 1),
}
"""The task each zoo model is made for (the datasets of the same names)."""
DEFAULT_MODEL = "mnist_cnn"


def is_model_name(name: object) -> bool:
    """Whether ``name`` is a zoo name or has the form ``package.module:function``
    (nothing is imported: genesis is checked without TensorFlow)."""
    return isinstance(name, str) and (name in MODELS or is_function_name(name))


def model_builder(name: str) -> Callable[[int], keras.Model]:
    """The function that builds model ``name``: from the zoo, or imported."""
    if name in MODELS:
        return MODELS[name]
    if not is_function_name(name):
        raise ModelError(f"unknown model {name!r}; known models: "
                         f"{', '.join(sorted(MODELS))}, or a builder named "
                         "package.module:function")
    return import_function(name, f"model {name!r}", ModelError)


def check_importable(name: str) -> None:
    """ModelError unless model ``name``'s module is on this process's path. The module is
    found, not run, so a process that must not import TensorFlow can check early."""
    if name not in MODELS:
        imports.check_importable(name, f"model {name!r}", ModelError)


def model_task(name: str) -> Task | None:
    """The task a zoo model is made for; None for a builder (its dataset says)."""
    return MODEL_TASKS.get(name)


def is_torch_module(model: object) -> bool:
    """Whether a builder returned a PyTorch module (without importing PyTorch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def build_model(name: str, seed: int, task: Task | None = None) -> Any:
    """A model whose initial weights depend only on ``name`` and ``seed``, checked
    against ``task`` (None: a zoo model's own task; a builder's model is then taken as
    a classifier, unchecked): a Keras model compiled with the task's loss, or a
    PyTorch module as the builder made it (flobc.ml.torch_learner trains it)."""
    task = task or model_task(name)
    builder = model_builder(name)
    try:
        model = builder(seed)
    except Exception as exc:  # the builder's own code: name it, not a traceback
        raise ModelError(f"model {name!r}: the builder failed when called with seed "
                         f"{seed}: {type(exc).__name__}: {exc}") from exc
    if is_torch_module(model):
        _check_module(name, model, task)
        return model
    import keras

    _check_shape(name, model, task)
    objective = OBJECTIVES.get("classification" if task is None else task.kind)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, global_clipnorm=CLIP_NORM),
        loss=objective.keras_loss,
        metrics=list(objective.keras_metrics),
    )
    return model


_OUTPUTS = {"classification": "class probabilities", "regression": "target values",
            "multilabel": "label probabilities"}


def _check_shape(name: str, model: object, task: Task | None) -> None:
    """A model must take one sample of the task's features and give its outputs."""
    import keras

    if not isinstance(model, keras.Model):
        raise ModelError(f"model {name!r}: the builder returned {type(model).__name__}, "
                         "not a keras.Model or a torch.nn.Module")
    start = f"keras.Input({task.sample_shape})" if task is not None else "keras.Input"
    if not model.weights:
        raise ModelError(f"model {name!r} has no weights; start it with {start} so that "
                         f"it is built")
    try:
        got_in, got_out = tuple(model.input_shape), tuple(model.output_shape)
    except (AttributeError, ValueError, TypeError) as exc:
        raise ModelError(f"model {name!r}: cannot read its input and output shapes ({exc}); "
                         f"start it with {start}") from exc
    if task is None:
        return
    want_in, want_out = (None, *task.sample_shape), (None, task.outputs)
    if (got_in, got_out) != (want_in, want_out):
        raise ModelError(f"model {name!r} maps {got_in} to {got_out}; for this dataset "
                         f"({task.kind}) it must map {want_in} features to {want_out} "
                         f"{_OUTPUTS[task.kind]}")


def _check_module(name: str, module: Any, task: Task | None) -> None:
    """A PyTorch module must map a batch of the task's features to its outputs (tried
    on zeros)."""
    torch = sys.modules["torch"]
    if not list(module.state_dict()):
        raise ModelError(f"model {name!r} has no weights")
    if task is None:
        return
    try:
        with torch.no_grad():
            out = module.eval()(torch.zeros((2, *task.sample_shape)))
    except Exception as exc:  # the module's own code: any error means it does not fit
        raise ModelError(f"model {name!r} cannot take a batch of {task.sample_shape} "
                         f"features: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model {name!r} returns {type(out).__name__}, not a tensor of "
                         f"{_OUTPUTS[task.kind]}")
    if tuple(out.shape) != (2, task.outputs):
        raise ModelError(f"model {name!r} maps a batch of 2 x {task.sample_shape} to "
                         f"{tuple(out.shape)}; for this dataset ({task.kind}) it must give "
                         f"(2, {task.outputs}) {_OUTPUTS[task.kind]}")


def model_weights(model: Any) -> list[np.ndarray]:
    """A built model's weights as numpy arrays, whatever its framework."""
    if is_torch_module(model):  # the state_dict's tensors, in its order
        return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]
    return [np.asarray(w) for w in model.get_weights()]


def initial_weights(name: str, seed: int, task: Task | None = None) -> list[np.ndarray]:
    """The round-zero weights: bit-identical on every call and in every process.

    A builder from outside the zoo is built twice and must give the same weights both
    times: an initializer without a seed would draw new ones on every build."""
    weights = model_weights(build_model(name, seed, task))
    if name not in MODELS:
        again = model_weights(build_model(name, seed, task))
        if not all(np.array_equal(a, b) for a, b in zip(weights, again, strict=True)):
            raise ModelError(f"model {name!r} is not deterministic: two builds with seed "
                             f"{seed} gave different weights; give every layer an "
                             "initializer seeded from the builder's seed argument")
    return weights
