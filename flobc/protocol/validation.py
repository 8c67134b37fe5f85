"""How a validator judges an update it evaluated: the validation rules, by name.

Votes are cast off-chain, but every validator should judge by the same rule, so genesis
names it in ``[app.validation]`` (``name`` and the rule's settings, its dataclass
fields). A rule sees only the two models' scores on the validator's hold-out shard and
answers (accept, score in thousandths); a new rule is one class registered here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from flobc.ml.data import N_CLASSES
from flobc.protocol.txs import SCORE_RANGE
from flobc.registry import Registry

CHANCE_LOSS = math.log(N_CLASSES)
"""Cross-entropy of a model that knows nothing (a uniform guess)."""
CHANCE_ACCURACY = 1 / N_CLASSES


@dataclass(frozen=True)
class Evaluation:
    """Loss and accuracy on the hold-out shard, of the base model and of base + delta."""

    base_loss: float
    base_accuracy: float
    new_loss: float
    new_accuracy: float


def loss_gain_milli(e: Evaluation) -> int:
    """The loss improvement in thousandths, clamped to what a vote can carry."""
    gain = e.base_loss - e.new_loss
    score = round(gain * 1000) if math.isfinite(gain) else SCORE_RANGE[0]
    return min(max(score, SCORE_RANGE[0]), SCORE_RANGE[1])


class ValidationRule:
    """One way of judging an evaluated update; settings are the dataclass fields."""

    def decide(self, e: Evaluation) -> tuple[bool, int]:
        """(accept, score_milli) for one evaluation."""
        raise NotImplementedError

    def table(self) -> dict[str, object]:
        """The rule as its genesis ``[app.validation]`` table: its name and settings."""
        return {"name": VALIDATION_RULES.name_of(type(self)),
                **asdict(self)}  # type: ignore[call-overload]


VALIDATION_RULES: Registry[type[ValidationRule]] = Registry("validation rule")


@VALIDATION_RULES.register("chance_bound")
@dataclass(frozen=True)
class ChanceBound(ValidationRule):
    """An update may give up at most ``give_up`` of the base model's advantage over
    chance, in loss and in accuracy, plus a small slack (both models are scored on the
    same images, so the difference is not very noisy):

        new_loss <= base_loss + give_up * max(CHANCE_LOSS - base_loss, 0) + loss_slack
        new_accuracy >= base_accuracy - give_up * max(base_accuracy - CHANCE_ACCURACY, 0)
                        - accuracy_slack

    Why not a fixed ratio: one epoch of SGD at the zoo's learning rate leaves an honest
    model noisy late in training (seen on mnist_cnn: loss 0.17 -> 0.63, accuracy 0.97
    -> 0.78 on a shard), while in round 1, where the base is at chance, an update
    sign-flipped and scaled x4 raises the loss by as little as 0.025 to 0.1 when
    trainers hold 1,000 samples each (an honest one lowers it by 0.1 to 0.8). Measured
    against chance, the first is well inside the bound and the second outside it,
    which is why the slack is small; sign-flipped updates in later rounds (loss 4 to
    13) and N(0, 1) noise (loss in the thousands) are far outside. The score is the
    loss improvement in thousandths.
    """

    give_up: float = 0.5
    loss_slack: float = 0.02
    accuracy_slack: float = 0.05

    def decide(self, e: Evaluation) -> tuple[bool, int]:
        loss_bound = (e.base_loss + self.give_up * max(CHANCE_LOSS - e.base_loss, 0)
                      + self.loss_slack)
        accuracy_bound = (e.base_accuracy
                          - self.give_up * max(e.base_accuracy - CHANCE_ACCURACY, 0)
                          - self.accuracy_slack)
        accept = (math.isfinite(e.new_loss) and e.new_loss <= loss_bound
                  and e.new_accuracy >= accuracy_bound)
        return accept, loss_gain_milli(e)
