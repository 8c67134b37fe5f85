"""The model zoo: Keras 3 models by name, with initial weights fixed by a seed.

Every participant must start round one from the same model, so initial weights
depend on the seed alone: each layer gets its own explicitly seeded initializer
(stateless random ops), never the process's global random state. Models train
with plain SGD, FedAvg's local optimizer: it keeps no state between rounds.
Keras is imported inside the functions because importing TensorFlow takes
seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

INPUT_SHAPE = (28, 28, 1)
N_CLASSES = 10
LEARNING_RATE = 0.1


def _layer_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent 31-bit seeds derived from one, so no two layers share values."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n) >> 1]


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


MODELS: dict[str, Callable[[int], keras.Model]] = {
    "mnist_cnn": _mnist_cnn,
    "mnist_mlp": _mnist_mlp,
}
DEFAULT_MODEL = "mnist_cnn"


def build_model(name: str, seed: int) -> keras.Model:
    """A compiled model whose initial weights depend only on ``name`` and ``seed``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    import keras

    model = MODELS[name](seed)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def initial_weights(name: str, seed: int) -> list[np.ndarray]:
    """The round-zero weights: bit-identical on every call and in every process."""
    return [np.asarray(w) for w in build_model(name, seed).get_weights()]
