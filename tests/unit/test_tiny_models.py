"""Checks for the offline tiny-model builders in tests/fixtures/tiny_models.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

from tests.fixtures.tiny_models import (
    ARCHS,
    TOKENIZER_KINDS,
    build_cross_encoder,
    build_encoder,
    build_st_folder,
    build_tokenizer,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Zebras eat grass; Paris is in France!"]
NO_TOKEN_TYPES = {"roberta", "xlm-roberta", "distilbert", "mpnet", "modernbert"}


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoders")
    return {arch: build_encoder(root / arch, arch) for arch in ARCHS}


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_tokenizer_kinds(tmp_path: Path, kind: str) -> None:
    tok = build_tokenizer(tmp_path, kind, max_length=96)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == 96
    assert 300 < len(loaded) < 1000
    assert loaded.get_vocab() == tok.get_vocab()
    text = "Hello, World! 123 xyzzy #tag @user"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert loaded.unk_token_id not in ids  # any ASCII text tokenizes without UNK
    single, pair = loaded("a"), loaded("a", "b")
    first = single["input_ids"][0]
    if kind in ("wordpiece", "distilbert", "deberta"):
        assert loaded.pad_token_id == 0
        assert first == loaded.cls_token_id and pair["input_ids"].count(loaded.sep_token_id) == 2
    else:  # <s> A </s></s> B </s>
        assert (first, loaded.pad_token_id, loaded.sep_token_id, loaded.unk_token_id) == (
            0,
            1,
            2,
            3,
        )
        assert pair["input_ids"].count(2) == 3
    has_types = kind in ("wordpiece", "deberta")
    assert ("token_type_ids" in pair) == has_types
    if has_types:
        assert pair["token_type_ids"][-1] == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_loads_and_runs(encoders: dict[str, Path], arch: str) -> None:
    path = encoders[arch]
    assert (path / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    cfg = model.config
    assert cfg.vocab_size == len(tok) and cfg.pad_token_id == tok.pad_token_id
    assert tok.model_max_length == 128
    if arch in ("roberta", "xlm-roberta", "mpnet"):
        assert cfg.max_position_embeddings == 130
    pair = tok(TEXTS[0], TEXTS[1], return_tensors="pt")
    assert ("token_type_ids" in pair) == (arch not in NO_TOKEN_TYPES)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    longest = tok(["word " * 400], truncation=True, return_tensors="pt")  # full 128 positions
    assert longest["input_ids"].shape[1] == 128
    with torch.no_grad():
        assert model(**pair).last_hidden_state.shape[-1] == 32
        assert torch.isfinite(model(**longest).last_hidden_state).all()
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    assert torch.cosine_similarity(mean[0], mean[1], dim=0) < 0.99  # not degenerate


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_deterministic(tmp_path: Path, arch: str) -> None:
    first = load_file(build_encoder(tmp_path / "a", arch, seed=3) / "model.safetensors")
    second = load_file(build_encoder(tmp_path / "b", arch, seed=3) / "model.safetensors")
    other = load_file(build_encoder(tmp_path / "c", arch, seed=4) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_sequence_classification_head(tmp_path: Path) -> None:
    path = build_encoder(tmp_path, "roberta", num_labels=3)
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.architectures == ["RobertaForSequenceClassification"]
    assert cfg.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


ST_CASES = {
    "bert-mean-classic": dict(arch="bert"),
    "bert-cls-compact": dict(arch="bert", pooling="cls", compact_pooling=True, normalize=False),
    "roberta-max": dict(arch="roberta", pooling="max", max_seq_length=None),
    "xlmr-sqrt": dict(arch="xlm-roberta", pooling="mean_sqrt_len_tokens"),
    "distilbert-lasttoken-dense": dict(
        arch="distilbert", pooling="lasttoken", dense=[(16, "tanh")]
    ),
    "mpnet-weightedmean-2dense": dict(
        arch="mpnet",
        pooling="weightedmean",
        dense=[(24, "identity"), (8, "torch.nn.modules.activation.ReLU")],
    ),
    "deberta-multi": dict(
        arch="deberta-v2",
        pooling={"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
    ),
    "modernbert-prompts-native": dict(
        arch="modernbert",
        pooling={"pooling_mode": "mean", "include_prompt": False},
        prompts={"query": "query: ", "passage": "passage: "},
        default_prompt_name="query",
        native_format=True,
    ),
}


def _expected_dim(case: dict) -> int:
    if case.get("dense"):
        return case["dense"][-1][0]
    pooling = case.get("pooling")
    return 64 if isinstance(pooling, dict) and pooling.get("pooling_mode_max_tokens") else 32


@pytest.mark.parametrize("name", ST_CASES)
def test_st_folder_loads_and_encodes(tmp_path: Path, name: str) -> None:
    from sentence_transformers import SentenceTransformer

    case = ST_CASES[name]
    path = build_st_folder(tmp_path, **case)
    model = SentenceTransformer(str(path), device="cpu")
    emb = model.encode(TEXTS, convert_to_tensor=True)
    assert emb.shape == (2, _expected_dim(case))
    norms = emb.norm(dim=-1)
    assert torch.allclose(norms, torch.ones(2), atol=1e-5) == case.get("normalize", True)
    assert torch.cosine_similarity(emb[0], emb[1], dim=0) < 0.99
    assert model.max_seq_length == (case.get("max_seq_length", 64) or 128)  # None: tokenizer's

    modules = _read(path / "modules.json")
    assert modules[0]["path"] == "" and modules[1]["path"] == "1_Pooling"
    pool_cfg = _read(path / "1_Pooling" / "config.json")
    if case.get("compact_pooling"):
        assert pool_cfg == {
            "embedding_dimension": 32,
            "pooling_mode": "cls",
            "include_prompt": True,
        }
    elif case.get("native_format"):  # exactly what sentence-transformers 6.x writes
        assert pool_cfg == {
            "embedding_dimension": 32,
            "pooling_mode": "mean",
            "include_prompt": False,
        }
    else:
        assert pool_cfg["word_embedding_dimension"] == 32
        assert sum(v for k, v in pool_cfg.items() if k.startswith("pooling_mode_")) >= 1
    if case.get("native_format"):
        assert modules[0]["type"] == "sentence_transformers.base.modules.transformer.Transformer"
        assert model.default_prompt_name == "query"
        query = model.encode(TEXTS[:1], convert_to_tensor=True)
        plain = model.encode(TEXTS[:1], prompt="", convert_to_tensor=True)
        assert not torch.allclose(query, plain)
        return
    assert [m["type"].rsplit(".", 1)[0] for m in modules] == ["sentence_transformers.models"] * len(
        modules
    )
    assert _read(path / "sentence_bert_config.json") == {
        "max_seq_length": case.get("max_seq_length", 64),
        "do_lower_case": False,
    }
    assert _read(path / "tokenizer_config.json")["model_max_length"] == 128
    for i, (out_features, _) in enumerate(case.get("dense") or [], start=2):
        dense_cfg = _read(path / f"{i}_Dense" / "config.json")
        assert set(dense_cfg) == {"in_features", "out_features", "bias", "activation_function"}
        assert dense_cfg["out_features"] == out_features
        weights = load_file(path / f"{i}_Dense" / "model.safetensors")
        assert set(weights) == {"linear.weight", "linear.bias"}
    if case.get("normalize", True):
        assert not any((path / modules[-1]["path"]).iterdir())  # classic Normalize: empty dir


def test_st_mean_pooling_matches_manual(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    path = build_st_folder(tmp_path, "bert", pooling="mean", normalize=True)
    emb = SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_tensor=True)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    manual = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(emb, manual, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "num_labels", "activation_fn"),
    [
        ("bert", 1, None),
        ("roberta", 1, "identity"),
        ("deberta-v2", 3, None),
        ("modernbert", 2, "tanh"),
    ],
)
def test_cross_encoder(
    tmp_path: Path, arch: str, num_labels: int, activation_fn: str | None
) -> None:
    from sentence_transformers import CrossEncoder

    path = build_cross_encoder(tmp_path, arch, num_labels=num_labels, activation_fn=activation_fn)
    config = _read(path / "config.json")
    assert config["architectures"][0].endswith("ForSequenceClassification")
    if activation_fn is None:
        assert "sentence_transformers" not in config
    else:
        assert config["sentence_transformers"]["activation_fn"].startswith("torch.nn.modules.")
    model = CrossEncoder(str(path), device="cpu")
    scores = model.predict([(TEXTS[0], TEXTS[1]), (TEXTS[1], "a dog")], convert_to_tensor=True)
    assert scores.shape == ((2,) if num_labels == 1 else (2, num_labels))
    assert not torch.allclose(scores[0], scores[1])
    if num_labels == 1 and activation_fn is None:  # default Sigmoid
        assert ((scores > 0) & (scores < 1)).all()
    if activation_fn == "identity":
        assert isinstance(model.activation_fn, torch.nn.Identity)
    if activation_fn == "tanh":
        assert isinstance(model.activation_fn, torch.nn.Tanh)
