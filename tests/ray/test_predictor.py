"""PoolingPredictor: the Ray Data callable class equals the offline engine row for row,
in a ``map_batches`` actor pool and called directly (numpy and pandas batches)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from poolserve.offline import PoolingModel  # noqa: E402
from poolserve.scale.ray_data import PoolingPredictor  # noqa: E402

# torch: loads at once (OpenVINO would convert each tiny model first).
OPTS = {"dtype": "float32", "backend": "torch"}
TEXTS = [f"text number {i} about {'cats' if i % 3 else 'dogs'} and more" for i in range(300)]


@pytest.fixture(scope="module")
def st_model(tiny: Callable[..., Path]) -> Iterator[PoolingModel]:
    with PoolingModel(str(tiny("st")), **OPTS) as model:
        yield model


def test_map_batches_equals_embed(
    ray_cluster: str, tiny: Callable[..., Path], st_model: PoolingModel
) -> None:
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    out = ds.map_batches(
        PoolingPredictor,
        fn_constructor_kwargs={"model": str(tiny("st")), "model_options": OPTS},
        concurrency=2,
        batch_size=64,
        num_cpus=1,
    )
    rows = sorted(out.take_all(), key=lambda r: r["id"])
    assert [r["text"] for r in rows] == TEXTS  # the batch's columns are kept
    got = np.stack([r["embedding"] for r in rows])
    want = st_model.embed(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_direct_call_numpy_and_pandas(tiny: Callable[..., Path], st_model: PoolingModel) -> None:
    import pandas as pd

    with PoolingPredictor(str(tiny("st")), model_options=OPTS) as predictor:
        batch = {"text": np.array(TEXTS[:10], dtype=object), "n": np.arange(10)}
        out = predictor(batch)
        assert set(out) == {"text", "n", "embedding"}
        np.testing.assert_allclose(out["embedding"], st_model.embed(TEXTS[:10]), atol=1e-5)
        frame = predictor(pd.DataFrame({"text": TEXTS[:4]}))
    assert list(frame.columns) == ["text", "embedding"]
    np.testing.assert_allclose(np.stack(frame["embedding"]), st_model.embed(TEXTS[:4]), atol=1e-5)


def test_bad_rows_raise_or_fill_an_error_column(tiny: Callable[..., Path]) -> None:
    too_long = "word " * 500  # past the tiny model's max length, no truncation asked
    batch = {"text": np.array(["fine", too_long, None, "also fine"], dtype=object)}
    match = r"row 1 of the batch .*\(and 1 more in this batch\)"
    with (
        PoolingPredictor(str(tiny("st")), model_options=OPTS) as raising,
        pytest.raises(ValueError, match=match),
    ):
        raising(batch)
    with PoolingPredictor(str(tiny("st")), model_options=OPTS, on_error="column") as lenient:
        out = lenient(batch)
    assert out["error"][0] is None and out["error"][3] is None
    assert "null" in out["error"][2] and out["error"][1]
    assert np.isnan(out["embedding"][1]).all() and not np.isnan(out["embedding"][0]).any()


def test_classify_and_score(tiny: Callable[..., Path]) -> None:
    classifier = str(tiny("cross", "bert", num_labels=2))
    with PoolingPredictor(classifier, task="classify", model_options=OPTS) as predictor:
        out = predictor({"text": np.array(TEXTS[:5], dtype=object)})
    with PoolingModel(classifier, **OPTS) as model:
        want = model.classify(TEXTS[:5])
        names = model.labels
    np.testing.assert_allclose(out["probs"], want, atol=1e-5)
    best = want.argmax(1)
    assert list(out["label"]) == [names[k] if names else str(k) for k in best]

    cross = str(tiny("cross"))
    q = np.array(["a question"] * 3, dtype=object)
    d = np.array(TEXTS[:3], dtype=object)
    with PoolingPredictor(
        cross, task="score", text_columns=("q", "d"), model_options=OPTS
    ) as scorer:
        scores = scorer({"q": q, "d": d})["score"]
    with PoolingModel(cross, **OPTS) as model:
        np.testing.assert_allclose(scores, model.score("a question", TEXTS[:3]), atol=1e-5)
