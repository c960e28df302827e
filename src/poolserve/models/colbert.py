"""ColBERT (late-interaction) checkpoints: what their folders say, with no torch.

A ColBERT model is an encoder whose every token's hidden state goes through a linear
projection and is L2-normalized; a query and a document are compared by MaxSim
(models/late_interaction.py). Two folder layouts are read (docs/colbert.md has the
facts and where they come from):

- **colbert-ir** (Stanford ``colbert-ai``, e.g. ``colbert-ir/colbertv2.0``): config.json
  names the architecture ``HF_ColBERT``; the weights file holds the BERT encoder under
  ``bert.`` and the projection as a bias-free ``linear.weight``; ``artifact.metadata``
  (JSON) gives the markers (``query_token_id`` / ``doc_token_id``, token strings,
  default ``[unused0]`` / ``[unused1]``), ``query_maxlen`` / ``doc_maxlen``,
  ``attend_to_mask_tokens`` and ``mask_punctuation``. Queries are always padded with
  [MASK] to ``query_maxlen`` in that code base.
- **PyLate** (a sentence-transformers folder): modules.json lists a Transformer then a
  ``pylate.models.Dense.Dense`` projection; config_sentence_transformers.json gives
  ``query_prefix`` / ``document_prefix`` (tokens inserted after the first token),
  ``query_length`` / ``document_length``, ``do_query_expansion``,
  ``attend_to_expansion_tokens`` and ``skiplist_words``.

:func:`read_colbert_layout` says which (or None); :func:`resolve_rules` turns a layout
into token ids with the model's tokenizer.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .st_config import DenseSpec, _read_json, _read_modules

COLBERT_IR = "colbert-ir"
PYLATE = "pylate"
# The projection's module type in a PyLate modules.json (vLLM lists the same name
# among the sentence-transformers Dense types it loads).
_PYLATE_DENSE = "pylate.models.Dense.Dense"
_IDENTITY = "torch.nn.modules.linear.Identity"
_DEFAULT_QUERY_LENGTH = 32  # colbert-ai's and PyLate's default query_maxlen
_COLBERT_AI_DOC_LENGTH = 220  # colbert-ai's DocSettings default doc_maxlen
_PYLATE_DOC_LENGTH = 180  # PyLate's default document_length


@dataclass(frozen=True)
class ColbertLayout:
    """A ColBERT folder's facts, before the tokenizer is read.

    ``projection.path`` is the folder holding the projection weights: the model folder
    itself (colbert-ir: ``linear.weight`` beside the encoder) or PyLate's Dense folder.
    Markers are token strings (None: the layout inserts none).
    """

    kind: str  # COLBERT_IR | PYLATE
    transformer_path: Path
    projection: DenseSpec
    query_marker: str | None
    doc_marker: str | None
    query_length: int
    doc_length: int
    query_expansion: bool  # pad queries with [MASK] up to query_length
    attend_expansion: bool  # the encoder attends to those [MASK] tokens
    skiplist: tuple[str, ...]  # document tokens MaxSim leaves out (punctuation)


@dataclass(frozen=True)
class ColbertRules:
    """A ColBERT layout in token ids: what input building and MaxSim need.

    Promises: a marker id is inserted after a sequence's first token; ``expansion_id``
    (None: no query augmentation) pads queries to ``query_length``; ``skip_ids`` are
    the document token ids MaxSim ignores.
    """

    query_marker_id: int | None
    doc_marker_id: int | None
    query_length: int
    doc_length: int
    expansion_id: int | None
    attend_expansion: bool
    skip_ids: tuple[int, ...] = ()
    end_id: int | None = None  # the tokenizer's end token ([SEP]), kept when truncating


def _architectures(root: Path) -> list[str]:
    path = root / "config.json"
    if not path.is_file():
        return []
    try:
        return [
            str(a) for a in json.loads(path.read_text(encoding="utf-8")).get("architectures") or []
        ]
    except (OSError, ValueError, AttributeError):
        return []


def read_colbert_layout(root: Path) -> ColbertLayout | None:
    """The ColBERT layout of ``root``, or None when it is not a ColBERT folder.

    Raises ModelLoadError for a ColBERT folder poolserve cannot serve as written."""
    if "HF_ColBERT" in _architectures(root):
        return _read_colbert_ir(root)
    if (root / "modules.json").is_file():
        modules = _read_modules(root)
        if any(m.get("type") == _PYLATE_DENSE for m in modules):
            return _read_pylate(root, modules)
    return None


def _read_colbert_ir(root: Path) -> ColbertLayout:
    meta_path = root / "artifact.metadata"
    # colbert-ai's own defaults stand in for a missing file or key.
    meta: dict[str, Any] = _read_json(meta_path) if meta_path.is_file() else {}
    weight = _colbert_ir_weight_shape(root)
    dim = int(meta.get("dim") or weight[0])
    if dim != weight[0]:
        raise ModelLoadError(f"{meta_path}: dim {dim} but linear.weight is {list(weight)}")
    projection = DenseSpec(root, weight[1], dim, bias=False, activation=_IDENTITY)
    return ColbertLayout(
        kind=COLBERT_IR,
        transformer_path=root,
        projection=projection,
        query_marker=str(meta.get("query_token_id") or "[unused0]"),
        doc_marker=str(meta.get("doc_token_id") or "[unused1]"),
        query_length=int(meta.get("query_maxlen") or _DEFAULT_QUERY_LENGTH),
        doc_length=int(meta.get("doc_maxlen") or _COLBERT_AI_DOC_LENGTH),
        # colbert-ai replaces every pad of a query by [MASK]: augmentation is not optional.
        query_expansion=True,
        attend_expansion=bool(meta.get("attend_to_mask_tokens", False)),
        skiplist=tuple(string.punctuation) if meta.get("mask_punctuation", True) else (),
    )


def _colbert_ir_weight_shape(root: Path) -> tuple[int, int]:
    """``linear.weight``'s [dim, hidden] from the folder's weights (header only for
    safetensors)."""
    st_file = root / "model.safetensors"
    if st_file.is_file():
        from safetensors import safe_open

        with safe_open(str(st_file), framework="numpy") as f:
            if "linear.weight" in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                shape = f.get_slice("linear.weight").get_shape()
                return int(shape[0]), int(shape[1])
        raise ModelLoadError(f"{st_file} has no linear.weight (the ColBERT projection)")
    if (root / "pytorch_model.bin").is_file():
        # A pickled checkpoint: its shape is only known once loaded (the torch backend
        # checks it); the config's hidden size and metadata's dim stand in here.
        config = _read_json(root / "config.json")
        meta_path = root / "artifact.metadata"
        meta = _read_json(meta_path) if meta_path.is_file() else {}
        return int(meta.get("dim") or 128), int(config.get("hidden_size") or 768)
    raise ModelLoadError(f"{root}: no model.safetensors or pytorch_model.bin")


def _read_pylate(root: Path, modules: list[dict[str, Any]]) -> ColbertLayout:
    kinds = [str(m.get("type", "")) for m in sorted(modules, key=lambda m: m.get("idx", 0))]
    if len(kinds) != 2 or not kinds[0].endswith(".Transformer") or kinds[1] != _PYLATE_DENSE:
        raise ModelLoadError(
            f"{root / 'modules.json'}: a PyLate ColBERT folder is served as Transformer + "
            f"Dense; this one has {kinds}"
        )
    ordered = sorted(modules, key=lambda m: m.get("idx", 0))
    dense_dir = root / str(ordered[1].get("path") or "")
    dense = _read_json(dense_dir / "config.json")
    try:
        projection = DenseSpec(
            dense_dir,
            int(dense["in_features"]),
            int(dense["out_features"]),
            bias=bool(dense.get("bias", True)),
            activation=str(dense.get("activation_function") or _IDENTITY),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{dense_dir / 'config.json'} is not a Dense config: {exc!r}") from exc
    cfg_path = root / "config_sentence_transformers.json"
    cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
    skiplist = cfg.get("skiplist_words")
    return ColbertLayout(
        kind=PYLATE,
        transformer_path=root / str(ordered[0].get("path") or ""),
        projection=projection,
        query_marker=str(cfg["query_prefix"]) if cfg.get("query_prefix") else None,
        doc_marker=str(cfg["document_prefix"]) if cfg.get("document_prefix") else None,
        query_length=int(cfg.get("query_length") or _DEFAULT_QUERY_LENGTH),
        doc_length=int(cfg.get("document_length") or _PYLATE_DOC_LENGTH),
        query_expansion=bool(cfg.get("do_query_expansion", True)),
        attend_expansion=bool(cfg.get("attend_to_expansion_tokens", False)),
        # PyLate skips punctuation in documents unless the folder lists other words.
        skiplist=tuple(str(w) for w in skiplist)
        if skiplist is not None
        else tuple(string.punctuation),
    )


def _token_id(tokenizer: Any, token: str, what: str, root: Path) -> int:
    """The id of ``token`` (PyLate saves a prefix with its trailing space, "[Q] ", as one
    added token; a stripped spelling is tried next)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for spelling in dict.fromkeys((token, token.strip())):
        got = tokenizer.convert_tokens_to_ids(spelling)
        if isinstance(got, int) and got != unk:
            return got
    raise ModelLoadError(f"{root}: the {what} {token!r} is not a token of the model's tokenizer")


def resolve_rules(
    layout: ColbertLayout, tokenizer: Any, max_model_len: int, root: Path
) -> ColbertRules:
    """``layout`` in token ids of ``tokenizer``; lengths held to the model's window.

    Skiplist words that are not one token are dropped (they could never match a single
    token id; an unknown word would otherwise skip every [UNK])."""
    expansion_id = None
    if layout.query_expansion:
        expansion_id = getattr(tokenizer, "mask_token_id", None)
        if expansion_id is None:
            raise ModelLoadError(f"{root}: query augmentation needs a [MASK] token; none found")
    unk = getattr(tokenizer, "unk_token_id", None)
    skip: list[int] = []
    for word in layout.skiplist:
        got = tokenizer.convert_tokens_to_ids(word)
        if isinstance(got, int) and got != unk:
            skip.append(got)
    return ColbertRules(
        query_marker_id=_token_id(tokenizer, layout.query_marker, "query marker", root)
        if layout.query_marker
        else None,
        doc_marker_id=_token_id(tokenizer, layout.doc_marker, "document marker", root)
        if layout.doc_marker
        else None,
        query_length=min(layout.query_length, max_model_len),
        doc_length=min(layout.doc_length, max_model_len),
        expansion_id=expansion_id,
        attend_expansion=layout.attend_expansion,
        skip_ids=tuple(sorted(set(skip))),
        end_id=getattr(tokenizer, "sep_token_id", None),
    )
