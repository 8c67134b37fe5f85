"""The data of this project: every trainer and every validator calls ``load()``.

Replace the body with your own data: return features ``x`` (N samples of any shape) and
targets ``y`` (integer class labels 0..k-1, or float values for regression). flobc
splits them the same way on every node (training, the validators' hold-out, test), so
every node must get the same arrays. This one is scikit-learn's bundled 8x8 digits, so
the project runs offline.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits


def load() -> tuple[np.ndarray, np.ndarray]:
    """1,797 images of 64 pixels scaled to [0, 1], and their digits 0-9."""
    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
