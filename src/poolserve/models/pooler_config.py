"""``--pooler-config`` (alias ``--override-pooler-config``): vLLM's PoolerConfig keys.

Every key newest vLLM's ``PoolerConfig`` accepts (vllm/config/pooler.py, 0.33) is read
here into one :class:`PoolerSettings`; :func:`poolserve.models.spec.describe` applies
each one or refuses it with a message naming it. Older vLLM's names stay accepted
(``normalize``, ``softmax``, ``activation`` as the activation switch; ``MAX`` pooling,
a sentence-transformers mode) so launch lines written for 0.9-0.11 keep working.
docs/API.md "--pooler-config" lists what each key does here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig
from ..errors import ModelLoadError
from .base import CLASSIFIER, EMBEDDING, ModelInfo

SEQ_POOLING = {"CLS": "cls", "MEAN": "mean", "LAST": "lasttoken", "MAX": "max"}
TOK_POOLING = ("ALL", "STEP")
# PoolerConfig.task -> poolserve's --task (token_embed is served by an embedding model
# through /pooling task "token_embed").
TASKS = {"embed": "embed", "classify": "classify", "token_classify": "reward"}
_TASK_SERVED_AS_EMBED = ("token_embed",)
_REMOVED_TASKS = {
    "score": "`score` task was removed; use `classify` instead.",
    "encode": "`encode` task was removed; use `token_embed` or `token_classify` instead.",
}
_SWITCH_NAMES = ("use_activation", "normalize", "softmax", "activation")
KEYS = (
    "task",
    "pooling_type",
    "seq_pooling_type",
    "tok_pooling_type",
    *_SWITCH_NAMES,
    "dimensions",
    "enable_chunked_processing",
    "max_embed_len",
    "logit_mean",
    "logit_sigma",
    "step_tag_id",
    "returned_token_ids",
    "enable_flash_late_interaction",
)


@dataclass(frozen=True)
class PoolerSettings:
    """--pooler-config, checked. None means "the model's own default"."""

    task: str | None = None  # poolserve's task name (TASKS values)
    # vLLM's name as given: "token_embed" reads as task "embed", and bge-m3 tells them
    # apart (models/bge_m3.py: its colbert vectors become the served task)
    vllm_task: str | None = None
    seq_pooling: str | None = None  # a sentence-transformers mode: cls, mean, lasttoken, max
    tok_pooling: str | None = None  # ALL or STEP
    use_activation: bool | None = None
    dimensions: int | None = None
    chunked: bool = False
    max_embed_len: int | None = None
    logit_mean: float | None = None
    logit_sigma: float | None = None
    step_tag_id: int | None = None
    returned_token_ids: tuple[int, ...] | None = None
    keys: frozenset[str] = frozenset()  # the keys given, to refuse those that do not apply


def _fail(key: str, why: str) -> ModelLoadError:
    return ModelLoadError(f"--pooler-config {key} {why}")


def _int(raw: dict[str, Any], key: str, low: int) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(key, f"must be an integer >= {low}, got {value!r}")
    return value


def _float(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, f"must be a number, got {value!r}")
    return float(value)


def _bool(raw: dict[str, Any], key: str) -> bool | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _fail(key, f"must be true or false, got {value!r}")
    return value


def _switch(raw: dict[str, Any]) -> bool | None:
    """use_activation, or one of its older names; they must agree when several are set."""
    given = {name: _bool(raw, name) for name in _SWITCH_NAMES if raw.get(name) is not None}
    if len(set(given.values())) > 1:
        raise _fail(" / ".join(given), f"disagree: {given}")
    return next(iter(given.values()), None)


def _pooling(raw: dict[str, Any]) -> tuple[str | None, str | None]:
    """(sequence mode, token pooling) from pooling_type / seq_pooling_type / tok_pooling_type."""
    names = ("pooling_type", "seq_pooling_type", "tok_pooling_type")
    for key in names:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise _fail(key, f"must be a string, got {raw[key]!r}")
    kind, seq, tok = (raw.get(k) for k in names)
    if isinstance(kind, str) and kind.lower() == "auto":
        kind = None  # the model's own pooling (vLLM's long-text example sends "auto")
    if kind is not None:
        if seq is not None or tok is not None:
            both = "seq_pooling_type" if seq is not None else "tok_pooling_type"
            raise _fail("pooling_type", f"and {both} cannot both be set")
        upper = kind.upper()
        if upper in TOK_POOLING:
            tok = upper
        elif upper in SEQ_POOLING:
            seq = upper
        else:
            raise _fail(
                "pooling_type",
                f"{kind!r} is not supported; use CLS, MEAN, LAST or MAX (sequence pooling) "
                "or ALL or STEP (per-token pooling)",
            )
    if seq is not None and seq.upper() not in SEQ_POOLING:
        raise _fail("seq_pooling_type", f"{seq!r} is not supported; use CLS, MEAN, LAST or MAX")
    if tok is not None and tok.upper() not in TOK_POOLING:
        raise _fail("tok_pooling_type", f"{tok!r} is not supported; use ALL or STEP")
    return (
        SEQ_POOLING[seq.upper()] if seq is not None else None,
        tok.upper() if tok is not None else None,
    )


def _task(raw: dict[str, Any]) -> str | None:
    task = raw.get("task")
    if task is None:
        return None
    if task in _REMOVED_TASKS:
        raise _fail("task", _REMOVED_TASKS[task])
    if task in _TASK_SERVED_AS_EMBED:
        return "embed"
    if task not in TASKS:
        raise _fail("task", f"{task!r} is not supported; use one of {[*TASKS, 'token_embed']}")
    return TASKS[task]


def read_pooler_config(raw: dict[str, Any] | None) -> PoolerSettings:
    """Check every key of ``raw`` (the merged --pooler-config JSON); raise
    ModelLoadError naming the first bad or unknown key."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ModelLoadError(
            f"--pooler-config has unsupported keys {unknown}; supported: {', '.join(KEYS)}"
        )
    seq, tok = _pooling(raw)
    returned = raw.get("returned_token_ids")
    if returned is not None and (
        not isinstance(returned, list)
        or not returned
        or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in returned)
    ):
        raise _fail("returned_token_ids", "must be a non-empty list of token ids")
    sigma = _float(raw, "logit_sigma")
    if sigma == 0:
        raise _fail("logit_sigma", "cannot be 0 (division by zero)")
    _bool(raw, "enable_flash_late_interaction")  # checked; a GPU kernel switch, no effect
    task = _task(raw)
    return PoolerSettings(
        task=task,
        vllm_task=raw["task"] if task is not None else None,
        seq_pooling=seq,
        tok_pooling=tok,
        use_activation=_switch(raw),
        dimensions=_int(raw, "dimensions", 1),
        chunked=bool(_bool(raw, "enable_chunked_processing")),
        max_embed_len=_int(raw, "max_embed_len", 1),
        logit_mean=_float(raw, "logit_mean"),
        logit_sigma=sigma,
        step_tag_id=_int(raw, "step_tag_id", 0),
        returned_token_ids=tuple(returned) if returned is not None else None,
        keys=frozenset(k for k, v in raw.items() if v is not None),
    )


def refuse_keys(settings: PoolerSettings, keys: tuple[str, ...], where: str) -> None:
    """Raise naming the first of ``keys`` that was given: it does not apply to ``where``."""
    for key in keys:
        if key in settings.keys:
            raise _fail(key, f"does not apply to {where}")


# -- applying the settings to a described model (models/spec.py calls these) ----------


def requested_task(cfg: ModelConfig, pooler: PoolerSettings, causal_lm: bool) -> str:
    """--task, or --pooler-config task when --task is auto; they must agree when both given."""
    if pooler.task is None:
        if (
            cfg.task == "auto"
            and cfg.convert == "auto"
            and pooler.tok_pooling is not None
            and causal_lm
        ):
            return "reward"  # per-token pooling (ALL / STEP) of a causal LM: a reward model
        return cfg.task
    if cfg.task not in ("auto", pooler.task) and not (
        cfg.task == "score" and pooler.task == "classify"  # a cross-encoder, either way
    ):
        raise ModelLoadError(
            f"--pooler-config task asks for {pooler.task!r} but --task is {cfg.task!r}"
        )
    return pooler.task if cfg.task == "auto" else cfg.task


# --pooler-config keys that only some heads use; the others refuse them by name.
_EMBEDDING_ONLY = ("dimensions", "enable_chunked_processing", "max_embed_len")
_CLASSIFIER_ONLY = ("logit_mean", "logit_sigma")
_TOKENS_ONLY = ("tok_pooling_type", "step_tag_id")


def check_applies(pooler: PoolerSettings, head: str) -> None:
    """Refuse --pooler-config keys the served head does not use (none is ignored)."""
    if head == EMBEDDING:
        refuse_keys(
            pooler, (*_CLASSIFIER_ONLY, *_TOKENS_ONLY, "returned_token_ids"), "embedding models"
        )
        if pooler.tok_pooling is not None:
            raise ModelLoadError(
                f"--pooler-config pooling_type {pooler.tok_pooling} is per-token pooling, "
                "which does not apply to embedding models (per-token vectors: /pooling with "
                'task "token_embed"); use CLS, MEAN, LAST or MAX'
            )
    elif head == CLASSIFIER:
        refuse_keys(pooler, (*_EMBEDDING_ONLY, *_TOKENS_ONLY, "returned_token_ids"), "classifiers")
        if pooler.tok_pooling is not None:
            raise ModelLoadError(
                f"--pooler-config pooling_type {pooler.tok_pooling} does not apply to "
                "classifiers; use CLS, MEAN or LAST"
            )
    else:
        refuse_keys(
            pooler, (*_EMBEDDING_ONLY, *_CLASSIFIER_ONLY, "seq_pooling_type"), "reward models"
        )
        if pooler.seq_pooling is not None:
            raise ModelLoadError(
                "--pooler-config pooling_type: reward models pool per token; use ALL or STEP"
            )
        if pooler.step_tag_id is not None and pooler.tok_pooling != "STEP":
            raise ModelLoadError(
                '--pooler-config step_tag_id needs pooling_type "STEP" (ALL returns every row)'
            )


def checked_max_embed_len(pooler: PoolerSettings, max_len: int) -> int | None:
    """--pooler-config max_embed_len, checked against the model's window."""
    cap = pooler.max_embed_len
    if cap is not None and not pooler.chunked and cap > max_len:
        raise ModelLoadError(
            f"--pooler-config max_embed_len ({cap}) is over the model's max_model_len "
            f"({max_len}); inputs longer than the model's window need "
            "enable_chunked_processing: true"
        )
    return cap


def default_dimensions(pooler: PoolerSettings, info: ModelInfo) -> int:
    """--pooler-config dimensions, checked by the rule a request's ``dimensions`` meets."""
    d = pooler.dimensions
    assert d is not None
    problem = info.dimensions_problem(d, info.path)
    if problem is not None:
        raise ModelLoadError(f"--pooler-config dimensions {d}: {problem}")
    return d
