"""Which runtime runs which model, the conversion cache, and OpenVINO's own checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from poolserve import backends
from poolserve.backends.cache import cache_key, cached
from poolserve.config import ModelConfig
from poolserve.cpu import has_native_bf16
from poolserve.errors import ModelLoadError
from poolserve.models.spec import ModelSpec, describe
from poolserve.runtime import load_model
from tests.conftest import BACKENDS


@pytest.fixture(scope="module")
def st_spec(tiny: Callable[..., Path]) -> ModelSpec:
    return describe(ModelConfig(model=str(tiny("st", "bert"))))


def test_auto_prefers_openvino_on_cpu_for_encoders(
    st_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "gpu_visible", lambda: False)
    assert backends.candidates(st_spec, ModelConfig()) == ["openvino", "torch"]
    monkeypatch.setattr(backends, "gpu_visible", lambda: True)
    assert backends.candidates(st_spec, ModelConfig()) == ["torch"]  # auto device: the GPU
    assert backends.candidates(st_spec, ModelConfig(device="cpu")) == ["openvino", "torch"]
    assert backends.candidates(st_spec, ModelConfig(backend="torch")) == ["torch"]


def test_kinds_openvino_does_not_run_go_to_torch(
    tiny: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "gpu_visible", lambda: False)
    reward = describe(ModelConfig(model=str(tiny("decoder", "qwen2")), task="reward"))
    decoder = describe(ModelConfig(model=str(tiny("decoder", "qwen2"))))
    for spec in (reward, decoder):
        assert backends.candidates(spec, ModelConfig()) == ["torch"]
        with pytest.raises(ModelLoadError, match=r"--backend openvino: .*torch backend"):
            backends.build(spec, ModelConfig(backend="openvino"))


def test_unknown_backend_is_refused(st_spec: ModelSpec) -> None:
    with pytest.raises(ModelLoadError, match="--backend 'tpu'"):
        backends.build(st_spec, ModelConfig(backend="tpu"))


@pytest.mark.parametrize(
    ("backend", "dtype"),
    [(b, d) for b in BACKENDS[1:] for d in ("float32", "bfloat16")[: 2 if b == "openvino" else 1]],
)
def test_exported_backends_equal_torch(tiny: Callable[..., Path], backend: str, dtype: str) -> None:
    """Pooled rows, per-token rows (token_embed) and excluded prompts, as torch."""
    from poolserve.models.base import Batch, TokenSeq
    from tests.fixtures.precision import assert_same_vectors

    path = tiny("st", "bert", dense=[(16, "tanh")])
    if backend == "openvino" and dtype == "bfloat16" and not has_native_bf16():
        # OpenVINO would run f32 under a bf16 hint here: refused, never mislabelled.
        with pytest.raises(ModelLoadError, match="native bf16"):
            load_model(ModelConfig(model=str(path), backend=backend, dtype=dtype))
        spec = describe(ModelConfig(model=str(path)))
        assert backends.candidates(spec, ModelConfig(dtype=dtype, device="cpu")) == ["torch"]
        return
    ov = load_model(ModelConfig(model=str(path), backend=backend, dtype=dtype))
    ref = load_model(ModelConfig(model=str(path), backend="torch", dtype="float32"))
    assert (ov.runnable.runtime, ov.info.dtype) == (backend, dtype)
    texts = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]
    batch = Batch([TokenSeq(tuple(ref.tokenizer(t)["input_ids"])) for t in texts])
    got, want = ov.backend.forward(batch), ref.backend.forward(batch)
    assert_same_vectors(np.asarray(got), np.asarray(want), dtype)
    # per-token rows (token_embed), and a prompt excluded from pooling
    for kind in ("hidden", "head"):
        seqs = [dataclasses.replace(s, per_token=kind) for s in batch.sequences]
        rows_ov, rows_ref = ov.backend.forward(Batch(seqs)), ref.backend.forward(Batch(seqs))
        for a, b in zip(rows_ov, rows_ref, strict=True):
            assert_same_vectors(a, b, dtype)
    seqs = [dataclasses.replace(s, prompt_len=2) for s in batch.sequences[:2]]
    assert_same_vectors(
        np.asarray(ov.backend.forward(Batch(seqs))),
        np.asarray(ref.backend.forward(Batch(seqs))),
        dtype,
    )


def test_cache_reuses_and_keys_on_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOLSERVE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights").write_bytes(b"1234")
    made: list[Path] = []

    def make(folder: Path) -> None:
        made.append(folder)
        (folder / "model.xml").write_text("ir")

    key = cache_key([model], {"precision": "f32"})
    first, hit = cached("rt", key, make)
    assert not hit and (first / "model.xml").read_text() == "ir"
    again, hit = cached("rt", key, make)
    assert hit and again == first and len(made) == 1
    assert cache_key([model], {"precision": "bf16"}) != key  # another recipe
    (model / "weights").write_bytes(b"12345")
    assert cache_key([model], {"precision": "f32"}) != key  # other weights

    def broken(folder: Path) -> None:
        (folder / "model.xml").write_text("half")
        raise RuntimeError("conversion died")

    with pytest.raises(RuntimeError):
        cached("rt", "other", broken)
    assert not (tmp_path / "cache" / "rt" / "other").exists()  # no half entry
    assert [p.name for p in (tmp_path / "cache" / "rt").iterdir()] == [key]


@pytest.mark.skipif("openvino" not in BACKENDS, reason="OpenVINO is not installed")
def test_int8_gate_reports_and_refuses(
    tiny: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tiny("st", "bert"))
    caplog.set_level("INFO", logger="poolserve.models")
    loaded = load_model(ModelConfig(model=path, quantization="int8", min_quantized_cosine=0.0))
    assert loaded.runnable.runtime == "openvino"
    figures = [r.getMessage() for r in caplog.records if "minimum cosine" in r.getMessage()]
    assert figures, caplog.text
    worst = float(figures[-1].rsplit(" ", 1)[-1])
    assert 0.0 < worst <= 1.0
    # the same model, held to a bound it cannot reach: refused, with the figure
    with pytest.raises(ModelLoadError, match=f"minimum cosine .* is {worst:.4f}, below"):
        load_model(ModelConfig(model=path, quantization="int8", min_quantized_cosine=1.01))


def test_int8_is_refused_where_it_does_not_run(tiny: Callable[..., Path]) -> None:
    with pytest.raises(ModelLoadError, match="runs on the openvino backend"):
        load_model(ModelConfig(model=str(tiny("st", "bert")), backend="torch", quantization="int8"))
    if "openvino" in BACKENDS:
        with pytest.raises(ModelLoadError, match="supports embedding models"):
            load_model(ModelConfig(model=str(tiny("cross", "bert")), quantization="int8"))


def test_onnxruntime_refuses_what_it_cannot_run(tiny: Callable[..., Path]) -> None:
    if "onnxruntime" not in BACKENDS:
        pytest.skip("ONNX Runtime is not installed")
    path = str(tiny("st", "bert"))
    with pytest.raises(ModelLoadError, match="runs float32"):
        load_model(ModelConfig(model=path, backend="onnxruntime", dtype="bfloat16"))
    with pytest.raises(ModelLoadError, match="decoder"):
        load_model(ModelConfig(model=str(tiny("decoder", "qwen2")), backend="onnxruntime"))
