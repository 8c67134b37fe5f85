"""The model zoo and the Keras learner. The only test module that imports TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from functools import cache

import keras
import numpy as np
import pytest

from flobc.ml.data import Splits, load_dataset, split
from flobc.ml.learner import KerasLearner, Learner
from flobc.ml.models import MODELS, build_model, initial_weights
from flobc.ml.weights import WeightsError, encode_weights, spec, weights_digest

DIGEST_SCRIPT = """
import sys
from flobc.ml.models import initial_weights
from flobc.ml.weights import weights_digest
print(weights_digest(initial_weights(sys.argv[1], int(sys.argv[2]))).hex())
"""


@cache
def splits() -> Splits:
    return split(load_dataset(), seed=0)


def test_importing_the_zoo_does_not_import_tensorflow() -> None:
    code = ("import sys, flobc.ml.weights, flobc.ml.data, flobc.ml.partition, "
            "flobc.ml.models, flobc.ml.learner\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("name", "params"), [("mnist_cnn", 56_714), ("mnist_mlp", 50_890)])
def test_models_are_small_compiled_classifiers(name: str, params: int) -> None:
    model = build_model(name, seed=0)
    assert model.compiled and model.count_params() == params
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    ws = model.get_weights()
    assert {dtype for dtype, _ in spec(ws)} == {"float32"}
    assert len(encode_weights(ws)) < 250_000
    probabilities = model.predict(splits().test.x[:5], verbose=0)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_unknown_model_names_the_known_ones() -> None:
    assert sorted(MODELS) == ["breast_cancer_mlp", "diabetes_mlp", "digits_mlp", "mnist_cnn",
                              "mnist_mlp"]
    with pytest.raises(ValueError, match="'resnet'; known models: breast_cancer_mlp, "
                                         "diabetes_mlp, digits_mlp, mnist_cnn, mnist_mlp"):
        build_model("resnet", seed=0)


def test_initial_weights_are_fixed_by_the_seed_across_processes() -> None:
    runs = [subprocess.Popen([sys.executable, "-c", DIGEST_SCRIPT, "mnist_cnn", "42"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for _ in range(2)]
    keras.utils.set_random_seed(7)  # global random state must not matter
    here = weights_digest(initial_weights("mnist_cnn", 42)).hex()
    assert [run.communicate(timeout=120)[0].strip() for run in runs] == [here, here]
    assert weights_digest(initial_weights("mnist_cnn", 42)).hex() == here
    assert weights_digest(initial_weights("mnist_cnn", 43)).hex() != here


def test_no_two_layers_share_initial_values() -> None:
    # Glorot-uniform draws u in [-1, 1) scaled by the layer's limit; two layers with
    # the same seed would start with the same u.
    def unscaled(kernel: np.ndarray) -> float:
        receptive = int(np.prod(kernel.shape[:-2]))
        fans = receptive * (kernel.shape[-2] + kernel.shape[-1])
        return round(float(kernel.flat[0]) / np.sqrt(6 / fans), 4)

    kernels = [w for w in initial_weights("mnist_cnn", 0) if w.ndim > 1]
    assert len(kernels) == 4 and len({unscaled(k) for k in kernels}) == 4


def test_learner_gets_and_sets_weights() -> None:
    learner = KerasLearner(build_model("mnist_mlp", seed=0))
    assert isinstance(learner, Learner)
    other = initial_weights("mnist_mlp", 1)
    learner.set_weights(other)
    assert weights_digest(learner.get_weights()) == weights_digest(other)
    wrong = [*other[:-1], np.zeros(11, np.float32)]
    with pytest.raises(WeightsError, match=r"do not match the model's"):
        learner.set_weights(wrong)
    with pytest.raises(WeightsError):
        learner.set_weights([w.astype(np.float64) for w in other])
    assert weights_digest(learner.get_weights()) == weights_digest(other)


def test_centralized_training_reaches_a_sane_accuracy() -> None:
    data = splits()
    learner = KerasLearner(build_model("mnist_cnn", seed=0))
    before = learner.evaluate(data.test.x, data.test.y)
    result = learner.fit(data.train.x, data.train.y, epochs=3, batch_size=32, seed=0)
    after = learner.evaluate(data.test.x, data.test.y)
    assert result["samples"] == 4000 and result["accuracy"] > 0.85
    assert before["accuracy"] < 0.3 and after["accuracy"] > 0.9
    assert after["loss"] < before["loss"]


def test_fit_depends_only_on_weights_data_and_seed() -> None:
    # Adam keeps state between steps: the learner must reset it on every fit.
    model = build_model("mnist_mlp", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    learner = KerasLearner(model)
    start = learner.get_weights()
    x, y = splits().train.x[:600], splits().train.y[:600]

    def fit(seed: int) -> list[np.ndarray]:
        learner.set_weights(start)
        learner.fit(x, y, epochs=2, batch_size=50, seed=seed)
        return learner.get_weights()

    first, again, other = fit(1), fit(1), fit(2)
    assert all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(first, again, strict=True))
    assert not all(np.allclose(a, b, rtol=0, atol=1e-3) for a, b in zip(first, other, strict=True))


def test_fit_needs_an_epoch_and_data() -> None:
    learner = KerasLearner(build_model("mnist_mlp", seed=0))
    x, y = splits().test.x, splits().test.y
    with pytest.raises(ValueError, match="at least one epoch and one sample"):
        learner.fit(x, y, epochs=0, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="at least one epoch and one sample"):
        learner.fit(x[:0], y[:0], epochs=1, batch_size=32, seed=0)


def test_learner_needs_a_compiled_model() -> None:
    with pytest.raises(ValueError, match="must be compiled"):
        KerasLearner(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
