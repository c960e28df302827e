"""poolserve.models.st_config.read_st_pipeline on hand-written sentence-transformers folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from poolserve.errors import ModelLoadError
from poolserve.models.st_config import (
    is_sentence_transformers_folder,
    pooling_modes_from_config,
    read_st_pipeline,
)

TANH = "torch.nn.modules.activation.Tanh"


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def module(idx: int, kind: str, path: str, prefix: str = "sentence_transformers.models") -> dict:
    return {"idx": idx, "name": str(idx), "path": path, "type": f"{prefix}.{kind}"}


def folder(
    root: Path,
    *,
    pooling: dict[str, Any] | None = None,
    dense: list[dict[str, Any]] = (),  # type: ignore[assignment]
    normalize: bool = False,
    extra_modules: list[dict] = (),  # type: ignore[assignment]
    prefix: str = "sentence_transformers.models",
) -> Path:
    """A minimal ST folder: Transformer at the root, Pooling, Dense*, Normalize."""
    modules = [module(0, "Transformer", "", prefix), module(1, "Pooling", "1_Pooling", prefix)]
    write(root / "1_Pooling" / "config.json", pooling or {"pooling_mode_mean_tokens": True})
    for i, cfg in enumerate(dense, start=2):
        modules.append(module(i, "Dense", f"{i}_Dense", prefix))
        write(root / f"{i}_Dense" / "config.json", cfg)
    if normalize:
        modules.append(module(len(modules), "Normalize", f"{len(modules)}_Normalize", prefix))
    modules.extend(extra_modules)
    write(root / "modules.json", modules)
    return root


CLASSIC_FALSE = {
    "word_embedding_dimension": 8,
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": False,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
    "pooling_mode_weightedmean_tokens": False,
    "pooling_mode_lasttoken": False,
}


def test_minimal_folder(tmp_path: Path) -> None:
    root = folder(tmp_path)
    assert is_sentence_transformers_folder(root)
    pipe = read_st_pipeline(root)
    assert pipe.transformer_path == root
    assert pipe.pooling_modes == ("mean",)
    assert pipe.include_prompt is True
    assert pipe.dense == () and pipe.normalize is False
    assert pipe.max_seq_length is None and pipe.do_lower_case is False
    assert pipe.prompts == {} and pipe.default_prompt is None


def test_not_an_st_folder(tmp_path: Path) -> None:
    assert not is_sentence_transformers_folder(tmp_path)


@pytest.mark.parametrize(
    ("enabled", "expected"),
    [
        ({"pooling_mode_cls_token"}, ("cls",)),
        ({"pooling_mode_mean_tokens"}, ("mean",)),
        ({"pooling_mode_max_tokens"}, ("max",)),
        ({"pooling_mode_mean_sqrt_len_tokens"}, ("mean_sqrt_len_tokens",)),
        ({"pooling_mode_weightedmean_tokens"}, ("weightedmean",)),
        ({"pooling_mode_lasttoken"}, ("lasttoken",)),
        # Several: sentence-transformers' fixed order cls, max, mean, sqrt, weighted, last.
        ({"pooling_mode_mean_tokens", "pooling_mode_cls_token"}, ("cls", "mean")),
        (
            {"pooling_mode_lasttoken", "pooling_mode_mean_tokens", "pooling_mode_max_tokens"},
            ("max", "mean", "lasttoken"),
        ),
        (set(), ("mean",)),  # nothing enabled: sentence-transformers falls back to mean
    ],
)
def test_classic_pooling_config(
    tmp_path: Path, enabled: set[str], expected: tuple[str, ...]
) -> None:
    cfg = {**CLASSIC_FALSE, **dict.fromkeys(enabled, True)}
    pipe = read_st_pipeline(folder(tmp_path, pooling=cfg))
    assert pipe.pooling_modes == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("cls", ("cls",)),
        ("lasttoken", ("lasttoken",)),
        (["mean"], ("mean",)),
        # The compact list keeps its own order, as sentence-transformers concatenates it.
        (["max", "cls"], ("max", "cls")),
        (
            ["weightedmean", "mean", "mean_sqrt_len_tokens"],
            ("weightedmean", "mean", "mean_sqrt_len_tokens"),
        ),
    ],
)
def test_compact_pooling_config(tmp_path: Path, mode: Any, expected: tuple[str, ...]) -> None:
    cfg = {"embedding_dimension": 8, "pooling_mode": mode, "include_prompt": True}
    pipe = read_st_pipeline(folder(tmp_path, pooling=cfg))
    assert pipe.pooling_modes == expected


def test_include_prompt_false(tmp_path: Path) -> None:
    cfg = {"embedding_dimension": 8, "pooling_mode": "mean", "include_prompt": False}
    assert read_st_pipeline(folder(tmp_path, pooling=cfg)).include_prompt is False
    classic = {**CLASSIC_FALSE, "pooling_mode_mean_tokens": True, "include_prompt": False}
    assert pooling_modes_from_config(classic) == (("mean",), False)


@pytest.mark.parametrize("mode", ["median", ["mean", "sum"]])
def test_unknown_pooling_mode(tmp_path: Path, mode: Any) -> None:
    with pytest.raises(ModelLoadError, match="unsupported pooling mode"):
        read_st_pipeline(folder(tmp_path, pooling={"pooling_mode": mode}))


def test_native_module_type_prefix(tmp_path: Path) -> None:
    # sentence-transformers 6.x writes sentence_transformers.base.modules.* types.
    root = folder(
        tmp_path,
        pooling={"embedding_dimension": 8, "pooling_mode": "cls"},
        normalize=True,
        prefix="sentence_transformers.base.modules",
    )
    pipe = read_st_pipeline(root)
    assert pipe.pooling_modes == ("cls",) and pipe.normalize is True


def test_transformer_in_a_subfolder(tmp_path: Path) -> None:
    modules = [module(0, "Transformer", "0_Transformer"), module(1, "Pooling", "1_Pooling")]
    write(tmp_path / "modules.json", modules)
    write(tmp_path / "1_Pooling" / "config.json", {"pooling_mode": "max"})
    write(tmp_path / "0_Transformer" / "sentence_bert_config.json", {"max_seq_length": 77})
    pipe = read_st_pipeline(tmp_path)
    assert pipe.transformer_path == tmp_path / "0_Transformer"
    assert pipe.max_seq_length == 77


def test_modules_are_read_in_idx_order(tmp_path: Path) -> None:
    root = folder(
        tmp_path,
        dense=[{"in_features": 8, "out_features": 4}, {"in_features": 4, "out_features": 2}],
    )
    modules = json.loads((root / "modules.json").read_text())
    write(root / "modules.json", list(reversed(modules)))
    pipe = read_st_pipeline(root)
    assert [(d.in_features, d.out_features) for d in pipe.dense] == [(8, 4), (4, 2)]


@pytest.mark.parametrize(
    "kind",
    [
        "sentence_transformers.models.Asym",
        "sentence_transformers.models.LayerNorm",
        "sentence_transformers.models.WeightedLayerPooling",
        "sentence_transformers.models.Dropout",
        "",
    ],
)
def test_unknown_module_type(tmp_path: Path, kind: str) -> None:
    extra = [{"idx": 5, "name": "5", "path": "5_X", "type": kind}]
    with pytest.raises(ModelLoadError, match="unsupported sentence-transformers module"):
        read_st_pipeline(folder(tmp_path, extra_modules=extra))


def test_missing_pooling_module(tmp_path: Path) -> None:
    write(tmp_path / "modules.json", [module(0, "Transformer", "")])
    with pytest.raises(ModelLoadError, match="no Pooling module"):
        read_st_pipeline(tmp_path)


@pytest.mark.parametrize("content", ["{not json", '{"a": 1}', "[1, 2]"])
def test_malformed_modules_json(tmp_path: Path, content: str) -> None:
    (tmp_path / "modules.json").write_text(content)
    with pytest.raises(ModelLoadError):
        read_st_pipeline(tmp_path)


def test_malformed_pooling_config(tmp_path: Path) -> None:
    root = folder(tmp_path)
    (root / "1_Pooling" / "config.json").write_text("[]")
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        read_st_pipeline(root)


# -- Dense -----------------------------------------------------------------------


def test_dense_specs(tmp_path: Path) -> None:
    dense = [
        {
            "in_features": 8,
            "out_features": 6,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        },
        {"in_features": 6, "out_features": 4},  # bias and activation left at their defaults
    ]
    pipe = read_st_pipeline(folder(tmp_path, dense=dense, normalize=True))
    first, second = pipe.dense
    assert (first.in_features, first.out_features, first.bias) == (8, 6, False)
    assert first.activation == "torch.nn.modules.linear.Identity"
    assert first.path == tmp_path / "2_Dense"
    assert (second.in_features, second.out_features, second.bias) == (6, 4, True)
    assert second.activation == TANH  # sentence-transformers' default when the key is missing
    assert pipe.normalize is True


def test_dense_with_residual_is_refused(tmp_path: Path) -> None:
    cfg = {"in_features": 8, "out_features": 8, "activation_function": TANH, "use_residual": True}
    with pytest.raises(ModelLoadError, match="residual"):
        read_st_pipeline(folder(tmp_path, dense=[cfg]))


def test_dense_on_other_features_is_refused(tmp_path: Path) -> None:
    cfg = {"in_features": 8, "out_features": 8, "module_input_name": "token_embeddings"}
    with pytest.raises(ModelLoadError, match="module_input_name"):
        read_st_pipeline(folder(tmp_path, dense=[cfg]))


def test_dense_native_config_keys_are_accepted(tmp_path: Path) -> None:
    cfg = {
        "in_features": 8,
        "out_features": 4,
        "bias": True,
        "activation_function": TANH,
        "module_input_name": "sentence_embedding",
        "module_output_name": "sentence_embedding",
    }
    (spec,) = read_st_pipeline(folder(tmp_path, dense=[cfg])).dense
    assert (spec.in_features, spec.out_features, spec.activation) == (8, 4, TANH)


def test_dense_missing_size_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        read_st_pipeline(folder(tmp_path, dense=[{"out_features": 4}]))


# -- sentence_bert_config.json and config_sentence_transformers.json ---------------


def test_max_seq_length_and_lower_case(tmp_path: Path) -> None:
    root = folder(tmp_path)
    write(root / "sentence_bert_config.json", {"max_seq_length": 256, "do_lower_case": True})
    pipe = read_st_pipeline(root)
    assert pipe.max_seq_length == 256
    assert pipe.do_lower_case is True


def test_null_max_seq_length(tmp_path: Path) -> None:
    root = folder(tmp_path)
    write(root / "sentence_bert_config.json", {"max_seq_length": None})
    assert read_st_pipeline(root).max_seq_length is None


def test_prompts_and_default_prompt(tmp_path: Path) -> None:
    root = folder(tmp_path)
    write(
        root / "config_sentence_transformers.json",
        {
            "prompts": {"query": "query: ", "document": "passage: "},
            "default_prompt_name": "query",
            "similarity_fn_name": "cosine",
        },
    )
    pipe = read_st_pipeline(root)
    assert pipe.prompts == {"query": "query: ", "document": "passage: "}
    assert pipe.default_prompt_name == "query"
    assert pipe.default_prompt == "query: "
    assert pipe.similarity_fn_name == "cosine"


def test_prompts_without_default(tmp_path: Path) -> None:
    root = folder(tmp_path)
    write(
        root / "config_sentence_transformers.json",
        {"prompts": {"query": "query: "}, "default_prompt_name": None},
    )
    pipe = read_st_pipeline(root)
    assert pipe.prompts == {"query": "query: "}
    assert pipe.default_prompt is None


def test_empty_prompts_object(tmp_path: Path) -> None:
    root = folder(tmp_path)
    write(root / "config_sentence_transformers.json", {"prompts": {}})
    assert read_st_pipeline(root).prompts == {}


def test_folder_written_by_sentence_transformers_modules(tmp_path: Path) -> None:
    """The module configs exactly as sentence-transformers' own save() writes them."""
    import torch

    from tests.unit.test_pooler import Dense, Pooling  # whichever layout ST installed has

    for sub in ("1_Pooling", "2_Dense"):
        (tmp_path / sub).mkdir()
    Pooling(8, pooling_mode=("max", "cls"), include_prompt=False).save(str(tmp_path / "1_Pooling"))
    Dense(16, 4, bias=False, activation_function=torch.nn.ReLU()).save(str(tmp_path / "2_Dense"))
    prefix = "sentence_transformers.base.modules"
    modules = [
        module(0, "Transformer", "", prefix),
        module(1, "Pooling", "1_Pooling", "sentence_transformers.sentence_transformer.modules"),
        module(2, "Dense", "2_Dense", prefix),
        module(3, "Normalize", "3_Normalize", prefix),
    ]
    write(tmp_path / "modules.json", modules)
    pipe = read_st_pipeline(tmp_path)
    assert pipe.pooling_modes == ("max", "cls")
    assert pipe.include_prompt is False
    (spec,) = pipe.dense
    assert (spec.in_features, spec.out_features, spec.bias) == (16, 4, False)
    assert spec.activation == "torch.nn.modules.activation.ReLU"
    assert pipe.normalize is True
