"""Load a model directory into a backend, an input processor and its facts."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import ModelLoadError
from .backend import (
    TorchBackend,
    TorchClassifierBackend,
    TorchEmbeddingBackend,
    TorchTokenBackend,
)
from .base import CLASSIFIER, EMBEDDING, TOKENS, InputRules, ModelInfo
from .decoder import (
    FROM_2_WAY_SOFTMAX,
    from_token_labels,
    head_from_tokens,
    is_decoder,
    split_model,
)
from .dtype import resolve_device, resolve_dtype
from .heads import is_multi_label, label_names, num_labels, resolve_score_activation
from .onednn import accelerate_cpu_fp32
from .pooler import load_dense
from .resolve import resolve_model_dir
from .st_config import (
    POOLING_MODES,
    CrossEncoderFolder,
    STPipeline,
    is_sentence_transformers_folder,
    read_cross_encoder_folder,
    read_st_pipeline,
    st_model_type,
)

log = logging.getLogger("poolserve.models")

# Position embeddings of these model types start after the padding index, so two
# rows of max_position_embeddings are unusable (MPNet hard-codes padding_idx 1).
_OFFSET_POSITION_TYPES = {
    "roberta",
    "xlm-roberta",
    "camembert",
    "longformer",
    "xlm-roberta-xl",
    "mpnet",
}
_NO_LIMIT = 1_000_000  # tokenizers write ~1e30 as "no limit"


@dataclass
class LoadedModel:
    """Everything the engine and the serving layer need from a loaded model."""

    backend: TorchBackend
    tokenizer: Any
    rules: InputRules
    info: ModelInfo


def _is_encoder(hf_config: Any) -> bool:
    """A bidirectional encoder: its model type has a masked-LM head in transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(hf_config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _resolve_task(
    requested: str, hf_config: Any, st: STPipeline | None, root: Path, convert: str = "auto"
) -> tuple[str, str]:
    """(task, head) for the checkpoint, following API.md "Task -> endpoints".

    auto: ``--convert embed|classify|reward`` when given; a sentence-transformers
    embedding folder or a bare encoder -> embed; ``*ForSequenceClassification`` (or a
    ``classifier_from_token`` config) -> score when it has one label and is an encoder,
    else classify; ``*ForRewardModel*`` -> reward; anything else (a ``*ForCausalLM``)
    -> embed. Reward runs on decoders only. Raises ModelLoadError for a task the
    checkpoint cannot serve.
    """
    archs = list(getattr(hf_config, "architectures", None) or [])
    seq_cls = st is None and (
        any(a.endswith("ForSequenceClassification") for a in archs)
        or from_token_labels(hf_config) is not None
    )
    labels = num_labels(hf_config)
    task = requested
    if requested == "auto" and convert in ("embed", "classify", "reward"):
        task = convert
    if task == "auto":
        if st is not None:
            task = "embed"
        elif seq_cls:
            task = "score" if labels == 1 and _is_encoder(hf_config) else "classify"
        elif any("ForRewardModel" in a for a in archs):
            task = "reward"
        else:
            task = "embed"
    if task == "reward":
        if not is_decoder(hf_config):
            raise ModelLoadError(
                f"task 'reward' needs a decoder checkpoint (Qwen2, Llama, ...); {root} is not one"
            )
        return task, TOKENS
    if task == "classify" and not seq_cls:
        raise ModelLoadError(
            f"--task classify needs a *ForSequenceClassification checkpoint (or "
            f"classifier_from_token in --hf-overrides); {root} is not one"
        )
    if task == "score" and seq_cls and labels != 1:
        raise ModelLoadError(
            f"--task score needs a cross-encoder with one label; {root} has {labels} "
            "labels (serve it with --task classify)"
        )
    head = CLASSIFIER if seq_cls and task in ("classify", "score") else EMBEDDING
    return task, head


def _max_model_len(
    hf_config: Any, tokenizer: Any, st: STPipeline | None, requested: int | None
) -> int:
    limits = []
    max_pos = getattr(hf_config, "max_position_embeddings", None)
    if isinstance(max_pos, int) and max_pos > 0:
        if getattr(hf_config, "model_type", "") in _OFFSET_POSITION_TYPES:
            max_pos -= (getattr(hf_config, "pad_token_id", 1) or 1) + 1
        limits.append(max_pos)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _NO_LIMIT:
        limits.append(tok_max)
    if st is not None and st.max_seq_length:
        limits.append(st.max_seq_length)
    natural = min(limits) if limits else 512
    if requested is None:
        return natural
    if requested > natural and max_pos and requested > max_pos:
        raise ModelLoadError(
            f"--max-model-len {requested} exceeds the model's position embeddings ({max_pos})"
        )
    if requested > natural:
        log.warning(
            "--max-model-len %d is above the model's configured limit (%d): outputs past "
            "%d tokens were never seen in training",
            requested,
            natural,
            natural,
        )
    return requested


def _pooling_from_override(
    override: dict[str, Any] | None, modes: tuple[str, ...], normalize: bool
) -> tuple[tuple[str, ...], bool]:
    if not override:
        return modes, normalize
    kind = override.get("pooling_type")
    if kind is not None:
        mapped = {"CLS": "cls", "MEAN": "mean", "LAST": "lasttoken", "MAX": "max"}.get(
            str(kind).upper()
        )
        if mapped is None or mapped not in POOLING_MODES:
            raise ModelLoadError(
                f"--override-pooler-config pooling_type {kind!r} is not supported for "
                "embedding; use CLS, MEAN, LAST or MAX"
            )
        modes = (mapped,)
    if "normalize" in override:
        normalize = bool(override["normalize"])
    return modes, normalize


def _has_seq_cls_arch(hf_config: Any) -> bool:
    archs = getattr(hf_config, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def _auto_class(head: str, hf_config: Any, override: dict[str, Any] | None, decoder: bool) -> Any:
    """The transformers Auto class whose weights the served head needs.

    A decoder's classifier from ``classifier_from_token``, and a per-token reward head
    picking ``returned_token_ids`` of a ``*ForCausalLM``, need the LM head.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    if not decoder:
        return AutoModelForSequenceClassification if head == CLASSIFIER else AutoModel
    if head == CLASSIFIER and from_token_labels(hf_config) is not None:
        return AutoModelForCausalLM
    if head in (CLASSIFIER, TOKENS) and _has_seq_cls_arch(hf_config):
        return AutoModelForSequenceClassification
    if head == TOKENS and (override or {}).get("returned_token_ids") is not None:
        return AutoModelForCausalLM
    return AutoModel


def _override_flag(override: dict[str, Any] | None, names: tuple[str, ...], default: bool) -> bool:
    """The first of ``names`` set in --override-pooler-config, else ``default``."""
    for name in names:
        if (override or {}).get(name) is not None:
            return bool(override[name])  # type: ignore[index]
    return default


def _step_settings(override: dict[str, Any] | None) -> tuple[int | None, list[int] | None]:
    """(step_tag_id, returned_token_ids) of a reward model's --override-pooler-config.

    pooling_type ALL (default) or STEP; STEP keeps only the rows of ``step_tag_id``
    tokens (all rows when it is not given).
    """
    override = override or {}
    kind = str(override.get("pooling_type") or "ALL").upper()
    if kind not in ("ALL", "STEP"):
        raise ModelLoadError(
            f"--override-pooler-config pooling_type {kind!r} is not supported for reward; "
            "use ALL or STEP"
        )
    tag = override.get("step_tag_id")
    returned = override.get("returned_token_ids")
    if tag is not None and not isinstance(tag, int):
        raise ModelLoadError("--override-pooler-config step_tag_id must be a token id")
    if returned is not None and (
        not isinstance(returned, list) or not all(isinstance(t, int) for t in returned)
    ):
        raise ModelLoadError("--override-pooler-config returned_token_ids must be a list of ids")
    return (tag if kind == "STEP" else None), returned


def _probe(tokenizer: Any, uses_types: bool) -> dict[str, torch.Tensor]:
    """A small padded batch to check a model rewrite against the stock model."""
    enc = tokenizer(
        ["a short probe", "a somewhat longer probe sentence to check the model with"],
        padding=True,
        return_tensors="pt",
        return_token_type_ids=uses_types,
    )
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


_OVERRIDE_KEYS = (
    "pooling_type",
    "normalize",
    "activation",
    "softmax",
    "step_tag_id",
    "returned_token_ids",
)


def _check_override_keys(override: dict[str, Any] | None) -> None:
    """Refuse --override-pooler-config keys poolserve would otherwise ignore silently."""
    unknown = sorted(set(override or {}) - set(_OVERRIDE_KEYS))
    if "dimensions" in unknown:
        raise ModelLoadError(
            "--override-pooler-config dimensions is not supported; send `dimensions` in "
            "each embeddings request instead"
        )
    if unknown:
        raise ModelLoadError(
            f"--override-pooler-config has unsupported keys {unknown}; supported: "
            f"{', '.join(_OVERRIDE_KEYS)}"
        )


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Resolve, read and load the model named by ``cfg``; raise ModelLoadError with one line."""
    from transformers import (
        AutoConfig,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a server's log is no terminal
    _check_override_keys(cfg.override_pooler_config)

    root = resolve_model_dir(cfg.model, cfg.revision)
    st: STPipeline | None = None
    cross: CrossEncoderFolder | None = None
    if is_sentence_transformers_folder(root):
        if st_model_type(root) == "CrossEncoder":
            cross = read_cross_encoder_folder(root)
        else:
            st = read_st_pipeline(root)
    model_dir = st.transformer_path if st else cross.transformer_path if cross else root
    try:
        hf_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the model config in {model_dir}: {exc}") from exc
    for key, value in (cfg.hf_overrides or {}).items():
        setattr(hf_config, key, value)
    from_tokens = from_token_labels(hf_config)
    if from_tokens is not None:  # the LLM-as-reranker recipes: labels from LM-head rows
        two_way = getattr(hf_config, "method", None) == FROM_2_WAY_SOFTMAX
        hf_config.num_labels = 1 if two_way else len(from_tokens)

    task, head = _resolve_task(cfg.task, hf_config, st, root, cfg.convert)
    decoder = st is None and cross is None and is_decoder(hf_config)

    tok_source = cfg.tokenizer or str(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            tok_source,
            trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision if cfg.tokenizer else None,
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {tok_source}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        log.warning("tokenizer of %s is not a fast tokenizer; tokenization will be slow", root)

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    auto = _auto_class(head, hf_config, cfg.override_pooler_config, decoder)
    try:
        try:
            model = auto.from_pretrained(
                model_dir, config=hf_config, attn_implementation="sdpa", **kwargs
            )
        except (ValueError, ImportError):  # this architecture has no SDPA path
            model = auto.from_pretrained(model_dir, config=hf_config, **kwargs)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model weights in {model_dir}: {exc}") from exc
    model = model.to(device).eval()
    decoder_head: torch.nn.Module | None = None
    if decoder:  # run the base model; heads are applied to the pooled token(s)
        model, decoder_head = split_model(model)
        if from_tokens is not None and head == CLASSIFIER:
            assert decoder_head is not None
            decoder_head = head_from_tokens(decoder_head, tokenizer, hf_config)

    modes = st.pooling_modes if st is not None else ("lasttoken",) if decoder else ("mean",)
    normalize = st.normalize if st is not None else True
    hidden = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "dim", 0))
    step_tag_id, returned = None, None
    if head == TOKENS:
        step_tag_id, returned = _step_settings(cfg.override_pooler_config)
        if decoder_head is not None and not _has_seq_cls_arch(hf_config) and returned is None:
            decoder_head = None  # a converted *ForCausalLM: per-token hidden states
    else:
        modes, normalize = _pooling_from_override(cfg.override_pooler_config, modes, normalize)
    dense = [load_dense(spec) for spec in st.dense] if st is not None else []
    dimension = st.dense[-1].out_features if st is not None and st.dense else hidden * len(modes)
    if head == CLASSIFIER:
        dimension = num_labels(hf_config)
    elif head == TOKENS:
        width = getattr(decoder_head, "out_features", hidden) if decoder_head else hidden
        dimension = len(returned) if returned is not None else int(width)

    type_vocab = getattr(hf_config, "type_vocab_size", 0) or 0
    uses_types = type_vocab > 1 and "token_type_ids" in getattr(
        tokenizer, "model_input_names", ["token_type_ids"]
    )
    max_len = _max_model_len(hf_config, tokenizer, st, cfg.max_model_len)
    if cfg.onednn_linear and device.type == "cpu" and dtype == torch.float32 and not decoder:
        model = accelerate_cpu_fp32(model, _probe(tokenizer, uses_types))
    chat_template = cfg.chat_template
    if chat_template is not None and Path(chat_template).is_file():
        chat_template = Path(chat_template).read_text(encoding="utf-8")

    rules = InputRules(
        max_model_len=max_len,
        vocab_size=int(getattr(hf_config, "vocab_size", len(tokenizer))),
        uses_token_type_ids=uses_types,
        default_prompt=st.default_prompt if st is not None else None,
        exclude_prompt_from_pooling=st is not None and not st.include_prompt,
        do_lower_case=st.do_lower_case if st is not None else False,
        chat_template=chat_template,
        auto_truncate=cfg.auto_truncate,
    )
    matryoshka_dims = getattr(hf_config, "matryoshka_dimensions", None)
    info = ModelInfo(
        path=str(root),
        task=task,
        max_model_len=max_len,
        dimension=dimension,
        normalize=normalize,
        matryoshka=bool(getattr(hf_config, "is_matryoshka", False) or matryoshka_dims),
        matryoshka_dimensions=tuple(matryoshka_dims) if matryoshka_dims else None,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        token_tasks=("token_embed",) if head == EMBEDDING else (),
    )
    pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
    backend: TorchBackend
    if head == TOKENS:
        info = dataclasses.replace(
            info,
            head=TOKENS,
            normalize=False,
            activation=_override_flag(cfg.override_pooler_config, ("softmax", "activation"), False),
            token_tasks=("token_classify",),
        )
        backend = TorchTokenBackend(
            model,
            head=decoder_head,
            step_tag_id=step_tag_id,
            returned_token_ids=returned,
            pad_token_id=pad_id,
            device=device,
        )
        log.info(
            "loaded %s: task=%s dtype=%s device=%s max_model_len=%d per-token width=%d%s",
            root,
            task,
            info.dtype,
            device,
            max_len,
            dimension,
            f" STEP (tag {step_tag_id})" if step_tag_id is not None else " ALL",
        )
        return LoadedModel(backend=backend, tokenizer=tokenizer, rules=rules, info=info)
    if head == CLASSIFIER and decoder:
        # The head on the LAST real token (from the mask, not pad_token_id), as vLLM.
        assert decoder_head is not None
        info = dataclasses.replace(
            info,
            head=CLASSIFIER,
            normalize=False,
            labels=label_names(hf_config),
            multi_label=is_multi_label(hf_config),
            score_activation=resolve_score_activation(hf_config, None),
            activation=_override_flag(cfg.override_pooler_config, ("activation", "softmax"), True),
            token_tasks=("token_embed", "token_classify"),
        )
        backend = TorchEmbeddingBackend(
            model,
            pooling_modes=modes,
            dense=[decoder_head],
            pad_token_id=pad_id,
            device=device,
            position_ids=True,
        )
        log.info(
            "loaded %s: task=%s dtype=%s device=%s max_model_len=%d labels=%d pooling=%s",
            root,
            task,
            info.dtype,
            device,
            max_len,
            info.num_labels,
            "+".join(modes),
        )
        return LoadedModel(backend=backend, tokenizer=tokenizer, rules=rules, info=info)
    if head == CLASSIFIER:
        activation = resolve_score_activation(
            hf_config,
            cross.config if cross is not None else None,
            trust_remote_code=cfg.trust_remote_code,
        )
        info = dataclasses.replace(
            info,
            head=CLASSIFIER,
            normalize=False,
            labels=label_names(hf_config),
            multi_label=is_multi_label(hf_config),
            score_activation=activation,
        )
        backend = TorchClassifierBackend(
            model, pad_token_id=pad_id, uses_token_type_ids=uses_types, device=device
        )
        log.info(
            "loaded %s: task=%s dtype=%s device=%s max_model_len=%d labels=%d "
            "score activation=%s%s",
            root,
            task,
            info.dtype,
            device,
            max_len,
            info.num_labels,
            activation.name,
            " token_type_ids" if uses_types else "",
        )
        return LoadedModel(backend=backend, tokenizer=tokenizer, rules=rules, info=info)
    backend = TorchEmbeddingBackend(
        model,
        pooling_modes=modes,
        dense=dense,
        pad_token_id=pad_id,
        uses_token_type_ids=uses_types,
        device=device,
        position_ids=decoder,
    )
    log.info(
        "loaded %s: task=%s dtype=%s device=%s max_model_len=%d dim=%d pooling=%s%s",
        root,
        task,
        info.dtype,
        device,
        max_len,
        dimension,
        "+".join(modes),
        " normalize" if normalize else "",
    )
    return LoadedModel(backend=backend, tokenizer=tokenizer, rules=rules, info=info)


__all__ = ["LoadedModel", "load_model"]
