"""The learning endpoints of a real testnet: four validator processes written by
``flobc testnet init --app fl``, each with its evaluator worker, on loopback.

Trainers 0 and 1 register; in one round trainer 0 sends a tiny step and trainer 1
N(0, 1) noise, and the validators' votes decide them. Every bad update then gets a
4xx naming the problem and leaves every validator's height and state root as they
were; reads answer; version 0's weights are the genesis file and its record proves
against the genesis keys alone; an idle round is closed at its deadline.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cluster import Cluster, Validator, failure_report_plugin, run_flobc

from flobc import codec
from flobc.config import Genesis, NodeConfig, load_key
from flobc.consensus.light import VerificationError, verify_state
from flobc.consensus.messages import Block
from flobc.crypto import PrivateKey, sha256
from flobc.launch.localnet import free_port_range
from flobc.launch.testnet import DATASET
from flobc.ml.weights import decode_weights, encode_weights
from flobc.protocol.state import model_key
from flobc.protocol.txs import Close, decode_tx, make_register, make_update
from flobc.validator.fl.evaluator import Evaluator, EvaluatorSettings

pytestmark = pytest.mark.slow

VALIDATORS = 4
DEADLINE_MS = 20_000
CHECKPOINT_INTERVAL = 2
QUIET_MS = 6_000
"""A bad request is only sent this long before the open round's deadline, so that no
round closes while a test checks that nothing changed."""
STARTUP_TIMEOUT_S = 240.0
ROUND_TIMEOUT_S = DEADLINE_MS / 1000 + 40
MAX_BLOB_BYTES = 4 * 1024 * 1024
ENVELOPE_BYTES = 64 * 1024
Weights = list[np.ndarray]


@dataclass
class Net:
    cluster: Cluster
    genesis: Genesis
    trainers: list[PrivateKey]
    model_v0: bytes

    @property
    def v0(self) -> Weights:
        return decode_weights(self.model_v0, max_bytes=len(self.model_v0))

    def fl(self, path: str, index: int = 0) -> Any:
        response = self.cluster.get(index, path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        return response.json()

    def body(self, key: PrivateKey, delta: Weights | bytes, *, round_: int | None = None,
             base: int | None = None, nonce: int = 1, chain_id: str | None = None) -> bytes:
        """``[update_tx, blob]`` for the open round and latest version unless told."""
        status = self.fl("/fl/status")
        blob = delta if isinstance(delta, bytes) else encode_weights(delta)
        tx = make_update(key, chain_id or self.genesis.chain_id,
                         status["round"] if round_ is None else round_,
                         status["version"] if base is None else base, sha256(blob),
                         100, 500, 900, nonce)
        return codec.pack([tx, blob])

    def post_update(self, body: bytes, index: int = 0) -> httpx.Response:
        return self.cluster.client.post(self.cluster.validators[index].url + "/fl/updates",
                                        content=body)


def _evaluators_ready(cluster: Cluster) -> bool:
    ready = re.compile(r"evaluator worker \d+ ready")
    return all(ready.search(v.log_path.read_text(errors="replace")) for v in cluster.validators)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Net]:
    out = tmp_path_factory.mktemp("fl-api") / "net"
    base = free_port_range(2 * VALIDATORS)
    init = run_flobc("testnet", "init", "--app", "fl", "--validators", VALIDATORS,
                     "--trainers", 3, "--out", out, "--base-port", base,
                     "--round-deadline-ms", DEADLINE_MS,
                     "--checkpoint-interval", CHECKPOINT_INTERVAL,
                     "--empty-block-interval-ms", 50)
    assert init.returncode == 0, init.stderr
    cluster = Cluster(out, [Validator(i, out / f"validator-{i}",
                                      f"http://127.0.0.1:{base + 2 * i + 1}",
                                      out / f"validator-{i}.log") for i in range(VALIDATORS)])
    plugin = failure_report_plugin(cluster, "net")
    pytestconfig.pluginmanager.register(plugin)
    try:
        cluster.start_all()
        cluster.wait_connected()
        genesis = Genesis.load(out / "genesis.toml")
        trainers = [load_key(out / f"trainer-{i}" / "trainer_key.json") for i in range(3)]
        net = Net(cluster, genesis, trainers, (out / "genesis-model.bin").read_bytes())
        registered = [make_register(k, 1, genesis.chain_id) for k in trainers[:2]]
        cluster.wait_committed(cluster.submit(registered))
        cluster.wait_until(lambda: _evaluators_ready(cluster),
                           "every validator's evaluator worker to be ready", STARTUP_TIMEOUT_S)
        yield net
    finally:
        pytestconfig.pluginmanager.unregister(plugin)
        cluster.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def settled(net: Net, quiet_ms: int = QUIET_MS) -> dict[int, tuple[int, str]]:
    """Wait until every validator is idle at one checkpoint height with an empty mempool,
    at least ``quiet_ms`` before the open round's deadline; return heights and roots."""
    def idle() -> dict[int, tuple[int, str]] | None:
        sts = net.cluster.statuses()
        points = {i: (st["height"], st["state_root"]) for i, st in sts.items()}
        if (len(set(points.values())) != 1 or points[0][0] % CHECKPOINT_INTERVAL
                or any(st["mempool_size"] for st in sts.values())):
            return None
        if net.fl("/fl/status")["deadline_ms"] - now_ms() < quiet_ms:
            return None
        return points
    return net.cluster.wait_until(idle, "validators to settle early in a round",
                                  ROUND_TIMEOUT_S)


@contextlib.contextmanager
def nothing_changes(net: Net) -> Iterator[None]:
    before = settled(net)
    yield
    sts = net.cluster.statuses()
    assert {i: (st["height"], st["state_root"]) for i, st in sts.items()} == before
    assert [st["mempool_size"] for st in sts.values()] == [0] * VALIDATORS


def assert_refused(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"], response.json()


@dataclass(frozen=True)
class History:
    """One decided round: trainer 0's small step accepted, trainer 1's noise rejected."""

    round: int
    version: int
    """The version that round produced."""
    accepted_body: bytes


@pytest.fixture(scope="module")
def history(net: Net) -> History:
    settled(net, quiet_ms=DEADLINE_MS // 2)
    status = net.fl("/fl/status")
    rng = np.random.default_rng(7)
    small = [rng.normal(0, 1e-4, w.shape).astype(w.dtype) for w in net.v0]
    noise = [rng.normal(0, 1, w.shape).astype(w.dtype) for w in net.v0]
    bodies = [net.body(net.trainers[0], small), net.body(net.trainers[1], noise)]
    for body in bodies:
        response = net.post_update(body)
        assert response.status_code == 202, response.text
    net.cluster.wait_until(lambda: net.fl("/fl/status")["round"] > status["round"],
                           f"round {status['round']} to be decided and closed", ROUND_TIMEOUT_S)
    return History(status["round"], status["version"] + 1, bodies[0])


# --- votes ----------------------------------------------------------------------------


def test_votes_accept_a_small_step_and_reject_noise(net: Net, history: History) -> None:
    t0, t1 = (k.public_key.hex() for k in net.trainers[:2])
    for i in range(VALIDATORS):
        updates = {u["trainer"]: u for u in net.fl(f"/fl/rounds/{history.round}", i)["updates"]}
        assert updates[t0]["status"] == "accepted" and updates[t0]["accepts"] >= 3
        assert all(v["accept"] for v in updates[t0]["votes"].values())
        assert updates[t1]["status"] == "rejected" and updates[t1]["rejects"] >= 2
        assert not any(v["accept"] for v in updates[t1]["votes"].values())
        assert all(v["score_milli"] < -1000 for v in updates[t1]["votes"].values())
        model = net.fl(f"/fl/models/{history.version}", i)
        assert [u["trainer"] for u in model["updates"]] == [t0]
        trust = {t["trainer"]: t for t in net.fl("/fl/trainers", i)["trainers"]}
        assert trust[t0]["trust"] > 0.5 and trust[t0]["accepted"] == 1
        assert trust[t1]["trust"] < 0.5 and trust[t1]["rejected"] == 1
    validator_keys = {v.public_key.hex() for v in net.genesis.validators}
    assert set(updates[t0]["votes"]) <= validator_keys


# --- bad updates ------------------------------------------------------------------------


def _tensors(net: Net, change: Callable[[Weights], None]) -> Weights:
    delta = [np.zeros_like(w) for w in net.v0]
    change(delta)
    return delta


def _set(delta: Weights, value: float) -> None:
    delta[2].flat[5] = value


def _forged(net: Net) -> bytes:
    tx, blob = codec.unpack(net.body(net.trainers[0], _tensors(net, lambda d: None)))
    fields = codec.unpack(tx)
    fields[3] = bytes(64)
    return codec.pack([codec.pack(fields), blob])


def _hash_mismatch(net: Net) -> bytes:
    tx, _ = codec.unpack(net.body(net.trainers[0], _tensors(net, lambda d: None)))
    return codec.pack([tx, encode_weights(_tensors(net, lambda d: _set(d, 1e-3)))])


def _truncated(net: Net) -> bytes:
    return net.body(net.trainers[0], encode_weights(net.v0)[:-5])


BAD_UPDATES: dict[str, tuple[Callable[[Net, History], bytes], int, str]] = {
    "garbage msgpack": (lambda n, h: b"\xc1garbage", 400, "body is not valid msgpack"),
    "empty body": (lambda n, h: b"", 400, "empty body"),
    "not a pair": (lambda n, h: codec.pack([b"tx only"]), 400,
                   "msgpack array [update_tx, blob]"),
    "garbage tx": (lambda n, h: codec.pack([b"\x93\x01", b"blob"]), 400, "update_tx: tx "),
    "register tx": (lambda n, h: codec.pack([make_register(n.trainers[2], 1,
                                                           n.genesis.chain_id), b"b"]),
                    400, "send it to POST /txs"),
    "blob over the limit": (lambda n, h: n.body(n.trainers[0], b"\0" * (MAX_BLOB_BYTES + 1)),
                            413, f"the update blob is {MAX_BLOB_BYTES + 1} bytes, over the "
                                 f"chain's app.max_blob_bytes {MAX_BLOB_BYTES}"),
    "blob hash mismatch": (lambda n, h: _hash_mismatch(n), 400, "is not the update's blob_hash"),
    "truncated blob": (lambda n, h: _truncated(n), 400, "update blob: weights are not "
                                                          "decodable"),
    "wrong shapes": (lambda n, h: n.body(n.trainers[0], [w.reshape(-1) for w in n.v0]), 400,
                     "update blob: tensor 0: shape (144,) does not match the model's "
                     "(3, 3, 1, 16)"),
    "wrong dtype": (lambda n, h: n.body(n.trainers[0], [w.astype(np.float64) for w in n.v0]),
                    400, "update blob: tensor 0: dtype float64 does not match the model's "
                         "float32"),
    "missing tensor": (lambda n, h: n.body(n.trainers[0], n.v0[:-1]), 400,
                       "update blob: 7 tensors, the model has 8"),
    "NaN": (lambda n, h: n.body(n.trainers[0], _tensors(n, lambda d: _set(d, np.nan))), 400,
            "update blob has NaN or infinite values"),
    "Inf": (lambda n, h: n.body(n.trainers[0], _tensors(n, lambda d: _set(d, -np.inf))), 400,
            "update blob has NaN or infinite values"),
    "too long a step": (lambda n, h: n.body(n.trainers[0], [np.full_like(w, 10)
                                                            for w in n.v0]),
                        400, "exceeds max_update_norm 1000"),
    "wrong signature": (lambda n, h: _forged(n), 400, "bad signature"),
    "another chain": (lambda n, h: n.body(n.trainers[0], _tensors(n, lambda d: None),
                                          chain_id="other-chain"), 400, "bad signature"),
    "unknown trainer": (lambda n, h: n.body(PrivateKey.generate(),
                                            _tensors(n, lambda d: None)),
                        400, "is not registered"),
    "allowlisted but unregistered": (lambda n, h: n.body(n.trainers[2],
                                                         _tensors(n, lambda d: None)),
                                     400, "is not registered"),
    "stale round": (lambda n, h: n.body(n.trainers[0], _tensors(n, lambda d: None),
                                        round_=h.round), 400,
                    "but round"),
    "future round": (lambda n, h: n.body(n.trainers[0], _tensors(n, lambda d: None),
                                         round_=10**6), 400, "update is for round 1000000"),
    "stale base": (lambda n, h: n.body(n.trainers[0], _tensors(n, lambda d: None),
                                       base=h.version - 1), 400,
                   "is not the latest version"),
    "unknown base": (lambda n, h: n.body(n.trainers[0], _tensors(n, lambda d: None),
                                         base=10**6), 400, "does not exist yet"),
    "replay": (lambda n, h: h.accepted_body, 400, "transaction already committed"),
}


@pytest.mark.parametrize("case", BAD_UPDATES)
def test_bad_update_is_refused_and_changes_nothing(net: Net, history: History,
                                                   case: str) -> None:
    make, status, detail = BAD_UPDATES[case]
    with nothing_changes(net):
        body = make(net, history)
        for i in range(VALIDATORS):
            assert_refused(net.post_update(body, i), status, detail)


def _raw_post(net: Net, head: bytes, body: bytes = b"") -> tuple[int, str]:
    """POST /fl/updates over a bare socket, so the client can send what it likes."""
    host, port = net.cluster.validators[0].url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /fl/updates HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before the whole response: {answer!r}"
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])["detail"]


def test_oversized_update_is_refused_before_it_is_read(net: Net) -> None:
    limit = MAX_BLOB_BYTES + ENVELOPE_BYTES
    with nothing_changes(net):
        assert _raw_post(net, b"Content-Length: %d\r\n" % (limit + 1)) == (
            413, f"body of {limit + 1} bytes exceeds the limit of {limit} bytes")
        chunk = b"\x00" * 65536
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                          for _ in range(limit // len(chunk) + 2))
        assert _raw_post(net, b"Transfer-Encoding: chunked\r\n", chunks) == (
            413, f"body exceeds the limit of {limit} bytes")


# --- reads ---------------------------------------------------------------------------


def test_status_and_records_answer(net: Net, history: History) -> None:
    status = net.fl("/fl/status")
    assert status["sync"] == "bsp" and status["version"] >= history.version
    health = status["health"]
    assert health["evaluation_failures"] == health["blocks_waiting_for_blobs"] == 0, status
    assert health["txs_dropped_for_missing_blobs"] == 0, status
    if status["version"] == history.version:  # its model took the accepted step
        assert health["rounds_without_update"] == 0 and status["warnings"] == [], status
    assert status["expected"] == sorted(k.public_key.hex() for k in net.trainers[:2])
    latest = net.fl("/fl/models/latest")
    assert latest["version"] == status["version"] and latest["hash"] == status["model_hash"]
    v0 = net.fl("/fl/models/0")
    assert (v0["version"], v0["parent"], v0["updates"]) == (0, None, [])
    assert v0["hash"] == net.genesis.app["model_v0_hash"]
    rounds = net.fl("/fl/rounds?limit=2")
    assert [r["round"] for r in rounds["rounds"]] == [status["round"], status["round"] - 1]
    assert rounds["rounds"][0]["open"] and not rounds["rounds"][1]["open"]
    assert net.fl(f"/fl/rounds/{status['round']}")["deadline_ms"] == status["deadline_ms"]
    trainers = net.fl("/fl/trainers")["trainers"]
    assert {t["trainer"] for t in trainers} == {k.public_key.hex() for k in net.trainers[:2]}
    assert all(t["trust"] == t["trust_micro"] / 1e6 for t in trainers)


def test_every_validator_scores_each_version_on_the_test_split(net: Net,
                                                                history: History) -> None:
    """Scores are off-chain and per validator, but the test split and the weights are
    the same everywhere, so every validator reports the same numbers, and they are
    what an evaluator of our own gives for the weights the API serves."""
    def scored() -> list[list[dict[str, Any]]] | None:
        found = [net.fl("/fl/evaluations", i)["versions"] for i in range(VALIDATORS)]
        done = all(s and s[-1]["version"] >= history.version for s in found)
        return found if done else None
    found = net.cluster.wait_until(scored, f"versions 0..{history.version} to be scored",
                                   ROUND_TIMEOUT_S)
    common = min(s[-1]["version"] for s in found)
    first = [e for e in found[0] if e["version"] <= common]
    assert [e["version"] for e in first] == list(range(common + 1))
    assert all([e for e in s if e["version"] <= common] == first for s in found)
    assert net.fl("/fl/evaluations?limit=1")["versions"][0]["version"] >= common
    weights = net.cluster.get(0, f"/fl/models/{common}/weights").content
    ours = Evaluator(EvaluatorSettings(net.genesis.app["model"], net.genesis.app["seed"],
                                       DATASET, 0, VALIDATORS, MAX_BLOB_BYTES))
    try:
        score = ours.score(weights)
    finally:
        ours.stop()
    assert (first[common]["accuracy"], first[common]["loss"]) == (score.accuracy, score.loss)
    assert first[0]["accuracy"] < 0.3  # version 0 is untrained


def test_a_rounds_update_blobs_are_served_by_every_validator(net: Net,
                                                             history: History) -> None:
    _, blob = codec.unpack(history.accepted_body, len(history.accepted_body))
    path = f"/fl/rounds/{history.round}/updates/{net.trainers[0].public_key.hex()}/blob"
    for i in range(VALIDATORS):
        response = net.cluster.get(i, path)
        assert response.status_code == 200 and response.content == blob
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["x-blob-hash"] == sha256(blob).hex()
    assert_refused(net.cluster.get(0, path.replace(f"/{history.round}/", "/99999999/")), 404,
                   "round 99999999 has not opened yet")


@pytest.mark.parametrize(("path", "status", "detail"), [
    ("/fl/evaluations?limit=0", 422, "limit must be an integer in 1..1000"),
    ("/fl/status?after_round=-1", 422, "after_round must be an integer"),
    ("/fl/status?after_round=1&wait_ms=5001", 422, "wait_ms must be an integer in 0..5000"),
    ("/fl/models/99999999", 404, "no model version 99999999"),
    ("/fl/models/99999999/weights", 404, "no model version 99999999"),
    ("/fl/models/99999999/proof", 404, "no model version 99999999"),
    ("/fl/rounds/99999999", 404, "round 99999999 has not opened yet"),
    ("/fl/models/x1", 422, "version must be an integer"),
    ("/fl/models/-1/weights", 422, "version must be an integer"),
    ("/fl/models/" + "9" * 30, 422, "version must be an integer"),
    ("/fl/rounds/0", 422, "round must be an integer in 1.."),
    ("/fl/rounds?limit=0", 422, "limit must be an integer in 1..1000"),
    ("/fl/rounds?limit=abc", 422, "limit must be an integer"),
    ("/fl/rounds/1/updates/" + "ab" * 32 + "/blob", 404, "no update from trainer 'abab"),
    ("/fl/rounds/x/updates/ab/blob", 422, "round must be an integer"),
    ("/kv/anything", 404, "Not Found"),
])
def test_bad_reads_are_refused(net: Net, path: str, status: int, detail: str) -> None:
    assert_refused(net.cluster.get(0, path), status, detail)


def test_version_0_weights_are_the_genesis_model(net: Net) -> None:
    for i in range(VALIDATORS):
        response = net.cluster.get(i, "/fl/models/0/weights")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.content == net.model_v0
        assert response.headers["x-model-hash"] == sha256(net.model_v0).hex()
        assert response.headers["x-model-hash"] == net.genesis.app["model_v0_hash"]


def _proof(net: Net, version: int) -> dict[str, Any]:
    def served() -> dict[str, Any] | None:
        response = net.cluster.get(0, f"/fl/models/{version}/proof")
        if response.status_code == 404:
            assert "not yet covered by a stable checkpoint" in response.json()["detail"]
            return None
        assert response.status_code == 200, response.text
        return response.json()
    return net.cluster.wait_until(served, f"a proof of version {version}")


@pytest.mark.parametrize("which", ["genesis", "trained"])
def test_model_record_proves_against_genesis_keys_alone(net: Net, history: History,
                                                        which: str) -> None:
    version = 0 if which == "genesis" else history.version
    answer = _proof(net, version)
    key, value = bytes.fromhex(answer["key"]), bytes.fromhex(answer["value"])
    assert key == model_key(version)
    certificate = bytes.fromhex(answer["checkpoint"]["certificate"])
    proof = bytes.fromhex(answer["proof"])
    assert verify_state(net.genesis, certificate, key, value, proof) >= 1
    weights = net.cluster.get(0, f"/fl/models/{version}/weights").content
    assert codec.unpack(value)["hash"] == sha256(weights)
    record = codec.unpack(value)
    record["hash"] = sha256(b"other weights")
    with pytest.raises(VerificationError):
        verify_state(net.genesis, certificate, key, codec.pack(record), proof)


# --- rounds end on time -----------------------------------------------------------------


def test_an_idle_round_is_closed_at_its_deadline(net: Net, history: History) -> None:
    status = net.fl("/fl/status")
    assert net.fl(f"/fl/rounds/{status['round']}")["updates"] == []
    # Wait as trainers do: the validator holds the request until the next round opens.
    held = net.cluster.wait_until(
        lambda: (answer := net.fl(f"/fl/status?after_round={status['round']}&wait_ms=3000"))
        ["round"] > status["round"] and answer, f"idle round {status['round']} to close",
        ROUND_TIMEOUT_S)
    assert held["version"] == status["version"] + 1
    assert now_ms() >= status["deadline_ms"]
    model = net.fl(f"/fl/models/{status['version'] + 1}")
    assert (model["round"], model["updates"]) == (status["round"], [])
    assert model["hash"] == status["model_hash"]  # nothing accepted: the same weights
    block = Block.decode(bytes.fromhex(net.cluster.block(0, model["height"])["block"]))
    closes = [decode_tx(tx, net.genesis.chain_id) for tx in block.txs]
    assert any(isinstance(c, Close) and c.round == status["round"] for c in closes)
    assert block.time_ms >= status["deadline_ms"]
    # Learning made no progress in that round, and every surface says so.
    assert held["health"]["rounds_without_update"] >= 1, held
    assert any("closed with no update" in w for w in held["warnings"]), held
    metrics = net.cluster.get(0, "/metrics").text
    assert re.search(r"^flobc_fl_rounds_without_update [1-9]", metrics, re.M), metrics
    log = net.cluster.validators[0].log_path
    net.cluster.wait_until(
        lambda: f"round {status['round']} closed with no update" in log.read_text(),
        "the validator's log to report the idle round")


# --- TensorFlow stays out of the validator -------------------------------------------------


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def test_tensorflow_is_loaded_by_the_evaluator_worker_only(net: Net) -> None:
    for v in net.cluster.validators:
        assert v.proc is not None
        assert "tensorflow" not in _maps(v.proc.pid)
        workers = [c for c in _children(v.proc.pid) if "tensorflow" in _maps(c)]
        assert len(workers) == 1, f"validator {v.index}: children {_children(v.proc.pid)}"


# --- what testnet init writes, and what a validator refuses to start from -----------------


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fl-homes") / "net"
    init = run_flobc("testnet", "init", "--app", "fl", "--validators", 1, "--trainers", 2,
                     "--admission", "open", "--sync", "ssp", "--seed", 3, "--out", out,
                     "--base-port", free_port_range(2))
    assert init.returncode == 0, init.stderr
    return out


def test_init_writes_genesis_model_and_trainer_homes(homes: Path) -> None:
    genesis = Genesis.load(homes / "genesis.toml")
    assert genesis.app["name"] == "fl"
    assert (genesis.app["admission"], genesis.app["sync"], genesis.app["seed"]) == (
        "open", "ssp", 3)
    assert genesis.app["trainers"] == []
    model = (homes / "genesis-model.bin").read_bytes()
    assert sha256(model).hex() == genesis.app["model_v0_hash"]
    for home in [homes / "validator-0", homes / "trainer-0", homes / "trainer-1"]:
        assert (home / "genesis-model.bin").read_bytes() == model
        assert Genesis.load(home / "genesis.toml") == genesis
    keys = {load_key(homes / f"trainer-{i}" / "trainer_key.json").public_key for i in (0, 1)}
    assert len(keys) == 2
    trainer = tomllib.loads((homes / "trainer-1" / "trainer.toml").read_text())
    api = NodeConfig.load(homes / "validator-0").api_listen
    assert trainer == {"validators": [f"http://{api}"], "partition_index": 1,
                       "partitions": 2, "partitioner": "iid", "dataset": "mnist_5k",
                       "local_epochs": 1, "batch_size": 32, "seed": 3}


def _start_fails(home: Path, *fragments: str) -> None:
    result = run_flobc("validator", "start", "--home", home, timeout=60)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "validator not running" in last
    for fragment in fragments:
        assert fragment in last, last


def test_validator_refuses_a_genesis_model_that_does_not_match(homes: Path) -> None:
    model = homes / "validator-0" / "genesis-model.bin"
    original = model.read_bytes()
    try:
        model.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        _start_fails(homes / "validator-0", "does not match app.model_v0_hash")
        model.unlink()
        _start_fails(homes / "validator-0", "genesis-model.bin", "testnet init --app fl")
    finally:
        model.write_bytes(original)


def test_init_refuses_a_model_over_the_blob_limit(tmp_path: Path) -> None:
    result = run_flobc("testnet", "init", "--app", "fl", "--validators", 1, "--out",
                       tmp_path / "net", "--max-blob-bytes", 1000)
    assert result.returncode == 1
    assert re.fullmatch(r"flobc: error: model mnist_cnn: its weights, and so every update "
                        r"blob, are \d+ bytes, over app.max_blob_bytes 1000; raise it with "
                        r"--max-blob-bytes", result.stderr.strip().splitlines()[-1]), result.stderr
    assert not (tmp_path / "net").exists()


def test_fl_options_need_app_fl(tmp_path: Path) -> None:
    result = run_flobc("testnet", "init", "--validators", 1, "--out", tmp_path / "kv",
                       "--trainers", 2, "--sync", "bsp")
    assert result.returncode == 1
    assert result.stderr.strip() == ("flobc: error: --trainers, --sync only apply with "
                                     "--app fl")
    assert not (tmp_path / "kv").exists()
