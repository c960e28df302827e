"""POST /score (/v1/score) and POST /rerank (/v1/rerank, /v2/rerank) requests."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, field_validator

from .common import ActivationSwitches, Request, TruncateTokens, TruncationSide

ScoreTexts = StrictStr | list[StrictStr]


class ScoringFields(BaseModel):
    """Newest vLLM's scoring fields, shared by /score and /rerank."""

    truncate_prompt_tokens: TruncateTokens = None
    truncation_side: TruncationSide = None
    # Each query / document cut to this many tokens (special tokens aside) before it
    # is paired; 0: not cut.
    max_tokens_per_query: StrictInt = 0
    max_tokens_per_doc: StrictInt = 0
    # For rerankers with a score chat template (none here: a 400 when sent).
    instruction: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None


class ScoreRequest(Request, ActivationSwitches, ScoringFields):
    """``text_1``/``text_2``, or the newer ``queries`` with ``documents`` or ``items``,
    or ``data_1``/``data_2``."""

    text_1: ScoreTexts | None = None
    text_2: ScoreTexts | None = None
    queries: ScoreTexts | None = None
    documents: ScoreTexts | None = None
    items: ScoreTexts | None = None
    data_1: ScoreTexts | None = None
    data_2: ScoreTexts | None = None


class RerankDocument(BaseModel):
    """A Cohere-style document object; only its ``text`` is scored."""

    model_config = ConfigDict(extra="allow")

    text: StrictStr


class RerankRequest(Request, ActivationSwitches, ScoringFields):
    """Jina / Cohere v1 / Cohere v2 rerank: a query and the documents to order."""

    query: StrictStr
    documents: list[StrictStr | RerankDocument]
    top_n: StrictInt | None = None
    return_documents: StrictBool = True

    @field_validator("documents", mode="before")
    @classmethod
    def _documents_have_text(cls, value: Any) -> Any:
        # One clear message instead of pydantic's two union-branch errors.
        if isinstance(value, list):
            for i, doc in enumerate(value):
                if isinstance(doc, str):
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("text"), str):
                    continue
                raise ValueError(
                    f"documents[{i}] must be a string or an object with a string `text`"
                )
        return value

    def texts(self) -> list[str]:
        """The documents' texts, in request order."""
        return [d if isinstance(d, str) else d.text for d in self.documents]
