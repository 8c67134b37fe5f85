"""The model of this project: every node builds it with ``build(seed)``.

It maps a batch of ``data.load()``'s features to one logit per class (flobc applies the
softmax). flobc trains it with its own optimiser and the task's loss, so this only
describes layers. Seed the initialisation from ``seed``: all nodes must start from the
same weights, and ``testnet init`` builds the model twice to check that they do.
"""

from __future__ import annotations

import torch

FEATURES = 64
CLASSES = 10


def build(seed: int) -> torch.nn.Module:
    """One hidden layer of 32 units: about 2,400 weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, CLASSES),
    )
