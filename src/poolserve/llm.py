"""``poolserve.LLM``: vLLM's offline pooling API on poolserve's engine.

A script written for ``vllm.LLM`` runs after changing its import::

    from poolserve import LLM, PoolingParams
    llm = LLM(model="BAAI/bge-small-en-v1.5", task="embed")   # or LLM() for the default
    outs = llm.embed(["hello", {"prompt_token_ids": [101, 7592, 102]}])
    outs[0].outputs.embedding        # list[float]
    outs[0].prompt_token_ids         # list[int]

Promises:
- one output per prompt (per pair for :meth:`LLM.score`), in input order; request ids
  count up from "0" per instance, as vLLM's do;
- the same engine, tokenization, truncation, pooling and activations as the server
  (the serving functions the HTTP routes call), so results equal the server's answers;
- bad input raises ``ValueError`` (a :class:`poolserve.errors.InvalidRequest`), as vLLM's
  offline API does; nothing is silently cut: a prompt over the model's length without
  ``truncate_prompt_tokens`` is an error;
- prompts go to the engine in chunks, several in flight, so the engine packs full
  batches while a progress bar (``use_tqdm``) advances per chunk.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .errors import InvalidRequest
from .inputs.pairs import as_list, pair_up
from .models.base import TokenSeq
from .offline import PoolingModel
from .outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from .protocol.classify import ClassifyRequest
from .protocol.embeddings import EmbeddingRequest, PoolingRequest
from .protocol.score import ScoreRequest
from .serving.classify import activation_flag, class_probs
from .serving.embeddings import embed, pooled
from .serving.score import score_pairs

log = logging.getLogger("poolserve")

# Prompts per engine call, and calls in flight: enough queued work for full batches,
# while a progress bar still moves and memory stays bounded by what the caller passed.
_CHUNK = 256
_IN_FLIGHT = 8

# vLLM engine arguments that mean nothing here (GPU memory, parallelism, KV cache,
# compilation...): accepted so vLLM scripts run, and logged once as ignored.
_VLLM_ONLY = frozenset(
    {
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "gpu_memory_utilization",
        "enforce_eager",
        "seed",
        "swap_space",
        "cpu_offload_gb",
        "disable_custom_all_reduce",
        "enable_prefix_caching",
        "kv_cache_dtype",
        "block_size",
        "disable_log_stats",
        "compilation_config",
        "enable_chunked_prefill",
        "distributed_executor_backend",
        "tokenizer_mode",
        "load_format",
        "download_dir",
        "max_seq_len_to_capture",
        "worker_cls",
        "allowed_local_media_path",
        "mm_processor_kwargs",
        "limit_mm_per_prompt",
        "enable_lora",
        "max_lora_rank",
        "max_loras",
        "quantization_param_path",
        "kv_transfer_config",
        "logits_processors",
    }
)


@dataclass(frozen=True)
class PoolingParams:
    """vLLM's ``PoolingParams`` fields that apply to pooling (every name vLLM has used).

    ``None`` means the model's default. ``activation``/``use_activation`` switch the
    classifier/score activation; ``softmax`` the per-token one; ``normalize`` the
    embedding normalization; ``dimensions`` cuts a Matryoshka embedding.
    """

    dimensions: int | None = None
    normalize: bool | None = None
    activation: bool | None = None
    use_activation: bool | None = None
    softmax: bool | None = None
    truncate_prompt_tokens: int | None = None
    task: str | None = None

    def switches(self, *, dimensions: bool = False) -> dict[str, Any]:
        """The activation switches that are set (and ``dimensions`` where it applies),
        as request fields; ``dimensions`` where it does not is an error."""
        if self.dimensions is not None and not dimensions:
            raise InvalidRequest("dimensions applies to embeddings only", param="dimensions")
        out = {
            name: v
            for name in ("normalize", "activation", "use_activation", "softmax")
            if (v := getattr(self, name)) is not None
        }
        if self.dimensions is not None:
            out["dimensions"] = self.dimensions
        return out


def _params_of(value: Any) -> PoolingParams:
    """PoolingParams from ours, a dict, or any object with the same attribute names (a
    ``vllm.PoolingParams``)."""
    if value is None:
        return PoolingParams()
    if isinstance(value, PoolingParams):
        return value
    names = [f.name for f in fields(PoolingParams)]
    if isinstance(value, dict):
        unknown = set(value) - set(names)
        if unknown:
            raise InvalidRequest(f"unknown pooling params: {sorted(unknown)}")
        return PoolingParams(**value)
    return PoolingParams(**{n: getattr(value, n) for n in names if hasattr(value, n)})


@dataclass
class _Prompt:
    text: str | None = None
    ids: list[int] | None = None


def _prompts(prompts: Any) -> list[_Prompt]:
    """vLLM's prompt forms: a str, ``{"prompt": str}``, ``{"prompt_token_ids": [...]}``,
    one list of ints (one prompt of ids), or a list of any of these."""
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    elif isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int):
        prompts = [{"prompt_token_ids": list(prompts)}]
    out: list[_Prompt] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append(_Prompt(text=p))
        elif isinstance(p, dict) and "prompt_token_ids" in p:
            ids = p["prompt_token_ids"]
            if not isinstance(ids, Sequence) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in ids
            ):
                raise InvalidRequest(f"prompt {i}: prompt_token_ids must be a list of ints")
            out.append(_Prompt(ids=list(ids)))
        elif isinstance(p, dict) and isinstance(p.get("prompt"), str):
            out.append(_Prompt(text=p["prompt"]))
        else:
            raise InvalidRequest(
                f"prompt {i}: expected a str, {{'prompt': str}} or "
                f"{{'prompt_token_ids': [int, ...]}}, got {type(p).__name__}"
            )
    if not out:
        raise InvalidRequest("You must pass at least one prompt")
    return out


def _per_prompt(params: Any, n: int) -> list[PoolingParams]:
    if isinstance(params, (list, tuple)):
        if len(params) != n:
            raise InvalidRequest(
                f"pooling_params: {len(params)} given for {n} prompts (give one, or one each)"
            )
        return [_params_of(p) for p in params]
    return [_params_of(params)] * n


def _truncation(
    params: PoolingParams, truncate: int | None, tokenization_kwargs: dict[str, Any] | None
) -> int | None:
    """The truncation asked for: the argument, pooling params, or vLLM's newer
    ``tokenization_kwargs={"truncate_prompt_tokens": n}`` (or ``truncation`` + ``max_length``)."""
    kwargs = tokenization_kwargs or {}
    if truncate is None:
        truncate = params.truncate_prompt_tokens
    if truncate is None:
        truncate = kwargs.get("truncate_prompt_tokens")
    if truncate is None and kwargs.get("truncation") and kwargs.get("max_length"):
        truncate = int(kwargs["max_length"])
    return truncate


class LLM:
    """Load a pooling model once; embed, classify, score, reward or encode prompts.

    ``task`` and ``dtype`` as ``poolserve serve`` takes them; other keyword arguments
    are the server's model and engine flags by their Python names (``max_model_len``,
    ``backend``, ``max_num_batched_tokens``...). vLLM's GPU/cache/parallelism arguments
    are accepted and ignored; anything else is a ``TypeError``.
    """

    def __init__(
        self, model: str | None = None, *, task: str = "auto", dtype: str = "auto", **kwargs: Any
    ) -> None:
        ignored = sorted(k for k in kwargs if k in _VLLM_ONLY)
        if ignored:
            log.info("LLM: ignoring vLLM-only arguments %s", ignored)
        options = {k: v for k, v in kwargs.items() if k not in _VLLM_ONLY}
        for name in ("served_model_name",):
            if isinstance(options.get(name), str):
                options[name] = (options[name],)
        if "pooler_config" in options:  # vLLM >= 0.11 name of override_pooler_config
            config = options.pop("pooler_config")
            options["override_pooler_config"] = (
                config if isinstance(config, dict) or config is None else dict(vars(config))
            )
        if "runner" in options and options["runner"] not in ("auto", "pooling"):
            raise ValueError(f"runner={options['runner']!r}: poolserve runs pooling models only")
        self._model = PoolingModel(model, task=task, dtype=dtype, **options)
        self._ids = itertools.count()

    @property
    def ctx(self) -> Any:
        """The serving context (model facts, engine) the calls run on."""
        return self._model.ctx

    def get_tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer."""
        return self._model.ctx.processor.tokenizer

    # --- the vLLM methods ---------------------------------------------------------------

    def embed(
        self,
        prompts: Any,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        pooling_params: Any = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt (normalized as the model says, unless
        ``pooling_params.normalize``; cut to ``pooling_params.dimensions``)."""
        self._no_lora(lora_request)
        self.ctx.require("Embeddings")
        rows = self._pool(
            prompts, pooling_params, truncate_prompt_tokens, tokenization_kwargs, use_tqdm, "embed"
        )
        return [
            EmbeddingRequestOutput(rid, EmbeddingOutput(v.tolist()), ids) for rid, v, ids in rows
        ]

    def classify(
        self,
        prompts: Any,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        pooling_params: Any = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt (raw logits with ``activation=False``)."""
        self._no_lora(lora_request)
        self.ctx.require("Classification")
        rows = self._pool(
            prompts,
            pooling_params,
            truncate_prompt_tokens,
            tokenization_kwargs,
            use_tqdm,
            "classify",
        )
        return [
            ClassificationRequestOutput(rid, ClassificationOutput(v.tolist()), ids)
            for rid, v, ids in rows
        ]

    def reward(
        self,
        prompts: Any,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        pooling_params: Any = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[PoolingRequestOutput[PoolingOutput]]:
        """The reward model's output per prompt, as POST /pooling gives it: per-token
        rows [num_tokens, width] for a token reward model (a PRM), the class
        probabilities for a sequence classifier."""
        return self.encode(
            prompts,
            pooling_params,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
            lora_request=lora_request,
            tokenization_kwargs=tokenization_kwargs,
        )

    def encode(
        self,
        prompts: Any,
        pooling_params: Any = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        lora_request: Any = None,
        pooling_task: str | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[PoolingRequestOutput[PoolingOutput]]:
        """The pooled output per prompt as a tensor, for ``pooling_task`` ("embed",
        "classify", "token_embed", "token_classify"; default: the served task's), as
        POST /pooling computes it."""
        from .backends.torch.tensors import as_tensor

        self._no_lora(lora_request)
        self.ctx.require("Pooling")
        rows = self._pool(
            prompts,
            pooling_params,
            truncate_prompt_tokens,
            tokenization_kwargs,
            use_tqdm,
            "encode",
            pooling_task,
        )
        return [PoolingRequestOutput(rid, PoolingOutput(as_tensor(v)), ids) for rid, v, ids in rows]

    def score(
        self,
        data_1: str | Sequence[str],
        data_2: str | Sequence[str],
        /,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool | Callable[..., Any] = True,
        pooling_params: Any = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[ScoringRequestOutput]:
        """One score per pair (1:1, 1:N or N:N, as POST /score pairs them): a
        cross-encoder's (activated unless ``activation=False``), the cosine of two
        embeddings, or a late-interaction (ColBERT) model's MaxSim."""
        self._no_lora(lora_request)
        self.ctx.require("Score")
        params = _params_of(pooling_params)
        truncate = _truncation(params, truncate_prompt_tokens, tokenization_kwargs)
        firsts, seconds = pair_up(
            as_list(_texts_of(data_1)), as_list(_texts_of(data_2)), params=("data_1", "data_2")
        )
        req = ScoreRequest(truncate_prompt_tokens=truncate, **params.switches())

        async def one(lo: int, hi: int) -> list[tuple[float, np.ndarray]]:
            scored = await score_pairs(self.ctx, req, firsts[lo:hi], seconds[lo:hi])
            return list(zip(scored.scores.tolist(), scored.prompt_ids(), strict=True))

        results = self._chunked(len(firsts), one, use_tqdm)
        return [
            ScoringRequestOutput(str(next(self._ids)), ScoringOutput(s), ids.tolist())
            for s, ids in results
        ]

    # --- shared machinery -----------------------------------------------------------------

    def _pool(
        self,
        prompts: Any,
        pooling_params: Any,
        truncate: int | None,
        tokenization_kwargs: dict[str, Any] | None,
        use_tqdm: bool | Callable[..., Any],
        kind: str,
        pooling_task: str | None = None,
    ) -> list[tuple[str, np.ndarray, list[int]]]:
        """(request id, output array, prompt ids) per prompt, in order."""
        items = _prompts(prompts)
        params = _per_prompt(pooling_params, len(items))
        ctx = self.ctx
        served = ctx.served_names[0]

        async def one(lo: int, hi: int) -> list[tuple[np.ndarray, np.ndarray]]:
            # One engine call per run of prompts that share their params (usually all).
            out: list[tuple[np.ndarray, np.ndarray]] = []
            for p, group in itertools.groupby(range(lo, hi), key=lambda i: params[i]):
                idx = list(group)
                trunc = _truncation(p, truncate, tokenization_kwargs)
                side = (tokenization_kwargs or {}).get("truncation_side")
                seqs = await self._sequences([items[i] for i in idx], trunc, side)
                values: Any
                if kind == "embed":
                    req = EmbeddingRequest(input=[], **p.switches(dimensions=True))
                    values, _ = await embed(ctx, req, served, seqs=seqs)
                elif kind == "classify":
                    creq = ClassifyRequest(input=[], **p.switches())
                    on = activation_flag(creq, where="classification", default=ctx.info.activation)
                    values, _ = await class_probs(ctx, creq, on, seqs)
                else:
                    task = pooling_task or p.task
                    preq = PoolingRequest(input=[], task=task, **p.switches(dimensions=True))
                    values, _ = await pooled(ctx, preq, served, seqs)
                out.extend(zip(values, (s.token_ids for s in seqs), strict=True))
            return out

        results = self._chunked(len(items), one, use_tqdm)
        return [(str(next(self._ids)), v, ids.tolist()) for v, ids in results]

    async def _sequences(
        self, prompts: list[_Prompt], truncate: int | None, side: str | None = None
    ) -> list[TokenSeq]:
        """Tokenize text prompts (the tokenizer thread) and check id prompts, in order;
        ``side``: newest vLLM's ``tokenization_kwargs["truncation_side"]``."""
        ctx = self.ctx
        purpose = "embedding generation"
        texts = [(i, p.text) for i, p in enumerate(prompts) if p.text is not None]
        idss = [(i, p.ids) for i, p in enumerate(prompts) if p.ids is not None]
        seqs: list[TokenSeq | None] = [None] * len(prompts)
        if texts:
            done = await ctx.tokenizer.texts(
                [t for _, t in texts],
                truncate_prompt_tokens=truncate,
                purpose=purpose,
                truncation_side=side,
            )
            for (i, _), s in zip(texts, done, strict=True):
                seqs[i] = s
        if idss:
            if any(not ids for _, ids in idss):
                raise InvalidRequest("please provide at least one prompt (an empty token list)")
            done = ctx.processor.from_token_ids(
                [ids for _, ids in idss],
                truncate_prompt_tokens=truncate,
                purpose=purpose,
                truncation_side=side,
            )
            for (i, _), s in zip(idss, done, strict=True):
                seqs[i] = s
        return [s for s in seqs if s is not None]

    def _chunked(
        self,
        n: int,
        one: Callable[[int, int], Awaitable[list[Any]]],
        use_tqdm: bool | Callable[..., Any],
    ) -> list[Any]:
        """Run ``one(lo, hi)`` over chunks of ``range(n)``, a few in flight on the model's
        loop; the results concatenated in order. The first error cancels the rest."""
        bar = _progress(use_tqdm, n)

        async def run_all() -> list[Any]:
            gate = asyncio.Semaphore(_IN_FLIGHT)

            async def chunk(lo: int, hi: int) -> list[Any]:
                async with gate:
                    got = await one(lo, hi)
                if bar is not None:
                    bar.update(hi - lo)
                return got

            tasks = [
                asyncio.ensure_future(chunk(lo, min(lo + _CHUNK, n))) for lo in range(0, n, _CHUNK)
            ]
            try:
                parts = await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                raise
            return [x for part in parts for x in part]

        try:
            return self._model.call(run_all())
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _no_lora(lora_request: Any) -> None:
        if lora_request is not None:
            raise ValueError("LoRA adapters are not supported by poolserve")

    def close(self) -> None:
        """Stop the engine and its thread (also on ``with`` exit)."""
        self._model.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _texts_of(data: Any) -> Any:
    """Score inputs: str or list of str; ``{"prompt": str}`` items are read as their text."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), str):
        return data["prompt"]
    if isinstance(data, list):
        return [d["prompt"] if isinstance(d, dict) and "prompt" in d else d for d in data]
    return data


def _progress(use_tqdm: bool | Callable[..., Any], total: int) -> Any:
    if not use_tqdm:
        return None
    make = use_tqdm if callable(use_tqdm) else None
    if make is None:
        from tqdm.auto import tqdm

        make = tqdm
    return make(total=total, desc="Processed prompts", dynamic_ncols=True)
