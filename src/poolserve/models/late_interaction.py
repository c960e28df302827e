"""Late interaction (ColBERT) in numpy: query and document sequences, and MaxSim.

Promises:
- :func:`query_sequence` / :func:`document_sequence` insert the layout's marker after
  the first token ([CLS]) and hold the sequence to the layout's length -- only when
  ``cut`` (the request asked for truncation, or the server runs --auto-truncate), else a
  longer input is a 400 naming the length: nothing is cut silently -- keeping its
  last token when that is the end token ([SEP]) as a tokenizer's truncation does; a
  query is then padded with the expansion token ([MASK]) up to the query length when
  the layout augments queries. A query's ``per_token`` is ``"query"`` (the backend does
  not attend to its trailing expansion run unless the layout says so), a document's
  ``"hidden"``: both give one row per token;
- :func:`scoring_rows` drops a document's skiplist tokens (punctuation) from MaxSim;
  a query keeps every row, its expansion rows included;
- :func:`maxsim` is the sum over query rows of the largest dot product with any
  document row (rows already L2-normalized: cosine similarities).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequest
from .base import TokenSeq
from .colbert import ColbertRules

QUERY = "query"  # TokenSeq.per_token of a ColBERT query (backends/torch/colbert.py)


def _marked(
    seq: TokenSeq, marker: int | None, limit: int, end_id: int | None, cut: bool, what: str
) -> np.ndarray:
    ids = seq.token_ids
    if marker is not None and len(ids):
        ids = np.concatenate((ids[:1], np.array([marker], dtype=np.int32), ids[1:]))
    if len(ids) > limit and not cut:
        raise InvalidRequest(
            f"a {what} of {len(ids)} tokens (its marker included) is longer than this "
            f"late-interaction model's {what} length, {limit}; its layout cuts {what}s "
            "there: send `truncate_prompt_tokens` (or start the server with "
            "--auto-truncate) to accept the cut",
            param="input",
        )
    if len(ids) > limit:
        keep_end = end_id is not None and int(ids[-1]) == end_id
        ids = np.concatenate((ids[: limit - 1], ids[-1:])) if keep_end else ids[:limit]
    return ids


def query_sequence(seq: TokenSeq, rules: ColbertRules, *, cut: bool = False) -> TokenSeq:
    """``seq`` (tokenized as usual) as the model's query: marker, length, augmentation."""
    ids = _marked(seq, rules.query_marker_id, rules.query_length, rules.end_id, cut, "query")
    if rules.expansion_id is not None and len(ids) < rules.query_length:
        pad = np.full(rules.query_length - len(ids), rules.expansion_id, dtype=np.int32)
        ids = np.concatenate((ids, pad))
    # token type 0 throughout: a single segment, as the layouts tokenize it.
    types = np.zeros(len(ids), np.int32) if seq.token_type_ids is not None else None
    return TokenSeq(ids, types, 0, QUERY)


def document_sequence(seq: TokenSeq, rules: ColbertRules, *, cut: bool = False) -> TokenSeq:
    """``seq`` (tokenized as usual) as the model's document: marker and length."""
    ids = _marked(seq, rules.doc_marker_id, rules.doc_length, rules.end_id, cut, "document")
    types = np.zeros(len(ids), np.int32) if seq.token_type_ids is not None else None
    return TokenSeq(ids, types, 0, "hidden")


def scoring_rows(rows: np.ndarray, seq: TokenSeq, rules: ColbertRules) -> np.ndarray:
    """A document's rows that take part in MaxSim: all but its skiplist tokens."""
    if not rules.skip_ids:
        return rows
    return rows[~np.isin(seq.token_ids, rules.skip_ids)]


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """MaxSim of ``query`` [q, d] against ``document`` [n, d] (0.0 for no document rows)."""
    if not len(document) or not len(query):
        return 0.0
    sims = query.astype(np.float32, copy=False) @ document.astype(np.float32, copy=False).T
    return float(sims.max(axis=1).sum(dtype=np.float64))
