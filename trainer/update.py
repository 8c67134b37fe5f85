"""What a trainer submits for a round, before it is encoded and signed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LocalUpdate:
    delta: list[np.ndarray]
    samples: int
    loss: float
    accuracy: float
