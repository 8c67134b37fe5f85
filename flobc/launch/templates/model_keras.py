"""The model of this project: every node builds it with ``build(seed)``.

It takes one sample of ``data.load()``'s features and gives one probability per class
(a softmax). flobc compiles it with its own optimiser and the task's loss, so this only
describes layers. Seed every initializer from ``seed``: all nodes must start from the
same weights, and ``testnet init`` builds the model twice to check that they do.
"""

from __future__ import annotations

import keras
import numpy as np

FEATURES = 64
CLASSES = 10


def build(seed: int) -> keras.Model:
    """One hidden layer of 32 units: about 2,400 weights."""
    hidden, output = (int(s) for s in np.random.SeedSequence(seed).generate_state(2) >> 1)
    init = keras.initializers.GlorotUniform
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(32, activation="relu", kernel_initializer=init(hidden)),
        keras.layers.Dense(CLASSES, activation="softmax", kernel_initializer=init(output)),
    ])
