"""--pooler-config: every key newest vLLM's PoolerConfig has, applied or refused by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from poolserve.errors import ModelLoadError
from poolserve.models.pooler_config import KEYS, read_pooler_config
from poolserve.offline import PoolingModel

# The keys of vLLM 0.33's PoolerConfig (vllm/config/pooler.py), plus older vLLM's names.
VLLM_033_KEYS = {
    "task",
    "pooling_type",
    "seq_pooling_type",
    "tok_pooling_type",
    "use_activation",
    "enable_flash_late_interaction",
    "dimensions",
    "enable_chunked_processing",
    "max_embed_len",
    "logit_mean",
    "logit_sigma",
    "step_tag_id",
    "returned_token_ids",
}


def test_every_vllm_key_is_known() -> None:
    assert set(KEYS) >= VLLM_033_KEYS
    assert set(KEYS) - VLLM_033_KEYS == {"normalize", "softmax", "activation"}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"bogus": 1}, r"unsupported keys \['bogus'\]"),
        ({"pooling_type": "MEAN", "seq_pooling_type": "CLS"}, "pooling_type and seq_pooling_type"),
        ({"pooling_type": "MEAN", "tok_pooling_type": "ALL"}, "pooling_type and tok_pooling_type"),
        ({"pooling_type": "WEIGHTED"}, "pooling_type 'WEIGHTED' is not supported"),
        ({"seq_pooling_type": "ALL"}, "seq_pooling_type 'ALL' is not supported"),
        ({"tok_pooling_type": "MEAN"}, "tok_pooling_type 'MEAN' is not supported"),
        ({"pooling_type": 3}, "pooling_type must be a string"),
        ({"logit_sigma": 0}, "logit_sigma cannot be 0"),
        ({"logit_mean": "x"}, "logit_mean must be a number"),
        ({"task": "score"}, "`score` task was removed; use `classify` instead"),
        ({"task": "encode"}, "`encode` task was removed"),
        ({"task": "generate"}, "task 'generate' is not supported"),
        ({"use_activation": True, "normalize": False}, "disagree"),
        ({"use_activation": "yes"}, "use_activation must be true or false"),
        ({"max_embed_len": 0}, "max_embed_len must be an integer >= 1"),
        ({"dimensions": 1.5}, "dimensions must be an integer >= 1"),
        ({"returned_token_ids": []}, "returned_token_ids must be a non-empty list"),
        ({"enable_flash_late_interaction": 1}, "enable_flash_late_interaction must be true"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_by_key(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        read_pooler_config(raw)


def test_pooling_type_splits_into_sequence_and_token_pooling() -> None:
    assert read_pooler_config({"pooling_type": "cls"}).seq_pooling == "cls"
    assert read_pooler_config({"pooling_type": "LAST"}).seq_pooling == "lasttoken"
    assert read_pooler_config({"pooling_type": "STEP"}).tok_pooling == "STEP"
    assert read_pooler_config({"seq_pooling_type": "MEAN"}).seq_pooling == "mean"
    settings = read_pooler_config({"task": "token_embed", "enable_flash_late_interaction": False})
    assert settings.task == "embed"
    assert read_pooler_config({"normalize": False}).use_activation is False
    assert read_pooler_config({}).keys == frozenset()


def _model(path: Path | None, **pooler: Any) -> PoolingModel:
    return PoolingModel(
        str(path) if path is not None else None,
        dtype="float32",
        backend="torch",
        override_pooler_config=pooler or None,
    )


@pytest.fixture(scope="module")
def mrl_dir(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import json
    import shutil

    out = tmp_path_factory.mktemp("mrl") / "model"
    shutil.copytree(tiny("st"), out)
    config = json.loads((out / "config.json").read_text())
    config["matryoshka_dimensions"] = [8, 16]
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_dimensions_becomes_the_default_output_size(mrl_dir: Path) -> None:
    with _model(mrl_dir) as plain, _model(mrl_dir, dimensions=8) as cut:
        default = cut.embed(["a b c"])
        assert default.shape == (1, 8)
        assert np.allclose(default, plain.embed(["a b c"], dimensions=8), atol=1e-6)
        # A request's own dimensions wins over the server default.
        assert cut.embed(["a b c"], dimensions=16).shape == (1, 16)


@pytest.mark.parametrize(
    ("listed", "dims", "match"),
    [(True, 12, r"only supports \[8, 16\]"), (False, 4096, "larger than the model")],
)
def test_bad_default_dimensions_are_refused(
    mrl_dir: Path, tmp_path: Path, listed: bool, dims: int, match: str
) -> None:
    path = mrl_dir
    if not listed:  # is_matryoshka with no listed sizes: any width up to the model's
        import json
        import shutil

        path = tmp_path / "model"
        shutil.copytree(mrl_dir, path)
        config = json.loads((path / "config.json").read_text())
        config.pop("matryoshka_dimensions")
        config["is_matryoshka"] = True
        (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=match):
        _model(path, dimensions=dims)


def test_use_activation_false_turns_normalization_off(tiny: Callable[..., Path]) -> None:
    path = tiny("st")
    with _model(path) as plain, _model(path, use_activation=False) as raw:
        got = raw.embed(["some words here"])
        assert not np.isclose(np.linalg.norm(got), 1.0)
        assert np.allclose(got, plain.embed(["some words here"], normalize=False), atol=1e-6)


def test_seq_pooling_type_applies(tiny: Callable[..., Path]) -> None:
    path = tiny("st")
    text = ["one two three four"]
    with (
        _model(path, seq_pooling_type="CLS") as a,
        _model(path, pooling_type="CLS") as b,
        _model(path) as mean,
    ):
        assert np.allclose(a.embed(text), b.embed(text), atol=1e-6)
        assert not np.allclose(a.embed(text), mean.embed(text), atol=1e-3)


def test_logit_calibration_and_activation_on_a_classifier(tiny: Callable[..., Path]) -> None:
    path = tiny("encoder", "bert", num_labels=2)
    texts = ["good", "bad movie"]
    with _model(path) as plain, _model(path, logit_mean=0.5, logit_sigma=2.0) as calibrated:
        raw = plain.classify(texts, activation=False)
        assert np.allclose(calibrated.classify(texts, activation=False), (raw - 0.5) / 2, atol=1e-5)
        shifted = (raw - 0.5) / 2
        want = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        assert np.allclose(calibrated.classify(texts), want, atol=1e-5)
    with _model(path, use_activation=False) as off:
        assert np.allclose(off.classify(texts), raw, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "pooler", "match"),
    [
        ("classifier", {"dimensions": 8}, "dimensions does not apply to classifiers"),
        ("classifier", {"enable_chunked_processing": True}, "enable_chunked_processing does not"),
        ("classifier", {"pooling_type": "ALL"}, "ALL does not apply to classifiers"),
        ("classifier", {"pooling_type": "MEAN"}, "pools the first token"),
        ("embedding", {"logit_mean": 1.0}, "logit_mean does not apply to embedding models"),
        ("embedding", {"step_tag_id": 3}, "step_tag_id does not apply to embedding models"),
        ("embedding", {"returned_token_ids": [1]}, "returned_token_ids does not apply"),
        ("embedding", {"pooling_type": "STEP"}, "per-token pooling"),
        ("embedding", {"max_embed_len": 100000}, "need enable_chunked_processing"),
        ("embedding", {"task": "classify"}, "needs a \\*ForSequenceClassification"),
    ],
)  # fmt: skip
def test_keys_that_do_not_apply_are_refused(
    tiny: Callable[..., Path], kind: str, pooler: dict[str, Any], match: str
) -> None:
    path = tiny("encoder", "bert", num_labels=2) if kind == "classifier" else tiny("st")
    with pytest.raises(ModelLoadError, match=match):
        _model(path, **pooler)


def test_task_must_agree_with_the_task_flag(tiny: Callable[..., Path]) -> None:
    with pytest.raises(ModelLoadError, match="--pooler-config task asks for 'embed'"):
        PoolingModel(str(tiny("encoder", "bert", num_labels=2)), task="classify",
                     override_pooler_config={"task": "embed"})  # fmt: skip
    with _model(tiny("encoder", "bert", num_labels=2), task="embed") as model:
        assert model.ctx.info.task == "embed"


def test_max_embed_len_below_the_window_caps_inputs(tiny: Callable[..., Path]) -> None:
    from poolserve.errors import InvalidRequest

    with _model(tiny("st"), max_embed_len=8) as model:
        model.embed(["a b c"])
        with pytest.raises(InvalidRequest, match="maximum context length is 8 tokens"):
            model.embed([" ".join(["word"] * 20)])
