"""A small CNN to train with flobc instead of a model of its zoo.

Name it in genesis as ``model:build`` (module ``model``, function ``build``) with this
folder on every node's Python path:

    PYTHONPATH=examples/custom_model flobc testnet init --app fl --model model:build ...

flobc calls ``build(seed)`` wherever it needs the model and compiles what it returns with
its own optimizer and loss, so the builder only describes layers. Two rules make it fit:

- it maps (28, 28, 1) images to 10 class probabilities (a softmax output), the shape of
  every dataset flobc loads;
- every initializer that draws random numbers is seeded from ``seed``, so that the same
  seed gives the same initial weights in every process (``testnet init`` builds it
  twice and refuses a builder that does not).
"""

from __future__ import annotations

import keras
import numpy as np


def build(seed: int) -> keras.Model:
    """Two small convolutions and a softmax layer: about 5,000 weights."""
    # One independent 31-bit seed per layer, all derived from ``seed``.
    conv1, conv2, dense = (int(s) for s in np.random.SeedSequence(seed).generate_state(3) >> 1)
    init = keras.initializers.GlorotUniform
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=init(conv1)),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu", kernel_initializer=init(conv2)),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax", kernel_initializer=init(dense)),
    ], name="small_cnn")
