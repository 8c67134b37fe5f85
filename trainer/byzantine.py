"""Byzantine trainer behaviours, for experiments and tests of the validators' vote.

A Byzantine trainer trains honestly and then corrupts its delta before signing it, so
the update still passes every cheap check (shapes, dtypes, finite values) and only the
validators' evaluation on held-out data can reject it:

- ``sign_flip``: the delta negated and scaled, pushing the model away from the optimum;
- ``noise``: the delta drowned in large Gaussian noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BEHAVIOURS = ("honest", "sign_flip", "noise")
DEFAULT_SCALE = {"honest": 1.0, "sign_flip": 4.0, "noise": 1.0}
"""sign_flip: the factor applied to the negated delta; noise: the standard deviation."""


def transform(behaviour: str, delta: Sequence[np.ndarray], *, scale: float | None = None,
              seed: int = 0) -> list[np.ndarray]:
    """``delta`` as a trainer with ``behaviour`` would submit it; dtypes and shapes kept.

    ``seed`` fixes the noise, so an experiment can be rerun exactly.
    """
    if behaviour not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; known: {', '.join(BEHAVIOURS)}")
    factor = DEFAULT_SCALE[behaviour] if scale is None else scale
    if behaviour == "honest":
        return [np.array(d) for d in delta]
    if behaviour == "sign_flip":
        return [(-factor * d).astype(d.dtype) for d in delta]
    rng = np.random.default_rng(seed)
    return [(d + rng.normal(0.0, factor, d.shape)).astype(d.dtype) for d in delta]
