"""How often validators reject honest updates, by local optimizer setting.

    python benchmarks/local_training.py [--rounds 12] [--seeds 0 1 2]

For each setting and seed, in one process: mnist_cnn from its seeded initial weights,
the embedded sample split as a testnet splits it, 4 IID trainers (1,000 images each)
training one local epoch per round with the trainers' own per-round seeds, and the 4
validators' hold-out shards. Every update is scored on every shard and judged by the
validators' default rule (``chance_bound``); an update that at least f + 1 = 2 of the 4
would reject is left out of that round's FedAvg, as on the chain. Printed as one JSON
object: per setting and seed, the honest updates rejected by a quorum
(``quorum_rejected``) and by at least one validator (``any_rejected``), the largest rise
of an update's loss over its base on a shard, and test accuracy after each round.
Settings differ only in the optimizer, so the comparison is side by side.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

N_TRAINERS = 4
N_VALIDATORS = 4
REJECT_QUORUM = 2
SETTINGS: dict[str, dict[str, float]] = {
    "no clipping": {"learning_rate": 0.1},
    "global norm 5": {"learning_rate": 0.1, "global_clipnorm": 5.0},
    "global norm 3": {"learning_rate": 0.1, "global_clipnorm": 3.0},
    "global norm 1": {"learning_rate": 0.1, "global_clipnorm": 1.0},
    "no clipping, learning rate 0.05": {"learning_rate": 0.05},
}


def run(optimizer: dict[str, float], seed: int, rounds: int) -> dict[str, Any]:
    """One federated training with the given local optimizer; see the module docstring."""
    import keras

    from flobc.ml.data import load_dataset, split, validator_shard
    from flobc.ml.learner import KerasLearner, ShardScorer
    from flobc.ml.models import MODELS
    from flobc.ml.partition import iid
    from flobc.protocol.aggregation import fedavg
    from flobc.protocol.validation import ChanceBound, evaluation
    from flobc.trainer.loop import round_seed

    model = MODELS["mnist_cnn"](seed)
    model.compile(optimizer=keras.optimizers.SGD(**optimizer),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    learner = KerasLearner(model)
    data = split(load_dataset("mnist_5k"), seed=seed)
    parts = [data.train.subset(p) for p in iid(len(data.train), N_TRAINERS, seed)]
    shards = [validator_shard(data.validator_holdout, i, N_VALIDATORS)
              for i in range(N_VALIDATORS)]
    weights = learner.get_weights()
    any_rejected = quorum_rejected = 0
    largest_rise = float("-inf")
    accuracy = []
    for r in range(1, rounds + 1):
        learner.set_weights(weights)
        scorers = [ShardScorer(learner, s) for s in shards]
        bases = [score(weights) for score in scorers]
        kept, samples = [], []
        for t, part in enumerate(parts):
            learner.set_weights(weights)
            learner.fit(part.x, part.y, 1, 32, round_seed(seed, t, r))
            delta = [new - old for new, old in zip(learner.get_weights(), weights,
                                                   strict=True)]
            rejects = 0
            trained = learner.get_weights()
            for score, base in zip(scorers, bases, strict=True):
                new = score(trained)
                accept, _ = ChanceBound().decide(evaluation(base, new, score.chance))
                rejects += not accept
                largest_rise = max(largest_rise, new["loss"] - base["loss"])
            any_rejected += rejects > 0
            if rejects >= REJECT_QUORUM:
                quorum_rejected += 1
            else:
                kept.append(delta)
                samples.append(len(part))
        weights = fedavg(weights, kept, samples)
        learner.set_weights(weights)
        accuracy.append(round(learner.evaluate(data.test.x, data.test.y)["accuracy"], 4))
    return {"seed": seed, "updates": rounds * N_TRAINERS, "quorum_rejected": quorum_rejected,
            "any_rejected": any_rejected, "largest_loss_rise": round(largest_rise, 3),
            "accuracy_by_round": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    results = {name: [run(optimizer, seed, args.rounds) for seed in args.seeds]
               for name, optimizer in SETTINGS.items()}
    print(json.dumps({"rounds": args.rounds, "trainers": N_TRAINERS,
                      "validators": N_VALIDATORS, "settings": results}))


if __name__ == "__main__":
    main()
