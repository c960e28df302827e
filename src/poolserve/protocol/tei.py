"""Request bodies of Hugging Face text-embeddings-inference (TEI) routes.

Field names, types and defaults follow TEI's router (``router/src/http/types.rs``;
docs/tei.md lists them). As TEI's serde structs do, unknown fields are ignored
(huggingface_hub sends a ``parameters`` object TEI never reads).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

# TEI's TruncationDirection accepts both spellings of each side.
Direction = Literal["Left", "left", "Right", "right"]
Side = Literal["left", "right"]
# TEI's token ids are u32.
TokenId = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]
TokenIdList = list[TokenId]
# TEI's `Input`: one text or one list of ids, or a batch mixing both.
EmbedInputs = StrictStr | TokenIdList | list[StrictStr | TokenIdList]


class TeiRequest(BaseModel):
    """Base of the TEI bodies: unknown fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class Truncation(BaseModel):
    """``truncate`` (null: the server's --auto-truncate) and the side to cut."""

    truncate: StrictBool | None = None
    truncation_direction: Direction = "Right"

    def side(self) -> Side:
        """``"left"`` or ``"right"``: the side whose tokens are dropped."""
        return "left" if self.truncation_direction in ("Left", "left") else "right"


class TeiEmbedRequest(TeiRequest, Truncation):
    """POST /embed: pooled embeddings, one row per input."""

    inputs: EmbedInputs
    prompt_name: StrictStr | None = None
    normalize: StrictBool = True
    dimensions: Annotated[StrictInt, Field(ge=0)] | None = None


class TeiEmbedAllRequest(TeiRequest, Truncation):
    """POST /embed_all: every token's last hidden state, one [tokens][dim] per input."""

    inputs: EmbedInputs
    prompt_name: StrictStr | None = None


class TeiPredictRequest(TeiRequest, Truncation):
    """POST /predict: one text, one [text, text_pair], or a batch of [text] / [a, b].

    TEI's rule: a string, or a list whose first item is a string, is ONE input (a list
    of one string is that string, of two a pair); a list of lists is a batch whose
    items hold one or two strings.
    """

    inputs: StrictStr | list[StrictStr] | list[list[StrictStr]]
    raw_scores: StrictBool = False

    @field_validator("inputs")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("expected a string, a pair of strings or a batch; got []")
        if isinstance(value[0], str):
            if len(value) > 2:
                raise ValueError(f"a single input holds 1 or 2 strings, got {len(value)}")
            return value
        for i, item in enumerate(value):
            if not 1 <= len(item) <= 2:
                raise ValueError(f"batch item {i} must hold 1 or 2 strings, got {len(item)}")
        return value

    def sequences(self) -> tuple[bool, list[tuple[str, str | None]]]:
        """(is a batch, the inputs as (text, text_pair or None) in order)."""
        value = self.inputs
        if isinstance(value, str):
            return False, [(value, None)]
        if value and isinstance(value[0], str):
            single: list[str] = value
            return False, [(single[0], single[1] if len(single) == 2 else None)]
        batch: list[list[str]] = value  # type: ignore[assignment]
        return True, [(item[0], item[1] if len(item) == 2 else None) for item in batch]


class TeiRerankRequest(TeiRequest, Truncation):
    """TEI's POST /rerank: ``texts`` ordered by relevance to ``query``."""

    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False


class TeiSimilarityInput(BaseModel):
    """The sentence-similarity pair: one source against several sentences."""

    source_sentence: StrictStr
    sentences: list[StrictStr]


class TeiSimilarityParameters(BaseModel):
    """Options of POST /similarity, nested under ``parameters`` as TEI has them."""

    truncate: StrictBool | None = None
    truncation_direction: Direction = "Right"
    prompt_name: StrictStr | None = None

    def side(self) -> Side:
        """``"left"`` or ``"right"``: the side whose tokens are dropped."""
        return "left" if self.truncation_direction in ("Left", "left") else "right"


class TeiSimilarityRequest(TeiRequest):
    """POST /similarity: cosine of ``source_sentence`` with each of ``sentences``."""

    inputs: TeiSimilarityInput
    parameters: TeiSimilarityParameters | None = None


class TeiTokenizeRequest(TeiRequest):
    """TEI's POST /tokenize: token objects with character spans, per input."""

    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = None


class TeiDecodeRequest(TeiRequest):
    """POST /decode: one list of ids, or a batch of them, back to text."""

    ids: TokenIdList | list[TokenIdList]
    skip_special_tokens: StrictBool = True

    def batch(self) -> tuple[bool, list[list[int]]]:
        """(is a batch, the id lists). ``[]`` is one empty list, as TEI reads it."""
        ids = self.ids
        if ids and isinstance(ids[0], list):
            return True, [list(x) for x in ids]
        return False, [list(ids)]  # type: ignore[arg-type]
