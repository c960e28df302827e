"""poolserve.backends.torch.pooler against sentence-transformers' own Pooling and Dense modules."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from poolserve.backends.torch.pooler import load_dense, normalize_rows, pool
from poolserve.errors import ModelLoadError
from poolserve.models.st_config import POOLING_MODES, DenseSpec

try:
    from sentence_transformers.sentence_transformer.modules import Pooling
except ImportError:  # older layouts
    from sentence_transformers.models import Pooling  # type: ignore[no-redef]

try:
    from sentence_transformers.base.modules import Dense
except ImportError:
    from sentence_transformers.models import Dense  # type: ignore[no-redef]

HIDDEN = 8
COMBOS = [
    *[(m,) for m in POOLING_MODES],
    ("cls", "mean"),
    ("max", "mean"),
    ("mean", "mean_sqrt_len_tokens"),
    ("weightedmean", "lasttoken", "cls"),
    POOLING_MODES,
]


def batch(lengths: list[int], *, left: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random hidden states [B, T, H] (pads hold garbage) and a right- or left-padded mask."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    hidden = torch.randn(len(lengths), width, HIDDEN, generator=gen)
    mask = torch.zeros(len(lengths), width, dtype=torch.int64)
    for i, n in enumerate(lengths):
        if left:
            mask[i, width - n :] = 1
        else:
            mask[i, :n] = 1
    return hidden, mask


def st_pool(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    modes: tuple[str, ...],
    prompt_length: int | None = None,
) -> torch.Tensor:
    module = Pooling(HIDDEN, pooling_mode=modes, include_prompt=prompt_length is None)
    features = {"token_embeddings": hidden.clone(), "attention_mask": mask.clone()}
    if prompt_length is not None:
        features["prompt_length"] = prompt_length
    return module(features)["sentence_embedding"]


LENGTHS = [7, 3, 9, 1, 5]


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
@pytest.mark.parametrize("modes", COMBOS, ids=lambda m: "+".join(m))
def test_pool_matches_sentence_transformers(modes: tuple[str, ...], left: bool) -> None:
    hidden, mask = batch(LENGTHS, left=left)
    ours = pool(hidden, mask, modes)
    assert ours.dtype == torch.float32
    assert ours.shape == (len(LENGTHS), HIDDEN * len(modes))
    torch.testing.assert_close(ours, st_pool(hidden, mask, modes), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
@pytest.mark.parametrize("modes", COMBOS, ids=lambda m: "+".join(m))
def test_prompt_exclusion_matches_include_prompt_false(modes: tuple[str, ...], left: bool) -> None:
    lengths = [7, 4, 9, 5, 6]
    hidden, mask = batch(lengths, left=left, seed=1)
    prompt = 3
    ours = pool(hidden, mask, modes, torch.full((len(lengths),), prompt))
    expected = st_pool(hidden, mask, modes, prompt_length=prompt)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    if modes != ("lasttoken",):  # the last token is never part of the prompt
        assert not torch.allclose(ours, pool(hidden, mask, modes))


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
@pytest.mark.parametrize("modes", [("mean",), ("cls",), ("weightedmean",), ("lasttoken", "max")])
def test_per_row_prompt_lengths(modes: tuple[str, ...], left: bool) -> None:
    """Rows with different prompt lengths each match ST run on that row alone."""
    lengths = [8, 5, 9, 6]
    prompts = [2, 0, 4, 1]
    hidden, mask = batch(lengths, left=left, seed=2)
    ours = pool(hidden, mask, modes, torch.tensor(prompts))
    for i, p in enumerate(prompts):
        row = st_pool(hidden[i : i + 1], mask[i : i + 1], modes, prompt_length=p or None)
        torch.testing.assert_close(ours[i : i + 1], row, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_prompt_covering_a_whole_row_matches_sentence_transformers(left: bool) -> None:
    # Row 0 has 3 tokens and a 4-token prompt: nothing of it is left to pool.
    hidden, mask = batch([3, 6], left=left, seed=3)
    ours = pool(hidden, mask, POOLING_MODES, torch.tensor([4, 4]))
    expected = st_pool(hidden, mask, POOLING_MODES, prompt_length=4)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


def test_zero_prompt_lens_is_a_no_op() -> None:
    hidden, mask = batch(LENGTHS, left=False)
    torch.testing.assert_close(
        pool(hidden, mask, ("mean",), torch.zeros(len(LENGTHS), dtype=torch.int64)),
        pool(hidden, mask, ("mean",)),
    )


def test_pool_does_not_modify_its_inputs() -> None:
    hidden, mask = batch(LENGTHS, left=True)
    h0, m0 = hidden.clone(), mask.clone()
    pool(hidden, mask, POOLING_MODES, torch.full((len(LENGTHS),), 1))
    assert torch.equal(hidden, h0) and torch.equal(mask, m0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_pool_in_float32(dtype: torch.dtype) -> None:
    hidden, mask = batch(LENGTHS, left=False)
    ours = pool(hidden.to(dtype), mask, ("mean", "cls"))
    assert ours.dtype == torch.float32
    reference = st_pool(hidden.to(dtype).float(), mask, ("mean", "cls"))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_unknown_mode_raises() -> None:
    hidden, mask = batch([2], left=False)
    with pytest.raises(ValueError, match="unknown pooling mode"):
        pool(hidden, mask, ("median",))


def test_normalize_rows_keeps_zero_rows() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(normalize_rows(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


# -- Dense -------------------------------------------------------------------------


def saved_dense(
    folder: Path,
    activation: nn.Module,
    *,
    bias: bool = True,
    in_features: int = 6,
    out_features: int = 4,
    safe: bool = True,
) -> tuple[nn.Module, DenseSpec]:
    torch.manual_seed(7)
    dense = Dense(in_features, out_features, bias=bias, activation_function=activation)
    folder.mkdir(parents=True, exist_ok=True)
    dense.save(str(folder), safe_serialization=safe)
    cfg = json.loads((folder / "config.json").read_text())
    spec = DenseSpec(
        path=folder,
        in_features=cfg["in_features"],
        out_features=cfg["out_features"],
        bias=cfg["bias"],
        activation=cfg["activation_function"],
    )
    return dense, spec


@pytest.mark.parametrize(
    "activation", [nn.Tanh(), nn.Identity(), nn.ReLU(), nn.GELU(), nn.Sigmoid()], ids=type
)
@pytest.mark.parametrize("bias", [True, False])
def test_load_dense_matches_sentence_transformers(
    tmp_path: Path, activation: nn.Module, bias: bool
) -> None:
    dense, spec = saved_dense(tmp_path / "2_Dense", activation, bias=bias)
    ours = load_dense(spec)
    x = torch.randn(5, 6)
    with torch.no_grad():
        expected = dense({"sentence_embedding": x})["sentence_embedding"]
        torch.testing.assert_close(ours(x), expected)
    assert isinstance(ours[1], type(activation))


def test_load_dense_from_pytorch_bin(tmp_path: Path) -> None:
    dense, spec = saved_dense(tmp_path / "2_Dense", nn.Tanh(), safe=False)
    assert (spec.path / "pytorch_model.bin").is_file()
    x = torch.randn(3, 6)
    with torch.no_grad():
        expected = dense({"sentence_embedding": x})["sentence_embedding"]
        torch.testing.assert_close(load_dense(spec)(x), expected)


def test_load_dense_without_weights(tmp_path: Path) -> None:
    spec = DenseSpec(tmp_path, 6, 4, True, "torch.nn.modules.activation.Tanh")
    with pytest.raises(ModelLoadError, match="no weights file"):
        load_dense(spec)


def test_load_dense_shape_mismatch(tmp_path: Path) -> None:
    _, spec = saved_dense(tmp_path / "2_Dense", nn.Tanh())
    wrong = DenseSpec(spec.path, 6, 5, True, spec.activation)
    with pytest.raises(ModelLoadError):
        load_dense(wrong)


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "builtins.eval",
        "subprocess.Popen",
        "torchvision.ops.misc.Permute",  # starts with "torch" but not "torch."
        "nottorch.nn.Tanh",
        "torch.nn.modules.activation.NoSuchThing",
        "torch.no.such.module.Tanh",
        "torch.nn.functional.relu",  # a function, not an nn.Module class
        "torch.load",
        "torch.distributed.run.main",  # would parse sys.argv and launch workers
        "torch.Tensor",
        "torch.nn.modules.linear.Linear",  # an nn.Module, but needs arguments
    ],
)
def test_untrusted_or_bad_activation_is_refused(tmp_path: Path, name: str) -> None:
    _, spec = saved_dense(tmp_path / "2_Dense", nn.Tanh())
    bad = DenseSpec(spec.path, spec.in_features, spec.out_features, spec.bias, name)
    with pytest.raises(ModelLoadError):
        load_dense(bad)


def test_all_pooling_modes_are_covered() -> None:
    assert set(itertools.chain.from_iterable(COMBOS)) == set(POOLING_MODES)
    assert set(Pooling.POOLING_MODES) == set(POOLING_MODES)
