"""A PyTorch classifier for scikit-learn's breast cancer table (30 features, 2 classes).

Name it in genesis as ``breast_cancer_torch:build`` with this folder on every node's
Python path (``pip install 'flobc[torch]'``):

    PYTHONPATH=examples/pytorch flobc cluster up --dataset breast_cancer \
        --model breast_cancer_torch:build

flobc calls ``build(seed)`` wherever it needs the model and trains what it returns with
its own SGD settings and the task's loss (cross-entropy on the logits), so the builder
only describes layers. It returns logits, one per class, and seeds its initialisation
from ``seed`` so that every process starts from the same weights.
"""

from __future__ import annotations

import torch

FEATURES = 30
CLASSES = 2


def build(seed: int) -> torch.nn.Module:
    """One hidden layer of 16 units: about 500 weights."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, CLASSES))
