"""Classifier heads: the score activation (sentence-transformers' resolution order),
label facts, and the classification / cosine maths."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from poolserve.backends.torch.pooler import TorchActivation
from poolserve.errors import ModelLoadError
from poolserve.models.activations import numpy_activation
from poolserve.models.heads import (
    is_multi_label,
    label_names,
    num_labels,
    resolve_score_activation,
)
from poolserve.models.post import classify_probs, cosine_rows, sigmoid, softmax
from poolserve.runtime import score_activation

SIGMOID = "torch.nn.modules.activation.Sigmoid"
TANH = "torch.nn.modules.activation.Tanh"
IDENTITY = "torch.nn.modules.linear.Identity"
LOGITS = np.array([[-3.0, 0.5], [2.0, -1.0], [40.0, -40.0]], dtype=np.float32)


def config(labels: int = 1, **extra: Any) -> SimpleNamespace:
    return SimpleNamespace(num_labels=labels, id2label={i: f"L{i}" for i in range(labels)}, **extra)


@pytest.mark.parametrize(
    ("hf", "st", "name"),
    [
        (config(1), None, "Sigmoid"),
        (config(2), None, "Identity"),
        (config(1, sentence_transformers={"activation_fn": TANH}), None, "Tanh"),
        (config(1, sbert_ce_default_activation_function=TANH), None, "Tanh"),
        # "sentence_transformers" wins over the legacy key (ST's elif).
        (
            config(
                1,
                sentence_transformers={"activation_fn": IDENTITY},
                sbert_ce_default_activation_function=TANH,
            ),
            None,
            "Identity",
        ),
        # config_sentence_transformers.json wins over config.json.
        (
            config(1, sentence_transformers={"activation_fn": IDENTITY}),
            {"activation_fn": TANH},
            "Tanh",
        ),
        # Untrusted paths are skipped with a warning; the next source or the default applies.
        (config(1, sentence_transformers={"activation_fn": "pkg.Act"}), None, "Sigmoid"),
        (
            config(1, sentence_transformers={"activation_fn": TANH}),
            {"activation_fn": "pkg.X"},
            "Tanh",
        ),
        (config(1), {"activation_fn": None}, "Sigmoid"),
    ],
)
def test_resolution_order(hf: Any, st: dict[str, Any] | None, name: str) -> None:
    assert resolve_score_activation(hf, st).rsplit(".", 1)[-1] == name


def test_activation_applies_to_2d_logits() -> None:
    act = score_activation(resolve_score_activation(config(1), None))
    x = np.array([[0.0], [2.0]], dtype=np.float32)
    out = act(x)
    assert out.shape == (2, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, torch.sigmoid(torch.from_numpy(x)).numpy(), atol=1e-7)


def test_unknown_torch_activation_fails_the_load() -> None:
    path = resolve_score_activation(
        config(1, sentence_transformers={"activation_fn": "torch.nn.NoSuchThing"}), None
    )
    with pytest.raises(ModelLoadError, match="cross-encoder activation"):
        score_activation(path)


# Every class numpy computes, against torch's own module on the same logits.
@pytest.mark.parametrize(
    "path",
    [
        "torch.nn.modules.activation.Sigmoid",
        "torch.nn.modules.linear.Identity",
        "torch.nn.modules.activation.Tanh",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.activation.GELU",
        "torch.nn.modules.activation.Softmax",
        "torch.nn.modules.activation.SiLU",
        "torch.nn.modules.activation.LogSigmoid",
        "torch.nn.modules.activation.Softplus",
        "torch.nn.Tanh",
    ],
)
def test_numpy_activations_equal_torch(path: str) -> None:
    ours = numpy_activation(path)
    assert ours is not None
    reference = TorchActivation(path)
    x = np.random.default_rng(3).normal(scale=6, size=(7, 3)).astype(np.float32)
    x[0, 0], x[1, 1] = 90.0, -90.0
    got = ours(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got, reference(x), rtol=1e-6, atol=1e-6)


def test_other_activations_run_in_torch() -> None:
    path = "torch.nn.modules.activation.Hardtanh"
    assert numpy_activation(path) is None
    act = score_activation(path)
    np.testing.assert_allclose(act(np.array([[-3.0, 0.5]], np.float32)), [[-1.0, 0.5]])
    assert numpy_activation("mypkg.nn.Tanh") is None  # a class by the same name elsewhere


def test_label_facts() -> None:
    assert num_labels(config(3)) == 3
    assert label_names(config(2)) == ("L0", "L1")
    partial = SimpleNamespace(num_labels=3, id2label={"0": "neg", "2": "pos"})
    assert label_names(partial) == ("neg", None, "pos")
    assert is_multi_label(config(2, problem_type="multi_label_classification"))
    assert not is_multi_label(config(2, problem_type="single_label_classification"))


def test_classify_probs() -> None:
    np.testing.assert_allclose(
        classify_probs(LOGITS, multi_label=False),
        torch.softmax(torch.from_numpy(LOGITS), -1).numpy(),
        atol=1e-7,
    )
    np.testing.assert_allclose(
        classify_probs(LOGITS, multi_label=True),
        torch.sigmoid(torch.from_numpy(LOGITS)).numpy(),
        atol=1e-7,
    )
    one = LOGITS[:, :1]
    np.testing.assert_allclose(
        classify_probs(one, multi_label=False), torch.sigmoid(torch.from_numpy(one)).numpy()
    )
    assert np.isfinite(sigmoid(np.array([-1e4, 1e4], np.float32))).all()
    assert np.isfinite(softmax(np.array([[1e4, -1e4]], np.float32))).all()


def test_cosine_rows() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    expected = torch.nn.functional.cosine_similarity(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(cosine_rows(a, b), expected, atol=1e-6)
    assert cosine_rows(np.zeros((1, 4)), np.ones((1, 4)))[0] == 0.0
