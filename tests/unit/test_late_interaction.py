"""ColBERT input building, MaxSim and layout reading (models/late_interaction.py,
models/colbert.py), without a model."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest

from poolserve.engine.channel import read_submit, submit_frame
from poolserve.errors import InvalidRequest, ModelLoadError
from poolserve.models.base import TokenSeq
from poolserve.models.colbert import COLBERT_IR, PYLATE, ColbertRules, read_colbert_layout
from poolserve.models.late_interaction import (
    QUERY,
    document_sequence,
    maxsim,
    query_sequence,
    scoring_rows,
)

CLS, SEP, MASK, Q, D, DOT = 101, 102, 103, 1, 2, 1012
RULES = ColbertRules(
    query_marker_id=Q,
    doc_marker_id=D,
    query_length=8,
    doc_length=6,
    expansion_id=MASK,
    attend_expansion=False,
    skip_ids=(DOT,),
    end_id=SEP,
)


def _ids(seq: TokenSeq) -> list[int]:
    return seq.token_ids.tolist()


def test_a_query_gets_its_marker_and_mask_augmentation() -> None:
    q = query_sequence(TokenSeq([CLS, 7, 8, SEP]), RULES)
    assert _ids(q) == [CLS, Q, 7, 8, SEP, MASK, MASK, MASK]
    assert q.per_token == QUERY and q.token_type_ids is None
    too_long = TokenSeq([CLS, *range(10, 20), SEP], [0] * 12)
    with pytest.raises(InvalidRequest, match="query length, 8"):
        query_sequence(too_long, RULES)  # nothing is cut unless asked
    long = query_sequence(too_long, RULES, cut=True)
    assert _ids(long) == [CLS, Q, 10, 11, 12, 13, 14, SEP]  # held to 8, [SEP] kept
    assert long.token_type_ids is not None and long.token_type_ids.tolist() == [0] * 8
    plain = query_sequence(
        TokenSeq([CLS, 7, SEP]), RULES.__class__(**{**RULES.__dict__, "expansion_id": None})
    )
    assert _ids(plain) == [CLS, Q, 7, SEP]


def test_a_document_gets_its_marker_and_length() -> None:
    d = document_sequence(TokenSeq([CLS, 7, DOT, SEP]), RULES)
    assert _ids(d) == [CLS, D, 7, DOT, SEP] and d.per_token == "hidden"
    # no [SEP] at the end (token ids sent without special tokens): a plain cut
    assert _ids(document_sequence(TokenSeq([CLS, *range(10, 20)]), RULES, cut=True)) == [
        CLS,
        D,
        10,
        11,
        12,
        13,
    ]


def test_maxsim_skips_document_punctuation() -> None:
    rows = np.eye(3, dtype=np.float32)
    doc = TokenSeq([CLS, DOT, SEP])
    kept = scoring_rows(rows, doc, RULES)
    assert kept.tolist() == [[1, 0, 0], [0, 0, 1]]
    query = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32)
    assert maxsim(query, rows) == pytest.approx(2.0)
    assert maxsim(query, kept) == pytest.approx(1.0)
    assert maxsim(query, kept[:0]) == 0.0


def test_a_query_crosses_the_engine_channel() -> None:
    seqs = [
        query_sequence(TokenSeq([CLS, 7, SEP]), RULES),
        TokenSeq([CLS, SEP], per_token="hidden"),
    ]
    body = b"".join(bytes(p) for p in submit_frame(1, seqs)[1:])  # the parts after the head
    back = read_submit(body)
    assert [s.per_token for s in back] == [QUERY, "hidden"]
    assert [_ids(s) for s in back] == [_ids(s) for s in seqs]


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_layouts_are_read_with_their_defaults(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    ir = tmp_path / "ir"
    _write(ir / "config.json", {"architectures": ["HF_ColBERT"], "model_type": "bert"})
    save_file({"linear.weight": np.zeros((4, 8), np.float32)}, str(ir / "model.safetensors"))
    layout = read_colbert_layout(ir)
    assert layout is not None and layout.kind == COLBERT_IR
    assert (layout.query_marker, layout.doc_marker) == ("[unused0]", "[unused1]")
    assert (layout.query_length, layout.doc_length, layout.query_expansion) == (32, 220, True)
    assert layout.skiplist == tuple(string.punctuation) and not layout.attend_expansion
    assert (layout.projection.in_features, layout.projection.out_features) == (8, 4)
    _write(ir / "artifact.metadata", {"dim": 5})
    with pytest.raises(ModelLoadError, match="dim 5"):
        read_colbert_layout(ir)

    pl = tmp_path / "pylate"
    _write(pl / "modules.json", [
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ])  # fmt: skip
    _write(pl / "1_Dense" / "config.json", {"in_features": 8, "out_features": 4, "bias": False})
    _write(
        pl / "config_sentence_transformers.json",
        {"do_query_expansion": False, "skiplist_words": []},
    )
    layout = read_colbert_layout(pl)
    assert layout is not None and layout.kind == PYLATE
    assert (layout.query_marker, layout.doc_marker, layout.query_expansion) == (None, None, False)
    assert (layout.query_length, layout.doc_length, layout.skiplist) == (32, 180, ())
    _write(pl / "modules.json", [
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ])  # fmt: skip
    with pytest.raises(ModelLoadError, match="Transformer \\+ Dense"):
        read_colbert_layout(pl)
    assert read_colbert_layout(tmp_path) is None
