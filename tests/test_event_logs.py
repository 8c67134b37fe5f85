"""What an operator sees of real validator processes: their event lines on stderr, as
text or (``flobc validator start --log-format json``) one JSON object per line.

A key-value testnet loses its primary: the survivors log the view change and the new
view, and a validator stopped with SIGTERM leaves nothing but JSON on its stderr. A
learning testnet (validators 0-2 in JSON, 3 in text) runs one round in which trainer
0 sends a small step and trainer 1 N(0, 1) noise, under a genesis trust threshold that
one rejection crosses: the lines say the round closed, with what, that the noise was
rejected, by whose vote and why, and that trainer 1 was excluded; the same round shows
in ``/metrics``. That learning cluster is the only one these tests start, since each
validator's TensorFlow worker is slow to start, so the learning metrics are checked
here too.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cluster import (
    Cluster,
    Validator,
    _pdeathsig_kill,
    failure_report_plugin,
    flobc_command,
    run_flobc,
)
from test_metrics import Samples, parse, value

from flobc import codec
from flobc.config import load_key
from flobc.crypto import PrivateKey, sha256
from flobc.launch.localnet import free_port_range
from flobc.ml.weights import decode_weights, encode_weights
from flobc.protocol.txs import make_register, make_update

pytestmark = pytest.mark.slow

VALIDATORS = 4
TEXT_VALIDATOR = 3
"""Logs as text; the others log JSON."""
TRUST_THRESHOLD = 300_000
"""Trust starts at 0.5 and one rejection halves it: under this, the trainer is out."""
ROUND_TIMEOUT_S = 300.0
"""Four TensorFlow workers starting at once on a small machine, then the votes."""
STOP_TIMEOUT_S = 30.0
JSON_KEYS = {"time", "level", "logger", "message"}


def start(cluster: Cluster, index: int, log_format: str) -> None:
    """Start validator ``index`` with ``--log-format``, its stderr alone in its log."""
    v = cluster.validators[index]
    with open(v.log_path, "ab") as stderr:
        v.proc = subprocess.Popen(
            flobc_command("validator", "start", "--home", v.home, "--log-format", log_format),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=_pdeathsig_kill if sys.platform == "linux" else None)


def start_all(cluster: Cluster) -> None:
    for v in cluster.validators:
        start(cluster, v.index, "text" if v.index == TEXT_VALIDATOR else "json")
    cluster.wait_serving()
    cluster.wait_connected()


def json_lines(cluster: Cluster, index: int) -> list[dict[str, Any]]:
    """Every complete line of validator ``index``'s stderr, each parsed as one JSON
    object with the keys every line has (a line still being written is left out)."""
    text = cluster.validators[index].log_path.read_text()
    lines = text.split("\n")[:-1]
    assert lines, f"validator {index} wrote nothing"
    parsed = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"validator {index}: not a JSON line: {line!r}") from exc
        assert isinstance(entry, dict) and entry.keys() >= JSON_KEYS, line
        parsed.append(entry)
    return parsed


def events(cluster: Cluster, index: int, event: str) -> list[dict[str, Any]]:
    return [e for e in json_lines(cluster, index) if e.get("event") == event]


def text_log(cluster: Cluster, index: int) -> str:
    return cluster.validators[index].log_path.read_text()


# --- a key-value testnet: view change, clean stop ----------------------------------------


@pytest.fixture
def kv(tmp_path: Path, pytestconfig: pytest.Config) -> Iterator[Cluster]:
    with Cluster.create(tmp_path / "kv", VALIDATORS) as cluster:
        plugin = failure_report_plugin(cluster, "kv")
        pytestconfig.pluginmanager.register(plugin)
        try:
            start_all(cluster)
            yield cluster
        finally:
            pytestconfig.pluginmanager.unregister(plugin)


def test_view_change_lines_and_a_clean_stop_in_json(kv: Cluster) -> None:
    status = kv.status(0)
    assert status is not None
    view, primary = status["view"], status["primary"]
    kv.kill(primary)
    survivors = kv.running()
    kv.wait_committed(kv.submit_kv({"after": "view change"}, to=survivors))
    kv.wait_until(lambda: all(st["view"] > view and not st["in_view_change"]
                              for st in kv.statuses(survivors).values()),
                  f"validators {survivors} to settle in a view after {view}")
    settled = kv.statuses(survivors)[survivors[0]]
    new_view, new_primary = settled["view"], settled["primary"]

    for i in survivors:
        if i == TEXT_VALIDATOR:
            text = text_log(kv, i)
            assert f"WARNING flobc.consensus: validator {i}: view change from view {view} " \
                   f"to {view + 1} (primary {primary} suspected)" in text
            assert f"INFO flobc.consensus: validator {i}: entered view {new_view}, primary " \
                   f"is {new_primary}, at height" in text
            continue
        changes = events(kv, i, "view_change")
        assert changes and changes[0]["level"] == "WARNING"
        assert len({(e["view"], e["target_view"]) for e in changes}) == len(changes), \
            "one line per view change"
        assert (changes[0]["view"], changes[0]["target_view"],
                changes[0]["suspected_primary"]) == (view, view + 1, primary)
        assert changes[0]["logger"] == "flobc.consensus"
        entered = events(kv, i, "new_view")
        assert [(e["view"], e["primary"]) for e in entered][-1] == (new_view, new_primary)
        assert entered[-1]["message"].startswith(f"validator {i}: entered view {new_view}")

    stopped = next(i for i in survivors if i != TEXT_VALIDATOR)
    proc = kv.validators[stopped].proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(STOP_TIMEOUT_S) == 0
    kv.validators[stopped].proc = None
    lines = json_lines(kv, stopped)
    assert kv.validators[stopped].log_path.read_text().endswith("\n")
    assert lines[-1]["message"].startswith(f"validator {stopped} stopped at height")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", e["time"])
               for e in lines)


# --- a learning testnet: one round ------------------------------------------------------


@dataclass
class Learning:
    cluster: Cluster
    good: str
    """Trainer 0's key (hex): it sent a small step."""
    bad: str
    """Trainer 1's key (hex): it sent noise."""
    round: int
    model: dict[str, Any]
    """The model version the round made (``/fl/models/{v}`` of validator 0)."""

    def metrics(self, index: int) -> Samples:
        response = self.cluster.get(index, "/metrics")
        assert response.status_code == 200, response.text
        return parse(response.text)[1]


def _update(cluster: Cluster, chain_id: str, key: PrivateKey, delta: list[np.ndarray],
            round_: int, version: int) -> None:
    blob = encode_weights(delta)
    tx = make_update(key, chain_id, round_, version, sha256(blob), 100, 500, 900, 1)
    response = cluster.client.post(f"{cluster.validators[0].url}/fl/updates",
                                   content=codec.pack([tx, blob]))
    assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def learning(tmp_path_factory: pytest.TempPathFactory,
             pytestconfig: pytest.Config) -> Iterator[Learning]:
    out = tmp_path_factory.mktemp("learning") / "net"
    base = free_port_range(2 * VALIDATORS)
    init = run_flobc("testnet", "init", "--app", "fl", "--validators", VALIDATORS,
                     "--trainers", 2, "--out", out, "--base-port", base,
                     "--round-deadline-ms", 600_000)
    assert init.returncode == 0, init.stderr
    for genesis in out.glob("**/genesis.toml"):
        text = genesis.read_text()
        assert "\ntrust_threshold = 100000\n" in text
        genesis.write_text(text.replace("\ntrust_threshold = 100000\n",
                                        f"\ntrust_threshold = {TRUST_THRESHOLD}\n"))
    cluster = Cluster(out, [Validator(i, out / f"validator-{i}",
                                      f"http://127.0.0.1:{base + 2 * i + 1}",
                                      out / f"validator-{i}.log") for i in range(VALIDATORS)])
    plugin = failure_report_plugin(cluster, "learning")
    pytestconfig.pluginmanager.register(plugin)
    try:
        start_all(cluster)
        chain_id = cluster.get(0, "/status").json()["chain_id"]
        keys = [load_key(out / f"trainer-{i}" / "trainer_key.json") for i in range(2)]
        cluster.wait_committed(cluster.submit([make_register(k, 1, chain_id) for k in keys]))
        status = cluster.get(0, "/fl/status").json()
        v0 = (out / "genesis-model.bin").read_bytes()
        rng = np.random.default_rng(7)
        weights = decode_weights(v0, max_bytes=len(v0))
        _update(cluster, chain_id, keys[0],
                [rng.normal(0, 1e-4, w.shape).astype(w.dtype) for w in weights],
                status["round"], status["version"])
        _update(cluster, chain_id, keys[1],
                [rng.normal(0, 1, w.shape).astype(w.dtype) for w in weights],
                status["round"], status["version"])
        cluster.wait_until(
            lambda: all(cluster.get(i, "/fl/status").json()["round"] > status["round"]
                        for i in range(VALIDATORS)),
            f"round {status['round']} to be decided and closed on every validator",
            ROUND_TIMEOUT_S)
        model = cluster.get(0, f"/fl/models/{status['version'] + 1}").json()
        yield Learning(cluster, keys[0].public_key.hex(), keys[1].public_key.hex(),
                       status["round"], model)
    finally:
        pytestconfig.pluginmanager.unregister(plugin)
        cluster.close()


JSON_VALIDATORS = [i for i in range(VALIDATORS) if i != TEXT_VALIDATOR]


@pytest.mark.parametrize("index", JSON_VALIDATORS)
def test_a_learning_validator_writes_only_json_lines(learning: Learning, index: int) -> None:
    # The round may have been decided by the other validators' votes before this one's
    # evaluator worker came up: wait for it, every line read so far being JSON.
    learning.cluster.wait_until(
        lambda: any(re.match(r"evaluator worker \d+ ready", e["message"])
                    for e in json_lines(learning.cluster, index)),
        f"validator {index}'s evaluator worker to be ready", ROUND_TIMEOUT_S)


@pytest.mark.parametrize("index", JSON_VALIDATORS)
def test_round_close_rejection_and_exclusion_are_json_events(learning: Learning,
                                                             index: int) -> None:
    cluster, model = learning.cluster, learning.model
    [closed] = [e for e in events(cluster, index, "round_closed")
                if e["round"] == learning.round]
    assert closed["level"] == "INFO" and closed["logger"] == "flobc.fl"
    assert {k: closed[k] for k in ("version", "accepted", "rejected", "undecided",
                                   "model_hash", "height")} == {
        "version": model["version"], "accepted": 1, "rejected": 1, "undecided": 0,
        "model_hash": model["hash"], "height": model["height"]}
    assert closed["seconds"] > 0
    assert closed["message"].startswith(
        f"round {learning.round} closed: version {model['version']}, 1 accepted, "
        f"1 rejected, 0 undecided, model {model['hash'][:16]}, ")

    [rejected] = events(cluster, index, "update_rejected")
    assert rejected["level"] == "WARNING"
    assert (rejected["trainer"], rejected["round"]) == (learning.bad, learning.round)
    assert rejected["reject_votes"] >= 2
    [excluded] = events(cluster, index, "trainer_excluded")
    assert excluded["trainer"] == learning.bad and excluded["rejected"] == 1
    assert excluded["trust"] < excluded["threshold"] == TRUST_THRESHOLD / 1e6


def test_reject_votes_log_the_evaluation_that_made_them(learning: Learning) -> None:
    """Rejection takes two reject votes, so a JSON validator cast one at least."""
    votes = [e for i in JSON_VALIDATORS for e in events(learning.cluster, i, "vote_cast")]
    rejects = [e for e in votes if e["vote"] == "reject"]
    assert rejects and all(e["trainer"] == learning.bad for e in rejects)
    for e in rejects:
        assert e["level"] == "WARNING" and e["round"] == learning.round
        assert e["loss"] > e["base_loss"]
        assert f"loss {e['loss']:.4f} vs base {e['base_loss']:.4f}" in e["message"]
    assert all(e["trainer"] == learning.good for e in votes if e["vote"] == "accept")


def test_the_text_validator_writes_the_human_lines(learning: Learning) -> None:
    text = text_log(learning.cluster, TEXT_VALIDATOR)
    model, bad = learning.model, learning.bad[:16]
    assert re.search(
        rf"INFO flobc\.fl: round {learning.round} closed: version {model['version']}, "
        rf"1 accepted, 1 rejected, 0 undecided, model {model['hash'][:16]}, "
        rf"\d+\.\d s, height {model['height']}\n", text), text[-3000:]
    assert re.search(rf"WARNING flobc\.fl: update from trainer {bad} in round "
                     rf"{learning.round} rejected by votes: \d reject, \d accept\n", text)
    assert re.search(rf"WARNING flobc\.fl: trainer {bad} excluded: trust 0\.\d+ is under "
                     rf"the threshold 0\.300 after 1 rejected and 0 accepted updates\n", text)
    assert not text.lstrip().startswith("{")


@pytest.mark.parametrize("index", range(VALIDATORS))
def test_the_round_in_the_metrics(learning: Learning, index: int) -> None:
    samples = learning.metrics(index)
    model = learning.model
    assert value(samples, "flobc_fl_updates_total", outcome="accepted") == 1
    assert value(samples, "flobc_fl_updates_total", outcome="rejected") == 1
    assert value(samples, "flobc_fl_trainer_reputation", trainer=learning.good) > 0.5
    assert value(samples, "flobc_fl_trainer_reputation", trainer=learning.bad) \
        < TRUST_THRESHOLD / 1e6
    assert value(samples, "flobc_fl_trainer_excluded", trainer=learning.bad) == 1
    assert value(samples, "flobc_fl_trainer_excluded", trainer=learning.good) == 0
    assert value(samples, "flobc_fl_model_version") >= model["version"]
    assert value(samples, "flobc_fl_round") > learning.round
    assert value(samples, "flobc_chain_height") >= model["height"]
    assert value(samples, "flobc_peers_connected") == VALIDATORS - 1
    assert value(samples, "flobc_fl_round_duration_seconds_count") >= 1

    # Each vote of this validator that the round counted was cast here first.
    updates = learning.cluster.get(index, f"/fl/rounds/{learning.round}").json()["updates"]
    me = load_key(learning.cluster.validators[index].home / "validator_key.json")
    counted = [u["votes"][me.public_key.hex()]["accept"] for u in updates
               if me.public_key.hex() in u["votes"]]
    assert value(samples, "flobc_fl_votes_cast_total", vote="accept") >= counted.count(True)
    assert value(samples, "flobc_fl_votes_cast_total", vote="reject") >= counted.count(False)
    # Every vote cast was judged by the evaluator worker, whose time is counted.
    judged = value(samples, "flobc_fl_updates_judged_total")
    assert judged >= value(samples, "flobc_fl_votes_cast_total", vote="accept") + value(
        samples, "flobc_fl_votes_cast_total", vote="reject")
    # A validator whose peers decided every update first judged nothing.
    assert (value(samples, "flobc_fl_judge_seconds_total") > 0) == (judged > 0)


def test_round_duration_matches_the_logged_round(learning: Learning) -> None:
    [closed] = [e for e in events(learning.cluster, 0, "round_closed")
                if e["round"] == learning.round]
    samples = learning.metrics(0)
    assert value(samples, "flobc_fl_round_duration_seconds_count") == 1
    assert value(samples, "flobc_fl_round_duration_seconds_sum") == pytest.approx(
        closed["seconds"])


def test_the_latest_scored_model_accuracy_is_a_metric(learning: Learning) -> None:
    def scored() -> Samples | None:
        samples = learning.metrics(0)
        return samples if ("flobc_fl_model_test_accuracy", ()) in samples else None
    samples = learning.cluster.wait_until(scored, "validator 0 to score a model version", 60)
    assert 0 < value(samples, "flobc_fl_model_test_accuracy") <= 1
