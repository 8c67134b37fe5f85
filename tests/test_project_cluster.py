"""End to end, as the README's "Your own model and dataset" walks through it, from a
fresh ``git clone`` of this checkout's committed tree installed in a virtualenv of its
own: ``flobc new NAME --framework F`` then ``flobc cluster up --project NAME``, for a
Keras and a PyTorch project (4 validators, 4 trainers, votes on). Honest updates are
accepted, the validators agree on the model, and the last version's test accuracy is
clearly above version 0's, computed here from the genesis model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flobc.config import Genesis
from flobc.ml.data import split
from flobc.ml.learner import learner_for
from flobc.protocol.settings import FLConfig

pytestmark = pytest.mark.slow

ROUNDS = 3
REPO = Path(__file__).resolve().parents[1]


def run(command: list[str | Path], cwd: Path | None = None, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (f"{' '.join(map(str, command))} failed:\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def flobc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``flobc`` command of a fresh clone, installed (editable, offline) in a new
    virtualenv that takes its dependencies from this interpreter's."""
    root = tmp_path_factory.mktemp("clone")
    run(["git", "clone", "--quiet", REPO, root / "flobc"])
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "dependencies.pth").write_text(
        "\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
         "--no-deps", "--no-build-isolation", "--no-index", "-e", root / "flobc"])
    return venv / "bin" / "flobc"


def version_0_accuracy(net: Path, project: Path, monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.syspath_prepend(str(project))
    fl = FLConfig.from_genesis(Genesis.load(net / "genesis.toml"))
    data = fl.load_dataset()
    test = split(data, seed=fl.seed).test
    return learner_for(fl.model, fl.seed, task=data.spec).evaluate(test.x, test.y)["accuracy"]


@pytest.mark.parametrize("framework", ["keras", "pytorch"])
def test_a_new_project_trains_on_a_local_cluster(
        flobc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, framework: str) -> None:
    name = f"digits-{framework}"
    run([flobc, "new", name, "--framework", framework], cwd=tmp_path)
    done = run([flobc, "cluster", "up", "--project", name, "--rounds", ROUNDS,
                "--history", "history.json", "--keep", "net"], cwd=tmp_path, timeout=900)
    rows = json.loads((tmp_path / "history.json").read_text())
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["accepted"] == 4 and r["rejected"] == 0 for r in rows), rows
    agreed = re.search(r"all 4 validators hold model ([0-9a-f]{64})", done.stdout)
    assert agreed is not None and agreed[1] == rows[-1]["model_hash"], done.stdout[-2000:]
    start = version_0_accuracy(tmp_path / "net", tmp_path / name, monkeypatch)
    assert rows[-1]["accuracy"] >= start + 0.2, (start, [r["accuracy"] for r in rows])
