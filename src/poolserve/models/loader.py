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
from .backend import TorchBackend, TorchClassifierBackend, TorchEmbeddingBackend
from .base import CLASSIFIER, EMBEDDING, InputRules, ModelInfo
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
    requested: str, hf_config: Any, st: STPipeline | None, root: Path
) -> tuple[str, str]:
    """(task, head) for the checkpoint, following API.md "Task -> endpoints".

    auto: a sentence-transformers embedding folder or a bare encoder -> embed;
    ``*ForSequenceClassification`` -> score when it has one label and is an encoder,
    else classify; ``*ForRewardModel*`` -> reward. Raises ModelLoadError for a task the
    checkpoint cannot serve.
    """
    archs = list(getattr(hf_config, "architectures", None) or [])
    seq_cls = st is None and any(a.endswith("ForSequenceClassification") for a in archs)
    labels = num_labels(hf_config)
    task = requested
    if requested == "auto":
        if st is not None:
            task = "embed"
        elif seq_cls:
            task = "score" if labels == 1 and _is_encoder(hf_config) else "classify"
        elif any("ForRewardModel" in a for a in archs):
            task = "reward"
        else:
            task = "embed"
    if task == "reward":
        raise ModelLoadError(
            "task 'reward' is not available in this release of poolserve; serve an "
            "embedding, classification or cross-encoder model"
        )
    if task == "classify" and not seq_cls:
        raise ModelLoadError(
            f"--task classify needs a *ForSequenceClassification checkpoint; {root} is not one"
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


def _probe(tokenizer: Any, uses_types: bool) -> dict[str, torch.Tensor]:
    """A small padded batch to check a model rewrite against the stock model."""
    enc = tokenizer(
        ["a short probe", "a somewhat longer probe sentence to check the model with"],
        padding=True,
        return_tensors="pt",
        return_token_type_ids=uses_types,
    )
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Resolve, read and load the model named by ``cfg``; raise ModelLoadError with one line."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a server's log is no terminal

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

    task, head = _resolve_task(cfg.task, hf_config, st, root)

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
    auto = AutoModelForSequenceClassification if head == CLASSIFIER else AutoModel
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

    modes = st.pooling_modes if st is not None else ("mean",)
    normalize = st.normalize if st is not None else True
    modes, normalize = _pooling_from_override(cfg.override_pooler_config, modes, normalize)
    dense = [load_dense(spec) for spec in st.dense] if st is not None else []
    hidden = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "dim", 0))
    dimension = st.dense[-1].out_features if st is not None and st.dense else hidden * len(modes)
    if head == CLASSIFIER:
        dimension = num_labels(hf_config)

    type_vocab = getattr(hf_config, "type_vocab_size", 0) or 0
    uses_types = type_vocab > 1 and "token_type_ids" in getattr(
        tokenizer, "model_input_names", ["token_type_ids"]
    )
    max_len = _max_model_len(hf_config, tokenizer, st, cfg.max_model_len)
    if device.type == "cpu" and dtype == torch.float32:
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
    )
    pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
    backend: TorchBackend
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
