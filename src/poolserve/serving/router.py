"""Several served models in one server: which one answers a request.

Each model keeps its own :class:`ServingContext` -- engine (queue, limits, worker
threads), input processor, tokenizer thread and metrics label -- so one model's
overload, failure or slow batch touches no other model's requests. This module only
chooses the context; everything after that is the one-model path unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..errors import ModelNotFound, PoolserveError
from .context import ServingContext


class ServedModels:
    """The server's models, in the order they were given.

    Promises: every served name belongs to exactly one model (a repeated name is a
    PoolserveError at construction); :meth:`pick` never returns None.
    """

    def __init__(self, contexts: Sequence[ServingContext]) -> None:
        if not contexts:
            raise PoolserveError("no model to serve")
        self.contexts = tuple(contexts)
        self._by_name: dict[str, ServingContext] = {}
        for ctx in self.contexts:
            for name in ctx.served_names:
                if name in self._by_name:
                    raise PoolserveError(
                        f"served model name `{name}` is given to two models; each name "
                        "must name one model"
                    )
                self._by_name[name] = ctx

    def __iter__(self) -> Iterator[ServingContext]:
        return iter(self.contexts)

    def __len__(self) -> int:
        return len(self.contexts)

    @property
    def first(self) -> ServingContext:
        """The first model given: the one answering requests no other rule routes."""
        return self.contexts[0]

    def pick(self, requested: str | None, api: str | None = None) -> ServingContext:
        """The model answering a request for ``api`` (vLLM's API name, e.g. "Score")
        that names ``requested``.

        A named model must be served (404 ModelNotFound, as one model's server
        answers); an unnamed request goes to the first model whose task enables
        ``api``, else to the first model, whose own checks then refuse it (400).
        """
        if requested:
            ctx = self._by_name.get(requested)
            if ctx is None:
                raise ModelNotFound(f"The model `{requested}` does not exist.", param="model")
            return ctx
        if api is not None:
            for ctx in self.contexts:
                if ctx.enables(api):
                    return ctx
        return self.first

    @property
    def alive(self) -> bool:
        """Every model's engine is running (the server is healthy only then)."""
        return all(ctx.engine.alive for ctx in self.contexts)
