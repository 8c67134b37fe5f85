"""examples/custom_model end to end: its run.sh, as a user runs it, trains the example's
own Keras model on the example's own dataset with real validator and trainer processes,
and every validator ends with the same model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flobc.config import Genesis, NodeConfig
from flobc.crypto import sha256
from flobc.protocol.settings import FLConfig

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_model"
ROUNDS = 3
RUN_TIMEOUT_S = 240


def test_the_example_trains_its_model_on_its_dataset(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    work, net = tmp_path / "work", tmp_path / "net"
    env = {**os.environ, "WORK": str(work),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(EXAMPLE / "run.sh"), "--rounds", str(ROUNDS), "--keep", str(net)],
                          cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, f"run.sh failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    rows = json.loads((work / "history.json").read_text())
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert [r["version"] for r in rows] == list(range(1, ROUNDS + 1))
    assert len({r["model_hash"] for r in rows}) == ROUNDS, "every round commits a new model"
    assert all(r["accepted"] >= 1 for r in rows), rows
    assert rows[-1]["accuracy"] >= 0.6, [r["accuracy"] for r in rows]
    agreed = re.search(r"all 4 validators hold model ([0-9a-f]{64})", done.stdout)
    assert agreed, done.stdout[-2000:]
    assert agreed.group(1) == rows[-1]["model_hash"]

    dataset = work / "rotated_digits.npz"
    fl = FLConfig.from_genesis(Genesis.load(net / "genesis.toml"))
    assert (fl.model, fl.dataset) == ("model:build", "file")
    homes = sorted(net.glob("validator-*"))
    assert len(homes) == 4
    assert all(NodeConfig.load(home).dataset_path == dataset.resolve() for home in homes)

    # Version 0 is what the builder gives for the genesis seed in any process.
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from flobc.ml.models import initial_weights
    from flobc.ml.weights import encode_weights

    assert sha256(encode_weights(initial_weights(fl.model, fl.seed))) == fl.model_v0_hash
