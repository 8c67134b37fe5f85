"""The registered trainer behaviours on real work: the embedded MNIST sample split as a
trainer splits it, honest deltas trained by a real Keras learner, and what each attack
submits from them. Every attack's update still passes the chain's cheap checks, so only
the validators' vote (or a norm bound) can stop it."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from loopback_http import Reply, Request, bytes_reply, json_reply

from flobc.crypto import sha256
from flobc.launch.cli import build_parser
from flobc.ml.learner import KerasLearner
from flobc.ml.models import build_model, initial_weights
from flobc.ml.weights import all_finite, decode_weights, encode_weights, l2_norm, spec
from flobc.protocol.settings import FLConfig
from flobc.trainer.byzantine import BEHAVIOURS, RoundView, make_behaviour
from flobc.trainer.client import ValidatorClient
from flobc.trainer.config import TrainerConfig
from flobc.trainer.loop import ESTIMATE_DRAWS, estimated_peers, local_data, train_round
from flobc.trainer.peers import submitted_deltas
from flobc.trainer.verify import VerifiedModel

MODEL = "mnist_mlp"
TRAINERS = 4
Delta = list[np.ndarray]


def config(home: Path, index: int, behaviour: str = "honest") -> TrainerConfig:
    return TrainerConfig(home=home, validators=("http://127.0.0.1:1",), partition_index=index,
                         partitions=TRAINERS, seed=3, batch_size=64, behaviour=behaviour)


class Work:
    """One learner, the genesis base and every trainer's honest round-1 delta."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.base = VerifiedModel(0, b"", initial_weights(MODEL, 0), 0)
        self.learner = KerasLearner(build_model(MODEL, 0))
        self.data = [local_data(config(home, i), split_seed=0) for i in range(TRAINERS)]
        self.deltas = [train_round(self.learner, self.base, d, config(home, i), 1).delta
                       for i, d in enumerate(self.data)]

    def attack(self, name: str, view: RoundView, *, scale: float | None = None,
               index: int = 0) -> Delta:
        """What trainer ``index`` submits as ``name`` from its honest delta."""
        return make_behaviour(name, scale).delta(self.deltas[index],
                                                 np.random.default_rng(7), view)

    def peers(self, index: int = 0) -> list[Delta]:
        """The other trainers' honest deltas, as the harness shows them."""
        return [[np.array(t) for t in d] for i, d in enumerate(self.deltas) if i != index]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Work:
    return Work(tmp_path_factory.mktemp("attacks"))


def passes_cheap_checks(delta: Delta, like: Delta) -> float:
    """The checks every validator makes before any vote (shapes, dtypes, finite values,
    the blob decoding as the model's); the update's L2 norm."""
    decoded = decode_weights(encode_weights(delta), max_bytes=FLConfig.max_blob_bytes,
                             max_tensors=len(like), expected=spec(like))
    assert all_finite(decoded)
    return l2_norm(decoded)


def same(a: Delta, b: Delta) -> bool:
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", BEHAVIOURS.names())
def test_every_attack_passes_the_cheap_checks_under_the_norm_bound(work: Work, name: str):
    view = RoundView(1, peers=work.peers, trainers=10, colluders=2)
    norm = passes_cheap_checks(work.attack(name, view), work.deltas[0])
    assert norm <= FLConfig.max_update_norm


@pytest.mark.parametrize("name", BEHAVIOURS.names())
def test_the_command_line_offers_every_attack(name: str):
    parser = build_parser()
    assert parser.parse_args(["trainer", "join", "--home", "h", "--behaviour",
                              name]).behaviour == name
    assert parser.parse_args(["cluster", "up", "--byzantine", f"3:{name}"]).byzantine == [
        (3, name)]


def test_the_readme_describes_every_attack():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n## Attacks\n", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert rows == set(BEHAVIOURS.names()) - {"honest"}


# --- data poisoning ---------------------------------------------------------------------


def test_label_flip_trains_on_labels_where_no_class_keeps_its_own(work: Work):
    honest = work.data[1]
    flipped = local_data(config(work.home, 1, "label_flip"), split_seed=0)
    assert np.array_equal(flipped.x, honest.x)
    mapping = {int(c): set(flipped.y[honest.y == c].tolist()) for c in np.unique(honest.y)}
    assert all(len(to) == 1 for to in mapping.values())  # one class goes to one class
    moved = {c: to.pop() for c, to in mapping.items()}
    assert all(c != to for c, to in moved.items())
    assert sorted(moved.values()) == sorted(moved)  # a permutation of the classes present
    again = local_data(config(work.home, 1, "label_flip"), split_seed=0)
    assert np.array_equal(again.y, flipped.y)  # seeded

    update = train_round(work.learner, work.base, flipped, config(work.home, 1, "label_flip"),
                         1)
    assert passes_cheap_checks(update.delta, work.deltas[1]) <= FLConfig.max_update_norm


@pytest.mark.parametrize("classes", [[3, 8], [0, 4, 9], list(range(10))])
def test_label_flip_works_for_any_number_of_classes(work: Work, classes: list[int]):
    data = work.data[0]
    some = data.subset(np.flatnonzero(np.isin(data.y, classes)))
    flipped = make_behaviour("label_flip").data(some, np.random.default_rng(1))
    assert set(flipped.y.tolist()) == set(classes)
    assert not np.any(flipped.y == some.y)


def test_label_flip_with_a_single_class_is_a_clear_error(work: Work):
    only = work.data[0].subset(np.flatnonzero(work.data[0].y == 5))
    with pytest.raises(ValueError, match=r"label_flip needs at least two classes .* \[5\]"):
        make_behaviour("label_flip").data(only, np.random.default_rng(1))


# --- model replacement ---------------------------------------------------------------------


def test_scaling_boosts_the_honest_delta_tenfold(work: Work):
    out = work.attack("scaling", RoundView(1))
    assert same(out, [(10 * d).astype(d.dtype) for d in work.deltas[0]])
    assert l2_norm(out) == pytest.approx(10 * l2_norm(work.deltas[0]), rel=1e-5)
    assert same(work.attack("scaling", RoundView(1), scale=25),
                [(25 * d).astype(d.dtype) for d in work.deltas[0]])


# --- free riders ---------------------------------------------------------------------------


def test_zero_submits_zeros(work: Work):
    out = work.attack("zero", RoundView(1))
    assert same(out, [np.zeros_like(d) for d in work.deltas[0]])


def test_copy_submits_a_peers_delta_and_zeros_when_there_is_none(work: Work):
    out = work.attack("copy", RoundView(1, peers=work.peers))
    assert any(same(out, p) for p in work.peers())
    assert not same(out, work.deltas[0])
    alone = work.attack("copy", RoundView(1))
    assert same(alone, [np.zeros_like(d) for d in work.deltas[0]])


def test_replay_resubmits_its_first_delta_with_one_instance_across_rounds(work: Work):
    cfg = config(work.home, 2, "replay")
    replay = make_behaviour("replay")
    rounds = [train_round(work.learner, work.base, work.data[2], cfg, r, replay)
              for r in (1, 2, 3)]
    honest_3 = train_round(work.learner, work.base, work.data[2], config(work.home, 2), 3)
    assert not same(honest_3.delta, rounds[0].delta)  # round 3's own work differs
    assert same(rounds[1].delta, rounds[0].delta) and same(rounds[2].delta, rounds[0].delta)
    assert all(u.samples == len(work.data[2]) for u in rounds)
    fresh = train_round(work.learner, work.base, work.data[2], cfg, 3)  # a new instance
    assert not same(fresh.delta, rounds[0].delta)


# --- colluders -----------------------------------------------------------------------------


def test_alie_sends_mean_minus_z_std_of_the_peers_with_the_papers_z(work: Work):
    view = RoundView(1, peers=work.peers, trainers=10, colluders=2)
    z = NormalDist().inv_cdf((10 - (10 // 2 + 1 - 2)) / 10)
    assert make_behaviour("alie").z(view) == pytest.approx(z) == pytest.approx(0.2533, abs=1e-4)
    for got, stack in zip(work.attack("alie", view), zip(*work.peers(), strict=True),
                          strict=True):
        peers = np.stack([np.asarray(p, np.float64) for p in stack])
        want = peers.mean(axis=0) - z * peers.std(axis=0, ddof=1)
        assert got.dtype == np.float32 and np.allclose(got, want, rtol=1e-5, atol=1e-7)
    set_z = work.attack("alie", view, scale=1.5)
    stack0 = np.stack([p[0] for p in work.peers()]).astype(np.float64)
    assert np.allclose(set_z[0], stack0.mean(0) - 1.5 * stack0.std(0, ddof=1), atol=1e-7)


def test_alie_without_peers_sends_its_own_delta(work: Work):
    assert same(work.attack("alie", RoundView(1)), work.deltas[0])


def test_ipm_sends_minus_epsilon_times_the_peers_mean(work: Work):
    for eps, out in ((0.5, work.attack("ipm", RoundView(1, peers=work.peers))),
                     (0.1, work.attack("ipm", RoundView(1, peers=work.peers), scale=0.1))):
        for got, stack in zip(out, zip(*work.peers(), strict=True), strict=True):
            want = -eps * np.mean([np.asarray(p, np.float64) for p in stack], axis=0)
            assert got.dtype == np.float32 and np.allclose(got, want, rtol=1e-5, atol=1e-8)
    mean = [np.mean(s, axis=0) for s in zip(*work.peers(), strict=True)]
    out = work.attack("ipm", RoundView(1, peers=work.peers))
    assert sum(float(np.vdot(o, m)) for o, m in zip(out, mean, strict=True)) < 0


def test_a_live_colluder_estimates_peers_by_training_on_bootstrap_samples(work: Work):
    cfg = config(work.home, 3, "ipm")
    peers = estimated_peers(work.learner, work.base, work.data[3], cfg, 1)
    assert len(peers) == ESTIMATE_DRAWS
    for p in peers:
        assert passes_cheap_checks(p, work.deltas[3]) > 0
    assert not same(peers[0], peers[1])
    # like honest deltas: pointing the way the trainer's own honest delta goes
    own = work.deltas[3]
    assert all(sum(float(np.vdot(a, b)) for a, b in zip(p, own, strict=True)) > 0
               for p in peers)
    again = estimated_peers(work.learner, work.base, work.data[3], cfg, 1)
    assert np.allclose(again[0][0], peers[0][0], atol=1e-4)  # seeded (up to TF's noise)
    update = train_round(work.learner, work.base, work.data[3], cfg, 1)  # default view
    mean = [np.mean(s, axis=0) for s in zip(*peers, strict=True)]
    assert np.allclose(update.delta[0], -0.5 * mean[0], atol=1e-3)


# --- a live chain's round, read from a validator ---------------------------------------------


ME = bytes(32)
OTHER = bytes(range(32))
LIAR = bytes(range(1, 33))


def validator(deltas: dict[bytes, bytes], listed: dict[bytes, bytes]):
    """A validator whose round 4 lists ``listed`` (trainer -> blob hash) and serves
    ``deltas`` (trainer -> blob)."""
    def respond(request: Request) -> Reply:
        if request.path == "/fl/rounds/4":
            return json_reply(200, {"round": 4, "open": True, "updates": [
                {"trainer": t.hex(), "blob": h.hex(), "status": "pending"}
                for t, h in listed.items()]})
        for trainer, blob in deltas.items():
            if request.path == f"/fl/rounds/4/updates/{trainer.hex()}/blob":
                return bytes_reply(blob)
        return json_reply(404, {"detail": f"no {request.path}"})
    return respond


def test_a_live_copier_reads_the_rounds_committed_updates_and_checks_them(work: Work, serve):
    blob = encode_weights(work.deltas[1])
    forged = encode_weights(work.deltas[2])
    server = serve(validator({ME: encode_weights(work.deltas[0]), OTHER: blob, LIAR: forged},
                             {ME: sha256(b"mine"), OTHER: sha256(blob),
                              LIAR: sha256(b"not what it serves")}))
    with ValidatorClient([server.url], passes=1) as client:
        got = submitted_deltas(client, ME, 4, spec(work.deltas[0]), FLConfig.max_blob_bytes,
                               until_s=0.0, wait=lambda: None)
    assert len(got) == 1 and same(got[0], work.deltas[1])  # not its own, not the forged one
    assert f"/fl/rounds/4/updates/{ME.hex()}/blob" not in server.paths()


def test_a_live_copier_polls_until_another_update_is_committed_or_its_bound(work: Work,
                                                                            serve):
    blob = encode_weights(work.deltas[1])
    listed = {ME: sha256(b"mine")}
    server = serve(validator({OTHER: blob}, listed))
    polls: list[int] = []

    def wait() -> None:  # another trainer's update commits while the copier waits
        polls.append(1)
        listed[OTHER] = sha256(blob)
    with ValidatorClient([server.url], passes=1) as client:
        got = submitted_deltas(client, ME, 4, spec(work.deltas[0]), FLConfig.max_blob_bytes,
                               until_s=float("inf"), wait=wait)
        assert len(polls) == 1 and len(got) == 1 and same(got[0], work.deltas[1])
        del listed[OTHER]
        assert submitted_deltas(client, ME, 4, spec(work.deltas[0]),
                                FLConfig.max_blob_bytes, until_s=0.0, wait=wait) == []
    assert len(polls) == 1  # past its bound it did not wait
