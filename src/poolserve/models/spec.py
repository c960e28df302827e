"""What a model IS: one torch-free description read from its files.

:func:`describe` reads config.json (through transformers' config classes, with
``--hf-overrides`` applied), the sentence-transformers files and the tokenizer, and
decides everything the server needs before any weights load: the task and head kind,
pooling and normalization, Dense layers, output width, labels and activations, and the
input rules. Backends (``poolserve.backends``) build a runnable model from a
:class:`ModelSpec`; serving, inputs and the engine read only its ``info`` and
``rules``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import ModelLoadError
from .base import CLASSIFIER, EMBEDDING, SPARSE, TOKENS, InputRules, ModelInfo
from .bge_m3 import M3Heads, lexical_pooler, with_lexical
from .colbert import read_colbert_layout
from .heads import is_multi_label, label_names, num_labels, resolve_score_activation
from .pooler_config import KEYS as POOLER_KEYS
from .pooler_config import (
    PoolerSettings,
    check_applies,
    checked_max_embed_len,
    default_dimensions,
    read_pooler_config,
    refuse_keys,
    requested_task,
)
from .resolve import resolve_model_dir
from .sparse import SparseFolder, sparse_folder
from .st_config import (
    CrossEncoderFolder,
    DenseSpec,
    STPipeline,
    is_sentence_transformers_folder,
    read_cross_encoder_folder,
    read_st_pipeline,
    st_model_type,
)

log = logging.getLogger("poolserve.models")

FROM_2_WAY_SOFTMAX = "from_2_way_softmax"

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

# Which transformers Auto class holds the weights a head needs.
BASE = "AutoModel"
SEQUENCE_CLASSIFICATION = "AutoModelForSequenceClassification"
CAUSAL_LM = "AutoModelForCausalLM"
MASKED_LM = "AutoModelForMaskedLM"


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about a model before its weights load (no tensors, no torch).

    ``info`` and ``rules`` are what serving and inputs read; the other fields are for
    backends. ``info.dtype``/``info.device`` are filled in by the backend that runs it.
    """

    root: Path  # the resolved model folder (what /v1/models calls ``root``)
    model_dir: Path  # config.json and the transformer weights (an ST folder's module)
    hf_config: Any  # transformers config with --hf-overrides applied; read-only
    tokenizer: Any
    info: ModelInfo
    rules: InputRules
    decoder: bool  # a causal LM: LAST pooling, positions over real tokens
    weights: str  # the Auto class holding the weights: BASE, SEQUENCE_CLASSIFICATION, CAUSAL_LM
    pooling_modes: tuple[str, ...] = ("mean",)
    dense: tuple[DenseSpec, ...] = ()
    pad_token_id: int = 0
    # A decoder classifier made of LM-head rows (classifier_from_token), or None.
    from_tokens: tuple[str, ...] | None = None
    # Reward (per-token) models: STEP's tag token and the returned LM-head columns.
    step_tag_id: int | None = None
    returned_token_ids: tuple[int, ...] | None = None
    # The decoder's own head (score Linear / LM head) runs after pooling / per token.
    decoder_head: bool = False
    # A cross-encoder's score activation as a dotted class path (see heads.py).
    score_activation: str | None = None
    # SPLADE: the activation before pooling (relu | log1p_relu), vLLM's ends rule (sparse.py)
    sparse_activation: str | None = None
    sparse_drop_ends: bool = False
    # bge-m3's heads (sparse_linear.pt, colbert_linear.pt): Linear state dicts run on
    # every token for per-token ``head`` / ``colbert`` rows (see bge_m3.py).
    bge_m3: M3Heads | None = None
    trust_remote_code: bool = False

    @property
    def head(self) -> str:
        """What a backend returns per sequence: EMBEDDING, CLASSIFIER or TOKENS."""
        return self.info.head


def is_encoder(hf_config: Any) -> bool:
    """A bidirectional encoder: its model type has a masked-LM head in transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(hf_config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def is_decoder(hf_config: Any) -> bool:
    """A causal decoder: transformers has a causal-LM head and no masked-LM head for it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(hf_config, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not is_encoder(hf_config)


def from_token_labels(hf_config: Any) -> tuple[str, ...] | None:
    """The ``classifier_from_token`` list of the (overridden) config, or None."""
    tokens = getattr(hf_config, "classifier_from_token", None)
    if tokens is None:
        return None
    if (
        not isinstance(tokens, list | tuple)
        or not tokens
        or not all(isinstance(t, str) for t in tokens)
    ):
        raise ModelLoadError("classifier_from_token must be a non-empty list of token strings")
    return tuple(tokens)


def has_seq_cls_arch(hf_config: Any) -> bool:
    archs = getattr(hf_config, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def resolve_task(
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
        has_seq_cls_arch(hf_config) or from_token_labels(hf_config) is not None
    )
    labels = num_labels(hf_config)
    task = requested
    if requested == "auto" and convert in ("embed", "classify", "reward"):
        task = convert
    if task == "auto":
        if st is not None:
            task = "embed"
        elif seq_cls:
            task = "score" if labels == 1 and is_encoder(hf_config) else "classify"
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


def max_model_len(
    hf_config: Any, tokenizer: Any, st: STPipeline | None, requested: int | None
) -> int:
    """The longest input: the smallest of the positions, tokenizer and ST limits.

    A requested length past the model's configured limit is allowed with a warning
    (but never past its position embeddings: a ModelLoadError).
    """
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


def _weights_class(head: str, hf_config: Any, pooler: PoolerSettings, decoder: bool) -> str:
    """The transformers Auto class whose weights the served head needs.

    A decoder's classifier from ``classifier_from_token``, and a per-token reward head
    picking ``returned_token_ids`` of a ``*ForCausalLM``, need the LM head.
    """
    if not decoder:
        return SEQUENCE_CLASSIFICATION if head == CLASSIFIER else BASE
    if head == CLASSIFIER and from_token_labels(hf_config) is not None:
        return CAUSAL_LM
    if head in (CLASSIFIER, TOKENS) and has_seq_cls_arch(hf_config):
        return SEQUENCE_CLASSIFICATION
    if head == TOKENS and pooler.returned_token_ids is not None:
        return CAUSAL_LM
    return BASE


def _uses_token_types(hf_config: Any, tokenizer: Any) -> bool:
    type_vocab = getattr(hf_config, "type_vocab_size", 0) or 0
    return type_vocab > 1 and "token_type_ids" in getattr(
        tokenizer, "model_input_names", ["token_type_ids"]
    )


def _describe_sparse(
    cfg: ModelConfig, root: Path, sparse: SparseFolder, pooler: PoolerSettings
) -> ModelSpec:
    """The spec of a SPLADE folder: an embed model whose vectors have one weight per
    vocabulary entry (models/sparse.py), run by the torch backend."""
    if cfg.task not in ("auto", "embed") or pooler.task not in (None, "embed"):
        raise ModelLoadError(f"{root} is a sparse (SPLADE) model: it serves the embed task only")
    switches = ("task", "use_activation", "normalize", "softmax", "activation")
    refuse_keys(pooler, tuple(k for k in POOLER_KEYS if k not in switches), "sparse models")
    hf_config = _read_config(sparse.transformer_path, cfg)
    tokenizer = _read_tokenizer(cfg.tokenizer or str(sparse.transformer_path), cfg, root)
    max_len = max_model_len(hf_config, tokenizer, None, cfg.max_model_len)
    bert_config = sparse.transformer_path / "sentence_bert_config.json"
    if cfg.max_model_len is None and bert_config.is_file():
        max_len = min(
            max_len, int(json.loads(bert_config.read_text()).get("max_seq_length") or max_len)
        )
    vocab = int(hf_config.vocab_size)
    st_path = root / "config_sentence_transformers.json"
    st_config = json.loads(st_path.read_text()) if st_path.is_file() else {}
    prompts = {str(k): str(v) for k, v in (st_config.get("prompts") or {}).items()}
    rules = InputRules(
        max_model_len=max_len,
        vocab_size=vocab,
        uses_token_type_ids=_uses_token_types(hf_config, tokenizer),
        default_prompt=prompts.get(st_config.get("default_prompt_name") or "") or None,
        chat_template=cfg.chat_template,
        auto_truncate=cfg.auto_truncate,
        prompts=tuple(prompts.items()),
    )
    info = ModelInfo(
        path=str(root),
        task="embed",
        max_model_len=max_len,
        dimension=vocab,
        normalize=bool(pooler.use_activation),  # SPLADE weights are not normalized
        head=SPARSE,
        pooling=(sparse.pooling,),
    )
    return ModelSpec(
        root=root,
        model_dir=sparse.transformer_path,
        hf_config=hf_config,
        tokenizer=tokenizer,
        info=info,
        rules=rules,
        decoder=False,
        weights=MASKED_LM,
        pooling_modes=(sparse.pooling,),
        pad_token_id=int(getattr(tokenizer, "pad_token_id", None) or 0),
        sparse_activation=sparse.activation,
        sparse_drop_ends=sparse.drop_ends,
        trust_remote_code=cfg.trust_remote_code,
    )


def _read_config(model_dir: Path, cfg: ModelConfig) -> Any:
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the model config in {model_dir}: {exc}") from exc
    for key, value in (cfg.hf_overrides or {}).items():
        setattr(hf_config, key, value)
    from_tokens = from_token_labels(hf_config)
    if getattr(hf_config, "is_original_qwen3_reranker", False) and from_tokens is not None:
        if len(from_tokens) != 2:
            raise ModelLoadError(
                "is_original_qwen3_reranker needs classifier_from_token of two tokens "
                f'(["no", "yes"]), got {list(from_tokens)}'
            )
        # vLLM: the original Qwen3-Reranker scores yes against no (a 2-way softmax).
        hf_config.method = FROM_2_WAY_SOFTMAX
    if from_tokens is not None:  # the LLM-as-reranker recipes: labels from LM-head rows
        two_way = getattr(hf_config, "method", None) == FROM_2_WAY_SOFTMAX
        hf_config.num_labels = 1 if two_way else len(from_tokens)
    return hf_config


def _read_tokenizer(source: str, cfg: ModelConfig, root: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source,
            trust_remote_code=cfg.trust_remote_code,
            revision=cfg.revision if cfg.tokenizer else None,
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer from {source}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        log.warning("tokenizer of %s is not a fast tokenizer; tokenization will be slow", root)
    return tokenizer


def describe(cfg: ModelConfig) -> ModelSpec:
    """Resolve and read the model named by ``cfg``; raise ModelLoadError with one line."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a server's log is no terminal
    pooler = read_pooler_config(cfg.override_pooler_config)

    root = resolve_model_dir(cfg.model, cfg.revision)
    if (sparse := sparse_folder(root, cfg)) is not None:  # SPLADE (sparse.py)
        return _describe_sparse(cfg, root, sparse, pooler)
    colbert = read_colbert_layout(root)
    if colbert is not None:  # a late-interaction model (models/colbert_spec.py)
        from .colbert_spec import describe_colbert  # it builds on this module's readers

        return describe_colbert(cfg, root, colbert, pooler)
    st: STPipeline | None = None
    cross: CrossEncoderFolder | None = None
    if is_sentence_transformers_folder(root):
        if st_model_type(root) == "CrossEncoder":
            cross = read_cross_encoder_folder(root)
        else:
            st = read_st_pipeline(root)
    model_dir = st.transformer_path if st else cross.transformer_path if cross else root
    hf_config = _read_config(model_dir, cfg)
    pooler, lexical = lexical_pooler(pooler, (model_dir, root), hf_config)  # bge-m3
    task, head = resolve_task(
        requested_task(cfg, pooler, is_decoder(hf_config) and not has_seq_cls_arch(hf_config)),
        hf_config,
        st,
        root,
        cfg.convert,
    )
    check_applies(pooler, head)
    decoder = st is None and cross is None and is_decoder(hf_config)
    tokenizer = _read_tokenizer(cfg.tokenizer or str(model_dir), cfg, root)
    weights = _weights_class(head, hf_config, pooler, decoder)
    from_tokens = from_token_labels(hf_config) if decoder and head == CLASSIFIER else None
    # A decoder keeps its own head (score Linear, LM head) to run after pooling or per
    # token, except a converted *ForCausalLM serving per-token hidden states.
    decoder_head = decoder and weights != BASE

    modes = st.pooling_modes if st is not None else ("lasttoken",) if decoder else ("mean",)
    normalize = st.normalize if st is not None else True
    hidden = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "dim", 0))
    step_tag_id, returned = None, pooler.returned_token_ids
    if head == TOKENS:
        # ALL (default): every token's row; STEP: only the rows of step_tag_id tokens
        # (all rows when it is not given).
        step_tag_id = pooler.step_tag_id if pooler.tok_pooling == "STEP" else None
    else:
        if pooler.seq_pooling is not None:
            if head == CLASSIFIER and not decoder and pooler.seq_pooling != "cls":
                # An encoder's *ForSequenceClassification head pools its first token.
                raise ModelLoadError(
                    "--pooler-config pooling_type: an encoder classifier's own head pools "
                    "the first token (CLS); other pooling types do not apply to it"
                )
            modes = (pooler.seq_pooling,)
        if pooler.use_activation is not None and head == EMBEDDING:
            normalize = pooler.use_activation
    dense = st.dense if st is not None else ()
    dimension = dense[-1].out_features if dense else hidden * len(modes)
    if head == CLASSIFIER:
        dimension = num_labels(hf_config)
    elif head == TOKENS:
        if returned is not None:
            dimension = len(returned)
        elif decoder_head:  # a *ForSequenceClassification reward head
            dimension = num_labels(hf_config)
        else:
            dimension = hidden

    uses_types = _uses_token_types(hf_config, tokenizer)
    max_len = max_model_len(hf_config, tokenizer, st, cfg.max_model_len)
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
        prompts=tuple(st.prompts.items()) if st is not None else (),
        chunked=pooler.chunked,
        max_embed_len=checked_max_embed_len(pooler, max_len),
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
        head=head,
        pooling=modes,
        token_tasks=("token_embed",) if head == EMBEDDING else (),
    )
    if pooler.dimensions is not None:
        info = dataclasses.replace(info, default_dimensions=default_dimensions(pooler, info))
    if lexical is not None:
        info = with_lexical(info, lexical, tokenizer, hf_config)
    score_activation = None
    if head == TOKENS:
        info = dataclasses.replace(
            info,
            normalize=False,
            activation=bool(pooler.use_activation),  # vLLM's reward default: raw rows
            token_tasks=("token_classify",),
        )
    elif head == CLASSIFIER:
        score_activation = resolve_score_activation(
            hf_config,
            cross.config if cross is not None else None,
            trust_remote_code=cfg.trust_remote_code and not decoder,
        )
        info = dataclasses.replace(
            info,
            normalize=False,
            labels=label_names(hf_config),
            multi_label=is_multi_label(hf_config),
            activation=pooler.use_activation is not False,
            logit_mean=pooler.logit_mean,
            logit_sigma=pooler.logit_sigma,
            # A decoder's classifier also serves per-token tasks through /pooling.
            token_tasks=("token_embed", "token_classify") if decoder else (),
        )
    return ModelSpec(
        root=root,
        model_dir=model_dir,
        hf_config=hf_config,
        tokenizer=tokenizer,
        info=info,
        rules=rules,
        decoder=decoder,
        weights=weights,
        pooling_modes=modes,
        dense=dense,
        pad_token_id=int(getattr(tokenizer, "pad_token_id", None) or 0),
        from_tokens=from_tokens,
        step_tag_id=step_tag_id,
        returned_token_ids=tuple(returned) if returned is not None else None,
        decoder_head=decoder_head,
        score_activation=score_activation,
        bge_m3=lexical,
        trust_remote_code=cfg.trust_remote_code,
    )
