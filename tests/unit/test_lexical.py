"""bge-m3's lexical weights: recognising the folder and shaping the weights (no model)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from poolserve.errors import ModelLoadError
from poolserve.models.base import LexicalWeights, ModelInfo, TokenSeq
from poolserve.models.bge_m3 import ARCHITECTURE, find_lexical_head, lexical_pooler
from poolserve.models.pooler_config import read_pooler_config
from poolserve.serving.lexical import pairs_of, token_rows

LEX = LexicalWeights(bos_token_id=0, eos_token_id=2, unused_token_ids=(0, 1, 2, 3))


def _col(values: list[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]


def test_token_rows_drop_bos_and_eos_only() -> None:
    seqs = [TokenSeq([0, 7, 3, 7, 2]), TokenSeq([7, 8])]
    rows = [_col([9, -1, 0.5, 2, 9]), _col([1, -2])]
    got = token_rows(rows, seqs, LEX, activate=True)
    np.testing.assert_array_equal(got[0], [0, 0.5, 2])  # UNK (3) stays, as in vLLM
    np.testing.assert_array_equal(got[1], [1, 0])
    raw = token_rows(rows, seqs, LEX, activate=False)
    np.testing.assert_array_equal(raw[0], [-1, 0.5, 2])


def test_pairs_keep_the_max_per_id_without_specials_or_zeros() -> None:
    ids = np.array([0, 7, 3, 8, 7, 9, 1, 2], dtype=np.int32)
    row = _col([5, 0.25, 4, -1, 0.75, 0, 3, 6])
    assert pairs_of(row, ids, LEX) == [{"index": 7, "value": 0.75}]


def _folder(tmp_path: Path, sparse: bool, colbert: bool = True) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if sparse:
        (tmp_path / "sparse_linear.pt").write_bytes(b"")
    if colbert:
        (tmp_path / "colbert_linear.pt").write_bytes(b"")
    return tmp_path


def test_found_from_the_files_or_the_override(tmp_path: Path) -> None:
    xlmr = SimpleNamespace(model_type="xlm-roberta", architectures=["XLMRobertaModel"])
    named = SimpleNamespace(model_type="xlm-roberta", architectures=[ARCHITECTURE])
    d = _folder(tmp_path, sparse=True)
    assert find_lexical_head([d], xlmr) == d / "sparse_linear.pt"
    assert find_lexical_head([d], named) == d / "sparse_linear.pt"
    cls = SimpleNamespace(model_type="xlm-roberta", architectures=["XLMRobertaForMaskedLM"])
    assert find_lexical_head([d], cls) is None  # files alone: a bare encoder only
    bert = SimpleNamespace(model_type="bert", architectures=["BertModel"])
    assert find_lexical_head([d], bert) is None
    with pytest.raises(ModelLoadError, match="XLM-RoBERTa"):
        find_lexical_head([d], SimpleNamespace(model_type="bert", architectures=[ARCHITECTURE]))


def test_the_override_without_the_file_is_refused(tmp_path: Path) -> None:
    named = SimpleNamespace(model_type="xlm-roberta", architectures=[ARCHITECTURE])
    with pytest.raises(ModelLoadError, match=r"sparse_linear\.pt"):
        find_lexical_head([_folder(tmp_path / "a", sparse=False)], named)
    # vLLM loads both heads and finds no weights without either file
    no_colbert = _folder(tmp_path / "b", sparse=True, colbert=False)
    with pytest.raises(ModelLoadError, match=r"colbert_linear\.pt"):
        find_lexical_head([no_colbert], named)
    xlmr = SimpleNamespace(model_type="xlm-roberta", architectures=["XLMRobertaModel"])
    assert find_lexical_head([no_colbert], xlmr) == no_colbert / "sparse_linear.pt"


def test_pooler_task_token_embed_serves_the_colbert_vectors(tmp_path: Path) -> None:
    d = _folder(tmp_path, sparse=True)
    xlmr = SimpleNamespace(model_type="xlm-roberta", architectures=["XLMRobertaModel"])
    pooler = read_pooler_config({"task": "token_embed", "normalize": False})
    assert pooler.task == "embed" and pooler.vllm_task == "token_embed"
    dense, head = lexical_pooler(pooler, [d], xlmr)
    assert dense.task == "embed" and dense.use_activation is None
    assert head is not None and head.pooling_task == "token_embed"
    assert head.use_activation is False and head.colbert_linear == d / "colbert_linear.pt"
    (d / "colbert_linear.pt").unlink()
    with pytest.raises(ModelLoadError, match=r"colbert_linear\.pt"):
        lexical_pooler(pooler, [d], xlmr)


def test_pooler_task_token_classify_is_the_lexical_default(tmp_path: Path) -> None:
    d = _folder(tmp_path, sparse=True)
    xlmr = SimpleNamespace(model_type="xlm-roberta", architectures=["XLMRobertaModel"])
    pooler = read_pooler_config({"task": "token_classify", "use_activation": False})
    dense, head = lexical_pooler(pooler, [d], xlmr)
    assert dense.task == "embed" and dense.use_activation is None
    assert head is not None and head.pooling_task == "token_classify"
    assert head.use_activation is False and head.sparse_linear == d / "sparse_linear.pt"
    plain = read_pooler_config({"use_activation": False})
    assert lexical_pooler(plain, [d], xlmr)[0] is plain
    bert = SimpleNamespace(model_type="bert", architectures=["BertModel"])
    assert lexical_pooler(pooler, [d], bert) == (pooler, None)


def test_sparse_problem_names_what_is_missing() -> None:
    info = ModelInfo(path="x", task="embed", max_model_len=8, dimension=4)
    problem = info.sparse_problem()
    assert problem is not None and "SPLADE" in problem and "sparse_linear.pt" in problem
    assert (
        ModelInfo(
            path="x", task="embed", max_model_len=8, dimension=4, lexical=LEX
        ).sparse_problem()
        is None
    )
    assert (
        ModelInfo(
            path="x", task="embed", max_model_len=8, dimension=4, head="sparse"
        ).sparse_problem()
        is None
    )
