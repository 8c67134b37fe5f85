"""The voter's decision rules on real weights, judged by the real evaluator worker.

Each of the four validators' hold-out shards gets its own worker process, as on a
testnet. Honest updates are one local epoch on a trainer's share of the data, as a
trainer computes them, in four FedAvg rounds of two trainers; the attacks are trainer
0's update sign-flipped and scaled x5, and N(0, 1) noise, in every one of those rounds.
Round 1 is also played with four trainers of 1,000 samples: the smaller honest step
makes its sign-flipped twin the hardest attack to see. The worker gets blobs by hash
(``put``) and judges by the rule's genesis table; the last tests check that the
worker's verdicts are the rule's own ``judge`` run in this process with
``ShardScorer``, and how blobs reach it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from flobc.crypto import sha256
from flobc.ml.data import load_dataset, split
from flobc.ml.partition import partition
from flobc.ml.weights import encode_weights
from flobc.protocol.validation import (
    ChanceBound,
    Evaluation,
    ValidationRule,
    Verdict,
)
from flobc.validator.fl.evaluator import (
    MAX_CANDIDATES,
    CandidateRef,
    Evaluator,
    EvaluatorError,
    EvaluatorSettings,
)

RULE = ChanceBound()
decide = RULE.decide
CHANCE_LOSS, CHANCE_ACCURACY = math.log(10), 0.1
"""A uniform guess over MNIST's 10 digits."""
GIVE_UP, LOSS_SLACK, ACCURACY_SLACK = RULE.give_up, RULE.loss_slack, RULE.accuracy_slack

VALIDATORS = 4
ROUNDS = 4
MODEL, SEED, DATASET = "mnist_cnn", 0, "mnist_5k"
MAX_BLOB_BYTES = 4 * 1024 * 1024
Weights = list[np.ndarray]
Round = tuple[Weights, list[Weights]]
"""A round's base weights and each trainer's honest delta on it."""


def settings(shard: int) -> EvaluatorSettings:
    return EvaluatorSettings(MODEL, SEED, DATASET, shard, VALIDATORS, MAX_BLOB_BYTES)


@pytest.fixture(scope="module")
def evaluators() -> Iterator[list[Evaluator]]:
    workers = [Evaluator(settings(i)) for i in range(VALIDATORS)]
    try:
        for w in workers:
            w.start()  # all four warm up at once, as on a testnet
        for w in workers:
            w.wait_ready()
        yield workers
    finally:
        for w in workers:
            w.stop()


@pytest.fixture(scope="module")
def base() -> Weights:
    from flobc.ml.models import initial_weights

    return initial_weights(MODEL, SEED)


def play(base: Weights, trainers: int, rounds: int) -> list[Round]:
    """FedAvg over ``trainers`` IID shares of the training split, one local epoch each."""
    from flobc.ml.learner import KerasLearner
    from flobc.ml.models import build_model

    train = split(load_dataset(DATASET), seed=SEED).train
    parts = partition("iid", train.y, trainers, seed=SEED)
    learner = KerasLearner(build_model(MODEL, SEED))
    played = []
    for r in range(rounds):
        deltas = []
        for t, part in enumerate(parts):
            learner.set_weights(base)
            learner.fit(train.x[part], train.y[part], epochs=1, batch_size=32, seed=100 * r + t)
            deltas.append([new - old for new, old in zip(learner.get_weights(), base,
                                                         strict=True)])
        played.append((base, deltas))
        base = [b + sum(ds) / len(ds) for b, *ds in zip(base, *deltas, strict=True)]
    return played


@pytest.fixture(scope="module")
def rounds(base: Weights) -> list[Round]:
    return play(base, trainers=2, rounds=ROUNDS)


@pytest.fixture(scope="module")
def small_round_1(base: Weights) -> Round:
    return play(base, trainers=4, rounds=1)[0]


class Blobs(dict[bytes, bytes]):
    """Blobs by hash, as the voter reads them from the ledger; counts what is fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[bytes] = []

    def add(self, weights: Weights) -> bytes:
        blob = encode_weights(weights)
        self[sha256(blob)] = blob
        return sha256(blob)

    def fetch(self, digest: bytes) -> bytes | None:
        self.fetched.append(digest)
        return self.get(digest)


TRAINER = bytes(range(32))


def judge_one(worker: Evaluator, base: Weights, delta: Weights,
              rule: ValidationRule = RULE) -> Verdict:
    """The worker's verdict on one update trained on ``base``."""
    blobs = Blobs()
    base_hash = blobs.add(base)
    ref = CandidateRef(TRAINER, blobs.add(delta), 100, base_hash)
    return worker.judge(rule, base_hash, [ref], [TRAINER], blobs.fetch)[TRAINER]


def evaluate(worker: Evaluator, base: Weights, delta: Weights) -> Evaluation:
    evaluation = judge_one(worker, base, delta).evaluation
    assert evaluation is not None
    return evaluation


def verdicts(evaluators: list[Evaluator], base: Weights,
             delta: Weights) -> list[tuple[bool, int, Evaluation]]:
    found = []
    for e in evaluators:
        v = judge_one(e, base, delta)
        assert v.evaluation is not None and (v.accept, v.score_milli) == decide(v.evaluation)
        found.append((v.accept, v.score_milli, v.evaluation))
    return found


def test_every_validator_accepts_honest_updates_in_every_round(
        evaluators: list[Evaluator], rounds: list[Round], small_round_1: Round) -> None:
    for n, (base, deltas) in enumerate([*rounds, small_round_1], 1):
        for t, delta in enumerate(deltas):
            for accept, _, e in verdicts(evaluators, base, delta):
                assert accept, f"round {n}, trainer {t}: {e}"
    base, deltas = small_round_1
    for _, score, e in verdicts(evaluators, base, deltas[0]):
        assert e.new_loss < e.base_loss and score > 0, e  # round 1: a clear improvement


def test_every_validator_rejects_sign_flipped_updates_scaled_5x(
        evaluators: list[Evaluator], rounds: list[Round], small_round_1: Round) -> None:
    for n, (base, deltas) in enumerate([*rounds, small_round_1], 1):
        for accept, score, e in verdicts(evaluators, base, [-5 * d for d in deltas[0]]):
            assert not accept and score < 0, f"round {n}: {e}"


def test_every_validator_rejects_gaussian_noise(evaluators: list[Evaluator],
                                                rounds: list[Round]) -> None:
    rng = np.random.default_rng(SEED)
    for n, (base, _) in enumerate(rounds, 1):
        noise = [rng.normal(0, 1, w.shape).astype(w.dtype) for w in base]
        for accept, score, e in verdicts(evaluators, base, noise):
            assert not accept and score < 0, f"round {n}: {e}"


def test_a_zero_update_scores_exactly_the_base(evaluators: list[Evaluator],
                                               base: Weights) -> None:
    for accept, score, e in verdicts(evaluators, base, [np.zeros_like(w) for w in base]):
        assert (e.new_loss, e.new_accuracy) == (e.base_loss, e.base_accuracy)
        assert accept and score == 0


def test_shards_are_different_data(evaluators: list[Evaluator], base: Weights) -> None:
    """Each validator scores on its own shard, so base scores differ between them."""
    zero = [np.zeros_like(w) for w in base]
    assert len({e.base_loss for _, _, e in verdicts(evaluators, base, zero)}) == VALIDATORS


def test_bad_input_is_refused_and_the_worker_keeps_serving(
        evaluators: list[Evaluator], base: Weights) -> None:
    worker = evaluators[0]
    pid = worker.pid
    wrong_shape = [w.reshape(-1) for w in base]
    base_blob = encode_weights(base)
    for blob in (b"\xc1", encode_weights(wrong_shape)):
        source = {sha256(base_blob): base_blob, sha256(blob): blob}
        ref = CandidateRef(TRAINER, sha256(blob), 1, sha256(base_blob))
        with pytest.raises(EvaluatorError, match="WeightsError"):
            worker.judge(RULE, sha256(base_blob), [ref], [TRAINER], source.get)
    assert worker.pid == pid
    assert evaluate(worker, base, base).new_loss > 0


def test_a_killed_worker_is_replaced(base: Weights) -> None:
    worker = Evaluator(settings(0))
    try:
        worker.start()
        worker.wait_ready()
        first = worker.pid
        assert first is not None
        os.kill(first, 9)
        evaluation = evaluate(worker, base, [np.zeros_like(w) for w in base])
        assert worker.pid not in (None, first)
        assert worker.starts == 2
        assert evaluation.new_loss == evaluation.base_loss
    finally:
        worker.stop()
    assert worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)


def test_a_stopped_evaluator_refuses_work_and_leaves_no_process(base: Weights) -> None:
    worker = Evaluator(settings(1))
    worker.start()
    pid = worker.pid
    assert pid is not None
    worker.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(EvaluatorError, match="stopping"):
        evaluate(worker, base, base)


def mnist(base_loss: float, base_acc: float, loss: float, acc: float) -> Evaluation:
    return Evaluation(base_loss, base_acc, loss, acc, CHANCE_LOSS, CHANCE_ACCURACY)


def test_decide_at_its_boundaries() -> None:
    base_loss, base_acc = 0.3, 0.9
    loss_bound = base_loss + GIVE_UP * (CHANCE_LOSS - base_loss) + LOSS_SLACK
    acc_bound = base_acc - GIVE_UP * (base_acc - CHANCE_ACCURACY) - ACCURACY_SLACK
    assert decide(mnist(base_loss, base_acc, loss_bound, acc_bound))[0]
    assert not decide(mnist(base_loss, base_acc, math.nextafter(loss_bound, 9),
                                 base_acc))[0]
    assert not decide(mnist(base_loss, base_acc, base_loss,
                                 math.nextafter(acc_bound, 0)))[0]
    # A base no better than chance: only the slack is allowed.
    assert decide(mnist(2.5, 0.05, 2.5 + LOSS_SLACK, 0.05 - ACCURACY_SLACK))[0]
    assert not decide(mnist(2.5, 0.05, 2.5 + 1.01 * LOSS_SLACK, 0.05))[0]
    assert decide(mnist(2.0, 0.5, 1.5, 0.6)) == (True, 500)
    assert decide(mnist(2.0, 0.5, 2.15, 0.5)) == (True, -150)
    accept, score = decide(mnist(base_loss, base_acc, math.inf, 0.1))
    assert not accept and score == -(2**31)
    assert not decide(mnist(base_loss, base_acc, math.nan, base_acc))[0]
    assert decide(mnist(1e12, 0.1, 0.0, 0.9)) == (True, 2**31 - 1)


def test_the_validator_side_never_imports_tensorflow() -> None:
    """Only the worker process may: the node imports these modules at start."""
    code = ("import sys, flobc.validator.node, flobc.validator.fl.api, "
            "flobc.validator.fl.voter, flobc.validator.fl.evaluator, flobc.launch.cli\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"



def test_models_are_scored_on_the_test_split_alike_by_every_validator(
        evaluators: list[Evaluator], base: Weights, rounds: list[Round]) -> None:
    """The test split is the same for all validators, unlike their hold-out shards."""
    untrained = [e.score(encode_weights(base)) for e in evaluators]
    trained_base, deltas = rounds[-1]
    trained = [b + sum(ds) / len(ds) for b, *ds in zip(trained_base, *deltas, strict=True)]
    scores = [e.score(encode_weights(trained)) for e in evaluators]
    assert len(set(untrained)) == 1 and len(set(scores)) == 1
    assert untrained[0].accuracy < 0.3 < 0.8 < scores[0].accuracy
    assert scores[0].loss < untrained[0].loss
    with pytest.raises(EvaluatorError, match="WeightsError"):
        evaluators[0].score(b"\xc1")


def test_a_regression_model_is_scored_by_its_tasks_metrics() -> None:
    evaluator = Evaluator(EvaluatorSettings("diabetes_mlp", SEED, "diabetes", 0, VALIDATORS,
                                            MAX_BLOB_BYTES))
    try:
        from flobc.ml.models import initial_weights

        score = evaluator.score(encode_weights(initial_weights("diabetes_mlp", SEED)))
    finally:
        evaluator.stop()
    assert set(score.metrics) == {"loss", "mae", "rmse"} and score.accuracy is None
    assert score.metrics["rmse"] == pytest.approx(math.sqrt(score.loss))


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_the_worker_dies_with_a_killed_node() -> None:
    """kill -9 of the node must not leave its evaluator (and TensorFlow) running."""
    code = ("import sys, time\n"
            "from flobc.validator.fl.evaluator import Evaluator, EvaluatorSettings\n"
            f"e = Evaluator(EvaluatorSettings(*{astuple(settings(0))!r}))\n"
            "e.start(); e.wait_ready(); print(e.pid, flush=True); time.sleep(600)\n")
    node = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None
        worker = int(node.stdout.readline())
        assert not _gone(worker)
        node.kill()
        node.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(worker), f"evaluator worker {worker} outlived its node"
    finally:
        node.kill()
        node.wait()


@pytest.fixture(scope="module")
def in_process():
    """The rule's own judge, scored here with ``ShardScorer`` on validator 0's shard:
    what an experiment runs."""
    from flobc.ml.data import validator_shard
    from flobc.ml.learner import ShardScorer, learner_for

    shard = validator_shard(split(load_dataset(DATASET), seed=SEED).validator_holdout, 0,
                            VALIDATORS)
    return ShardScorer(learner_for(MODEL, SEED), shard)


def round_refs(blobs: Blobs, base: Weights, deltas: list[Weights]) -> list[CandidateRef]:
    base_hash = blobs.add(base)
    return [CandidateRef(bytes([t]) * 32, blobs.add(d), 500, base_hash)
            for t, d in enumerate(deltas)]


def test_the_worker_judges_a_round_as_the_rule_does_in_process(
        evaluators: list[Evaluator], rounds: list[Round], in_process) -> None:
    from flobc.protocol.validation import Candidate, Influence

    base, deltas = rounds[-1]
    deltas = [*deltas, [10 * d for d in deltas[0]]]  # and a scaled copy of trainer 0
    blobs = Blobs()
    refs = round_refs(blobs, base, deltas)
    todo = [r.trainer for r in refs]
    found = evaluators[0].judge(Influence(), refs[0].base, refs, todo, blobs.fetch)
    expected = Influence().judge(base, [Candidate(r.trainer, d, r.samples)
                                        for r, d in zip(refs, deltas, strict=True)],
                                 todo, in_process)
    assert [v.accept for v in found.values()] == [True, True, False]
    assert [v.accept for v in found.values()] == [expected[t].accept for t in found]
    for trainer, v in found.items():
        assert abs(v.score_milli - expected[trainer].score_milli) <= 1
        assert astuple(v.evaluation) == pytest.approx(astuple(expected[trainer].evaluation),
                                                      rel=1e-4)


def test_blobs_go_to_the_worker_once_and_are_named_by_hash_after(
        evaluators: list[Evaluator], rounds: list[Round]) -> None:
    from flobc.protocol.validation import Influence

    worker = evaluators[1]
    base, deltas = rounds[1]
    base = [b + np.float32(1e-3) for b in base]  # blobs this worker has not seen
    deltas = [[d / 2 for d in delta] for delta in deltas]
    blobs = Blobs()
    refs = round_refs(blobs, base, deltas)
    todo = [r.trainer for r in refs]
    first = worker.judge(Influence(), refs[0].base, refs, todo, blobs.fetch)
    assert sorted(blobs.fetched) == sorted(blobs)
    blobs.fetched.clear()
    assert worker.judge(Influence(), refs[0].base, refs, todo[:1], blobs.fetch) == {
        todo[0]: first[todo[0]]}
    assert blobs.fetched == []
    missing = Blobs()
    lacking = round_refs(missing, base, [[d + 1 for d in deltas[0]]])
    del missing[lacking[0].blob]
    with pytest.raises(EvaluatorError, match=f"blob {lacking[0].blob.hex()} is not stored"):
        worker.judge(Influence(), lacking[0].base, lacking, [lacking[0].trainer],
                     missing.fetch)


def test_a_stale_update_is_rebased_to_the_judged_version(evaluators: list[Evaluator],
                                                         rounds: list[Round]) -> None:
    """Trained on an older version (SSP, BAP): judged as the model it makes,
    old base + delta, against the latest version."""
    worker = evaluators[2]
    (old, deltas), (latest, _) = rounds[0], rounds[1]
    blobs = Blobs()
    old_hash, latest_hash = blobs.add(old), blobs.add(latest)
    ref = CandidateRef(TRAINER, blobs.add(deltas[0]), 100, old_hash)
    stale = worker.judge(RULE, latest_hash, [ref], [TRAINER], blobs.fetch)[TRAINER].evaluation
    fresh = evaluate(worker, old, deltas[0])
    assert stale is not None
    assert stale.base_loss == evaluate(worker, latest, deltas[0]).base_loss != fresh.base_loss
    assert stale.new_loss == pytest.approx(fresh.new_loss, rel=1e-5)


def test_the_worker_refuses_a_malformed_judgement(evaluators: list[Evaluator],
                                                  base: Weights) -> None:
    worker = evaluators[3]
    pid = worker.pid
    blobs = Blobs()
    [ref] = round_refs(blobs, base, [base])
    with pytest.raises(EvaluatorError, match="todo must list distinct trainers"):
        worker.judge(RULE, ref.base, [ref], [TRAINER], blobs.fetch)
    with pytest.raises(EvaluatorError, match="named twice"):
        worker.judge(RULE, ref.base, [ref, ref], [ref.trainer], blobs.fetch)
    with pytest.raises(EvaluatorError, match=f"limit is {MAX_CANDIDATES}"):
        worker.judge(RULE, ref.base, [ref] * (MAX_CANDIDATES + 1), [], blobs.fetch)
    assert worker.pid == pid  # still serving, the same worker
    assert judge_one(worker, base, [np.zeros_like(w) for w in base]).accept


def test_a_round_wise_rule_waits_for_the_expected_updates_or_its_share_of_the_deadline(
        ) -> None:
    from dataclasses import replace

    from flobc.protocol.settings import FLConfig
    from flobc.protocol.state import Meta
    from flobc.protocol.validation import Influence
    from flobc.validator.fl.voter import judge_at

    a, b, c, d, outsider = (bytes([i]) * 32 for i in range(1, 6))
    bsp = FLConfig(model_v0_hash=bytes(32), admission="open", round_deadline_ms=60_000,
                   validation=Influence(wait_fraction=0.25))
    meta = Meta(3, 2, 1_000, 61_000, (a, b, c, d))
    assert judge_at(bsp, meta, {a, b, c, d}) is None
    assert judge_at(bsp, meta, {a, b, c}) == 16_000
    assert judge_at(bsp, meta, {a, b, c, outsider}) == 16_000
    ssp = replace(bsp, sync="ssp")  # ssp_min_fraction 0.75: three of the four
    assert judge_at(ssp, meta, {a, b, c}) is None
    assert judge_at(ssp, meta, {a, b}) == 16_000
    late = replace(bsp, validation=Influence(wait_fraction=2.0))
    assert judge_at(late, meta, {a}) == meta.deadline_ms
    assert judge_at(bsp, replace(meta, expected=()), set()) is None
