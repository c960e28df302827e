"""--task resolution (API.md "Task -> endpoints") and the endpoint table per model kind."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from poolserve.errors import ModelLoadError
from poolserve.models.base import CLASSIFIER, EMBEDDING, TOKENS, ModelInfo
from poolserve.models.spec import resolve_task as _resolve_task
from poolserve.models.st_config import STPipeline, read_cross_encoder_folder, st_model_type
from poolserve.serving.context import ENDPOINTS_BY_TASK, model_kind

ROOT = Path("/m")


def cfg(arch: str, model_type: str = "bert", labels: int = 1) -> SimpleNamespace:
    return SimpleNamespace(architectures=[arch], model_type=model_type, num_labels=labels)


@pytest.mark.parametrize(
    ("config", "st", "task", "head"),
    [
        (cfg("BertModel"), None, "embed", EMBEDDING),
        (cfg("BertModel"), STPipeline(ROOT), "embed", EMBEDDING),
        (cfg("BertForSequenceClassification"), None, "score", CLASSIFIER),
        (cfg("XLMRobertaForSequenceClassification", "xlm-roberta"), None, "score", CLASSIFIER),
        (cfg("DebertaV2ForSequenceClassification", "deberta-v2"), None, "score", CLASSIFIER),
        (cfg("BertForSequenceClassification", labels=2), None, "classify", CLASSIFIER),
        # A decoder with one label is a classifier (score is for encoders).
        (cfg("Qwen2ForSequenceClassification", "qwen2"), None, "classify", CLASSIFIER),
    ],
)
def test_auto(config: Any, st: STPipeline | None, task: str, head: str) -> None:
    assert _resolve_task("auto", config, st, ROOT) == (task, head)


@pytest.mark.parametrize(
    ("config", "requested", "convert", "expected"),
    [
        (cfg("LlamaForRewardModel", "llama"), "auto", "auto", ("reward", TOKENS)),
        (cfg("Qwen2ForSequenceClassification", "qwen2", 2), "reward", "auto", ("reward", TOKENS)),
        (cfg("Qwen2ForCausalLM", "qwen2"), "auto", "auto", ("embed", EMBEDDING)),
        (cfg("Qwen2ForCausalLM", "qwen2"), "auto", "embed", ("embed", EMBEDDING)),
        (cfg("Qwen2ForCausalLM", "qwen2"), "auto", "reward", ("reward", TOKENS)),
        # --convert only decides when --task is auto
        (cfg("Qwen2ForCausalLM", "qwen2"), "embed", "reward", ("embed", EMBEDDING)),
    ],
)
def test_decoders(config: Any, requested: str, convert: str, expected: tuple[str, str]) -> None:
    assert _resolve_task(requested, config, None, ROOT, convert) == expected


def test_classifier_from_token() -> None:
    """The reranker recipes make a *ForCausalLM a classifier (one label: classify + /score)."""
    config = cfg("Qwen3ForCausalLM", "qwen3")
    config.classifier_from_token = ["no", "yes"]
    assert _resolve_task("auto", config, None, ROOT) == ("classify", CLASSIFIER)
    assert _resolve_task("score", config, None, ROOT) == ("score", CLASSIFIER)


def test_explicit_tasks() -> None:
    one = cfg("BertForSequenceClassification")
    assert _resolve_task("classify", one, None, ROOT) == ("classify", CLASSIFIER)
    assert _resolve_task("score", one, None, ROOT) == ("score", CLASSIFIER)
    assert _resolve_task("embed", one, None, ROOT) == ("embed", EMBEDDING)
    # An embedding model served for score: cosine similarity.
    assert _resolve_task("score", cfg("BertModel"), None, ROOT) == ("score", EMBEDDING)


@pytest.mark.parametrize(
    ("task", "config", "match"),
    [
        ("score", cfg("BertForSequenceClassification", labels=2), "one label"),
        ("classify", cfg("BertModel"), "ForSequenceClassification"),
        ("reward", cfg("BertModel"), "reward"),
        ("classify", cfg("LlamaForCausalLM", "llama"), "classifier_from_token"),
    ],
)
def test_refused(task: str, config: Any, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        _resolve_task(task, config, None, ROOT)


def info(head: str, labels: int, task: str) -> ModelInfo:
    return ModelInfo(
        path="/m", task=task, max_model_len=8, dimension=4, head=head,
        labels=tuple(f"L{i}" for i in range(labels)),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("model", "enabled", "disabled"),
    [
        (info(EMBEDDING, 0, "embed"), {"Embeddings", "Pooling", "Score", "Rerank"},
         {"Classification"}),
        (info(EMBEDDING, 0, "score"), {"Embeddings", "Score", "Rerank"}, {"Classification"}),
        (info(CLASSIFIER, 1, "score"), {"Score", "Rerank", "Classification", "Pooling"},
         {"Embeddings"}),
        (info(CLASSIFIER, 1, "classify"), {"Score", "Rerank", "Classification", "Pooling"},
         {"Embeddings"}),
        (info(CLASSIFIER, 2, "classify"), {"Classification", "Pooling"},
         {"Score", "Rerank", "Embeddings"}),
        (info(TOKENS, 0, "reward"), {"Pooling"},
         {"Classification", "Score", "Rerank", "Embeddings"}),
    ],
)  # fmt: skip
def test_endpoint_table(model: ModelInfo, enabled: set[str], disabled: set[str]) -> None:
    apis = ENDPOINTS_BY_TASK[(model.task, model_kind(model))]
    assert enabled <= apis
    assert not disabled & apis


def _write(path: Path, modules: list[dict[str, Any]], st: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "config_sentence_transformers.json").write_text(json.dumps(st))
    return path


TRANSFORMER = {
    "idx": 0,
    "name": "0",
    "path": "",
    "type": "sentence_transformers.models.Transformer",
}


def test_cross_encoder_folder(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok", [TRANSFORMER], {"model_type": "CrossEncoder",
                                                    "activation_fn": "x"})  # fmt: skip
    assert st_model_type(path) == "CrossEncoder"
    folder = read_cross_encoder_folder(path)
    assert folder.transformer_path == path
    assert folder.config["activation_fn"] == "x"
    assert st_model_type(tmp_path) == "SentenceTransformer"


@pytest.mark.parametrize(
    ("modules", "st", "match"),
    [
        ([TRANSFORMER, {"idx": 1, "path": "1", "type": "sentence_transformers.models.Dense"}],
         {"model_type": "CrossEncoder"}, "only a single Transformer"),
        ([TRANSFORMER], {"model_type": "CrossEncoder", "default_prompt_name": "q"}, "prompt"),
    ],
)  # fmt: skip
def test_cross_encoder_folder_refused(
    tmp_path: Path, modules: list[dict[str, Any]], st: dict[str, Any], match: str
) -> None:
    with pytest.raises(ModelLoadError, match=match):
        read_cross_encoder_folder(_write(tmp_path, modules, st))


@pytest.mark.parametrize(
    ("override", "match"),
    [({"dimensions": 8}, "does not support matryoshka"), ({"bogus": 1}, "unsupported keys")],
)
def test_unsupported_override_pooler_keys_refused(override: dict[str, int], match: str) -> None:
    from poolserve.config import ModelConfig
    from poolserve.errors import ModelLoadError
    from poolserve.runtime import load_model

    with pytest.raises(ModelLoadError, match=match):
        load_model(ModelConfig(model=None, override_pooler_config=override))
