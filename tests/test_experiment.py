"""``flobc experiment``: a tiny grid through the command line, its JSON, its docs, and
its chain checked against a replay by a fresh ledger and application, as a validator
would execute the same blocks; bad grids are refused naming the problem."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from flobc import codec
from flobc.config import Genesis
from flobc.consensus.application import BlockState, CommittedState
from flobc.crypto import sha256
from flobc.launch.cli import main
from flobc.launch.experiment import GridError, make_grid
from flobc.launch.experiment.chain import LEDGER_DIR
from flobc.launch.experiment.run import run_grid
from flobc.ml.weights import decode_weights, spec
from flobc.protocol.aggregation import fedavg
from flobc.protocol.genesis import GENESIS_MODEL
from flobc.protocol.reputation import rewarded
from flobc.protocol.state import read_model, read_update
from flobc.storage.ledger import Ledger
from flobc.trainer.byzantine import BEHAVIOURS, Behaviour, RoundView
from flobc.validator.fl.app import FLApp
from flobc.validator.fl.rounds import model_weights

TRAINERS, ROUNDS = 4, 2
TINY = ["experiment", "--model", "mnist_mlp", "--trainers", str(TRAINERS),
        "--rounds", str(ROUNDS), "--partitions", "iid", "--attacks", "none,sign_flip",
        "--attackers", "1", "--defences", "none,chance_bound"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny grid, run once through ``flobc experiment`` with --docs and --keep."""
    out = tmp_path_factory.mktemp("experiment")
    stdout = out / "stdout.json"
    with stdout.open("w") as file, pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", file)
        assert main([*TINY, "--docs", str(out / "docs"), "--name", "tiny",
                     "--keep", str(out / "cells")]) == 0
    return {"json": json.loads(stdout.read_text()), "out": out}


def _cell(tiny: dict[str, Any], attack: str, defence: str) -> tuple[int, dict[str, Any]]:
    cells = tiny["json"]["cells"]
    return next((i, c) for i, c in enumerate(cells)
                if c["attack"] == attack and c["defence"] == defence)


def test_a_tiny_grid_prints_one_record_per_cell_and_writes_its_docs(tiny: dict[str, Any]
                                                                    ) -> None:
    result = tiny["json"]
    assert result["settings"]["trainers"] == TRAINERS
    assert result["settings"]["validators"] == 4
    cells = [(c["partition"], c["attack"], c["attackers"], c["defence"])
             for c in result["cells"]]
    assert cells == [("iid", "none", 0, "none"), ("iid", "none", 0, "chance_bound"),
                     ("iid", "sign_flip", 1, "none"), ("iid", "sign_flip", 1, "chance_bound")]
    for cell in result["cells"]:
        assert [r["round"] for r in cell["rounds"]] == [1, 2]
        assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in cell["rounds"])
        sent = sum(sum(c.values()) for c in cell["updates"].values())
        assert sent == TRAINERS * ROUNDS
        assert len(cell["trust"]) == TRAINERS
    page = (tiny["out"] / "docs" / "tiny.md").read_text()
    assert page.count("| iid |") == 4
    assert "flobc experiment --model mnist_mlp" in page
    plots = sorted((tiny["out"] / "docs" / "tiny").glob("*.png"))
    assert [p.name for p in plots] == ["iid--none.png", "iid--sign-flip.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)


def _replay(home: Path, into: Path) -> list[bytes]:
    """Every block of a kept cell executed again by a fresh ledger and application;
    the model hashes that gives, version by version."""
    genesis = Genesis.from_toml((home / "genesis.toml").read_text())
    model_v0 = (home / GENESIS_MODEL).read_bytes()
    hashes = []
    with Ledger(home / LEDGER_DIR) as kept, Ledger(into) as ledger:
        ledger.put_blob(model_v0)
        app = FLApp.from_genesis(genesis, model_v0)
        for height in range(1, kept.height + 1):
            raw = kept.block(height)
            meta = kept.meta(height)
            assert raw is not None and meta is not None
            _, txs = codec.unpack(raw, len(raw))
            for tx in txs:
                for digest in app.required_blobs(tx):
                    blob = kept.blob(digest)
                    assert blob is not None
                    ledger.put_blob(blob)
            overlay = ledger.state.overlay()
            state = BlockState(ledger, overlay)
            results = app.execute_block(height, meta.time_ms, txs, state)
            ledger.commit_block(height, raw, b"cert", sha256(raw), meta.time_ms,
                                [sha256(tx) for tx in txs], [codec.pack(r) for r in results],
                                overlay, state.new_blobs)
        assert ledger.state.root == kept.state.root
        version = 0
        while (record := read_model(ledger.state, version)) is not None:
            hashes.append(record.hash)
            version += 1
    return hashes


@pytest.mark.parametrize("attack,defence", [("none", "none"), ("sign_flip", "chance_bound")])
def test_the_reported_models_are_what_the_chain_computes(tiny: dict[str, Any], attack: str,
                                                         defence: str, tmp_path: Path) -> None:
    index, cell = _cell(tiny, attack, defence)
    home = tiny["out"] / "cells" / f"cell-{index}"
    reported = [bytes.fromhex(r["model_hash"]) for r in cell["rounds"]]
    with Ledger(home / LEDGER_DIR) as ledger:
        for version, digest in enumerate(reported, start=1):
            record = read_model(ledger.state, version)
            assert record is not None and record.hash == digest
            blob = ledger.blob(digest)
            assert blob is not None and sha256(blob) == digest
        assert bytes.fromhex(cell["final_model_hash"]) == reported[-1]
    assert _replay(home, tmp_path / "replay")[1:] == reported


def test_without_a_vote_every_update_is_accepted_and_averaged(tiny: dict[str, Any]) -> None:
    """The baseline: every update accepted, so each version is the FedAvg (samples x
    trust) of all the round's deltas, the attacker's included."""
    for attack in ("none", "sign_flip"):
        index, cell = _cell(tiny, attack, "none")
        for role, counts in cell["updates"].items():
            assert counts["accepted"] == sum(counts.values()), role
        assert all(t["accepted"] == ROUNDS and not t["excluded"] for t in cell["trust"])
    home = tiny["out"] / "cells" / f"cell-{index}"
    with Ledger(home / LEDGER_DIR) as ledger:
        state = CommittedState(ledger)
        record = read_model(state, 1)
        assert record is not None and len(record.updates) == TRAINERS
        deltas, weights = [], []
        for trainer, blob_hash, _ in record.updates:
            blob = ledger.blob(blob_hash)
            update = read_update(state, 1, trainer)
            assert blob is not None and update is not None
            deltas.append(decode_weights(blob, max_bytes=len(blob)))
            # trust when the round closed: the initial trust, rewarded once
            weights.append(update.samples * rewarded(500_000, 100_000))
        got = ledger.blob(record.hash)
        assert got is not None
        expected = fedavg(model_weights(state, 0, spec(deltas[0])), deltas, weights)
        assert all(np.array_equal(a, b) for a, b in zip(
            decode_weights(got, max_bytes=len(got)), expected, strict=True))


def test_a_sign_flip_attacker_on_iid_data_is_rejected_by_chance_bound(tiny: dict[str, Any]
                                                                      ) -> None:
    _, cell = _cell(tiny, "sign_flip", "chance_bound")
    assert cell["updates"]["attacker"]["rejected"] == ROUNDS
    assert cell["updates"]["attacker"]["accepted"] == 0
    assert cell["updates"]["honest"]["accepted"] == (TRAINERS - 1) * ROUNDS
    attacker = [t for t in cell["trust"] if t["role"] == "attacker"]
    assert [t["rejected"] for t in attacker] == [ROUNDS]
    _, undefended = _cell(tiny, "sign_flip", "none")
    assert cell["final_accuracy"] > undefended["final_accuracy"] + 0.3


@pytest.mark.parametrize("flags,problem", [
    (["--attacks", "sign_flop"], "unknown attack 'sign_flop'"),
    (["--attacks", "noise:loud"], "scale 'loud' is not a number"),
    (["--partitions", "shards:two"], "partition 'shards:two'"),
    (["--partitions", "zipf"], "unknown partitioner 'zipf'"),
    (["--attacks", "sign_flip", "--attackers", "4"], "attackers: 4 is not in 1..3"),
    (["--defences", "majority"], "unknown vote 'majority'"),
    (["--defences", "chance_bound+mean"], "unknown aggregator 'mean'"),
    (["--defences", "none,none"], "'none' is listed twice"),
])
def test_a_bad_grid_on_the_command_line_is_refused_naming_it(
        flags: list[str], problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "--trainers", "4", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flobc: error: ") and problem in err


@pytest.mark.parametrize("text,problem", [
    ("rounds = 'ten'\n", "rounds must be an integer"),
    ("round = 3\n", "unknown key 'round'"),
    ("attacks = 'noise'\n", "attacks must be a list of strings"),
    ("[defences.strict]\nvalidation = { name = 'chance_bound', give_up = -1 }\n",
     "defence 'strict': app.validation.give_up must be a finite number"),
    ("[defences.strict]\nvalidation = { name = 'chance_bound', slack = 1 }\n",
     "unknown setting 'slack' of chance_bound"),
    ("[defences.robust]\naggregator = { name = 'krum', f = 'one' }\n",
     "defence 'robust': app.krum_f must be an integer"),
    ("[app]\ntrust_penalty = 2.0\n", "app.trust_penalty must be an integer"),
    ("rounds = [\n", "grid file"),
])
def test_a_bad_grid_file_is_refused_naming_the_setting(text: str, problem: str,
                                                       tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(GridError) as caught:
        make_grid(path)
    assert problem in str(caught.value)


def test_a_grid_file_names_defences_as_genesis_tables(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text("partitions = ['iid', 'dirichlet:0.5']\nattacks = ['none', 'noise:2']\n"
                    "attackers = [1, 2]\n"
                    "[defences.plain]\nvalidation = 'none'\n"
                    "[defences.strict]\nvalidation = { name = 'chance_bound', give_up = 0.3 }\n"
                    "aggregator = { name = 'trimmed_mean', trim_fraction = 0.2 }\n")
    grid = make_grid(path, rounds=3)
    assert grid.rounds == 3
    cells = grid.cells()
    # per partition: the clean run once per defence, each attacker count per defence
    assert len(cells) == 2 * (1 + 2) * 2
    strict = cells[1].defence
    assert strict.validation == {"name": "chance_bound", "give_up": 0.3}
    assert strict.aggregator == {"name": "trimmed_mean", "trim_fraction": 0.2}
    assert cells[2].attack.label == "noise:2" and cells[2].attackers == 1


class _Probe(Behaviour):
    """Submits the mean of the honest deltas it is shown, and notes what it saw."""

    seen: ClassVar[list[tuple[Behaviour, int, list[list[np.ndarray]]]]] = []

    def delta(self, delta: Sequence[np.ndarray], rng: np.random.Generator,
              view: RoundView) -> list[np.ndarray]:
        peers = view.peers()
        self.seen.append((self, view.round, peers))
        return [np.mean([p[t] for p in peers], axis=0).astype(d.dtype)
                for t, d in enumerate(delta)]


@pytest.fixture
def probe() -> Iterator[type[_Probe]]:
    BEHAVIOURS.add("probe", _Probe)
    _Probe.seen.clear()
    try:
        yield _Probe
    finally:
        BEHAVIOURS.remove("probe")


def test_an_attacker_keeps_one_behaviour_and_sees_the_honest_deltas_on_chain(
        probe: type[_Probe], tmp_path: Path) -> None:
    grid = make_grid(model="mnist_mlp", trainers=3, rounds=2, partitions=["iid"],
                     attacks=["probe"], attackers=[1], defences=["none"])
    [cell] = run_grid(grid, keep=tmp_path, progress=lambda line: None)
    assert [r for _, r, _ in probe.seen] == [1, 2]
    assert probe.seen[0][0] is probe.seen[1][0]
    with Ledger(tmp_path / "cell-0" / LEDGER_DIR) as ledger:
        state = CommittedState(ledger)
        for _, round_, peers in probe.seen:
            record = read_model(state, round_)
            assert record is not None
            on_chain = [decode_weights(b, max_bytes=len(b))
                        for _, digest, _ in record.updates
                        if (b := ledger.blob(digest)) is not None]
            honest = [w for w in on_chain if _digest(w) != _digest(_mean(peers))]
            assert len(peers) == 2 and len(on_chain) == 3 and len(honest) == 2
            assert sorted(_digest(p) for p in peers) == sorted(_digest(h) for h in honest)
    assert cell["updates"]["attacker"]["accepted"] == 2


def _mean(peers: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.mean([p[t] for p in peers], axis=0).astype(peers[0][t].dtype)
            for t in range(len(peers[0]))]


def _digest(weights: list[np.ndarray]) -> bytes:
    return sha256(b"".join(w.tobytes() for w in weights))


@pytest.mark.parametrize(("name", "cells"), [("small", 8), ("honest", 10), ("attacks", 32),
                                           ("colluders", 12), ("strong-colluders", 18)])
def test_the_shipped_grid_files_are_valid_grids(name: str, cells: int) -> None:
    grid = make_grid(Path(__file__).parent.parent / "benchmarks" / "grids" / f"{name}.toml")
    assert grid.trainers == 10
    assert len(grid.cells()) == cells


def test_under_bap_each_accepted_update_is_its_own_version(tmp_path: Path) -> None:
    """The sync scheme is the chain's: BAP merges every accepted update at once."""
    grid = make_grid(model="mnist_mlp", trainers=3, rounds=2, sync="bap", partitions=["iid"],
                     attacks=["none"], defences=["none"])
    [cell] = run_grid(grid, keep=tmp_path, progress=lambda line: None)
    assert [r["version"] for r in cell["rounds"]] == [3, 6]
    assert cell["updates"]["honest"]["accepted"] == 6
