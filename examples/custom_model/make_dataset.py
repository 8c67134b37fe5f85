"""Write the example's dataset: flobc's embedded MNIST sample turned a quarter turn.

The result is an .npz file in the form ``flobc testnet init --dataset file
--dataset-file FILE`` reads: ``x``, uint8 images of shape (N, 28, 28) with values
0-255 (float images in [0, 1] and shape (N, 28, 28, 1) are accepted too), and ``y``,
integer labels 0-9. Digits lying on their side are a dataset none of the zoo's
models was written for, made offline from data that ships with flobc; put your own
arrays under the same two names to train on your data.

    python examples/custom_model/make_dataset.py --out rotated_digits.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from flobc.ml.data import load_dataset


def rotated_digits() -> tuple[np.ndarray, np.ndarray]:
    """(x, y): the 5,000 embedded digits, each turned 90 degrees anticlockwise, as uint8."""
    sample = load_dataset("mnist_5k")
    x = np.rot90(np.round(sample.x[..., 0] * 255).astype(np.uint8), k=1, axes=(1, 2))
    return np.ascontiguousarray(x), sample.y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.npz",
                        help="file to write")
    args = parser.parse_args()
    x, y = rotated_digits()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as f:  # a file object, so numpy adds no .npz suffix
        np.savez_compressed(f, x=x, y=y)
    print(f"wrote {len(y)} images to {args.out}")


if __name__ == "__main__":
    main()
