"""No constant of one task outside that task's own entries.

flobc takes any model and data set, so nothing in the package may assume MNIST's shape
(28x28 images, 784 pixels) or its 10 classes, except the MNIST entries themselves: the
model zoo (``flobc/ml/models.py``), the dataset registry's sources and downloads, and
the embedded sample. Defaults that name a registry entry (``model = "mnist_cnn"``) are
choices, not constants, and are allowed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("flobc", "consensus", "storage", "validator", "trainer", "configs")
TASK_ENTRIES = {"flobc/ml/models.py", "flobc/ml/sources.py", "flobc/ml/downloads.py"}
TASK_DATA = "flobc/ml/data/"
TEXT_SUFFIXES = {".py", ".js", ".html", ".css", ".toml", ".md"}
FORBIDDEN = re.compile(
    r"\b28\s*[,x×*]\s*28\b"              # the image size
    r"|\b784\b"                          # its pixels
    r"|\bN_CLASSES\b|\bINPUT_SHAPE\b|\bMNIST_TASK\b"  # the zoo's MNIST constants
    r"|\blog\(\s*10\s*\)"                # a 10-class chance loss
    r"|\bclasses\s*=\s*10\b")            # a class count


def package_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*")
                  if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts)


def test_the_pattern_finds_what_it_is_for() -> None:
    for line in ("x = x.reshape(-1, 28, 28)", "INPUT = (28, 28, 1)", "n = 784",
                 "CHANCE = math.log(10)", "from flobc.ml.models import N_CLASSES",
                 "Dataset(x, y, classes=10)", "28x28 images"):
        assert FORBIDDEN.search(line), line
    for line in ('model: str = "mnist_cnn"', "classes=100", "2828", "x.reshape(-1, 8, 8)"):
        assert not FORBIDDEN.search(line), line


def test_no_mnist_shape_or_class_count_outside_the_mnist_entries() -> None:
    files = package_files()
    assert len(files) > 50, "the package's files were not found"
    found = []
    for path in files:
        name = path.relative_to(ROOT).as_posix()
        if name in TASK_ENTRIES or name.startswith(TASK_DATA):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if FORBIDDEN.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "constants of MNIST outside its entries:\n" + "\n".join(found)
