"""Read a sentence-transformers folder into a plain description of its pipeline.

Honours modules.json (Transformer -> Pooling -> Dense* -> Normalize), the Pooling
module in its classic (``pooling_mode_*_tokens`` booleans) and compact
(``pooling_mode``) forms, Dense layers with their activation, ``max_seq_length``,
and ``prompts`` / ``default_prompt_name``. Pure file reading: no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

# Classic key -> mode, in the order sentence-transformers concatenates them.
_CLASSIC_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

_MODULE_KINDS = {
    "Transformer": "transformer",
    "Pooling": "pooling",
    "Dense": "dense",
    "Normalize": "normalize",
}


@dataclass(frozen=True)
class DenseSpec:
    """One sentence-transformers Dense module: ``activation(x @ W.T + b)``."""

    path: Path
    in_features: int
    out_features: int
    bias: bool
    activation: str  # dotted torch class name, e.g. "torch.nn.modules.activation.Tanh"


@dataclass(frozen=True)
class STPipeline:
    """What a sentence-transformers folder asks for after its Transformer module."""

    transformer_path: Path
    pooling_modes: tuple[str, ...] = ("mean",)
    include_prompt: bool = True
    dense: tuple[DenseSpec, ...] = ()
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    similarity_fn_name: str | None = None

    @property
    def default_prompt(self) -> str | None:
        """The text prepended to every input by default, or None."""
        if self.default_prompt_name is None:
            return None
        return self.prompts.get(self.default_prompt_name)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def pooling_modes_from_config(cfg: dict[str, Any]) -> tuple[tuple[str, ...], bool]:
    """Return (modes, include_prompt) from a 1_Pooling/config.json in either form."""
    raw = cfg.get("pooling_mode")
    if raw is not None:
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    else:
        modes = tuple(mode for key, mode in _CLASSIC_KEYS.items() if cfg.get(key))
        if not modes:
            modes = ("mean",)
    modes = tuple("mean_sqrt_len_tokens" if m == "mean_sqrt_len" else m for m in modes)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ModelLoadError(
                f"unsupported pooling mode {mode!r}; supported: {', '.join(POOLING_MODES)}"
            )
    return modes, bool(cfg.get("include_prompt", True))


def _dense_spec(path: Path) -> DenseSpec:
    cfg = _read_json(path / "config.json")
    # Variants poolserve does not implement are refused rather than silently run wrong:
    # a residual connection, or a Dense reading/writing other features than the embedding.
    if cfg.get("use_residual"):
        raise ModelLoadError(f"Dense module {path} uses a residual connection (unsupported)")
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key, "sentence_embedding") not in (None, "sentence_embedding"):
            raise ModelLoadError(f"Dense module {path} has unsupported {key} {cfg[key]!r}")
    try:
        return DenseSpec(
            path=path,
            in_features=int(cfg["in_features"]),
            out_features=int(cfg["out_features"]),
            bias=bool(cfg.get("bias", True)),
            # sentence-transformers omits the key when it is its default, Tanh.
            activation=str(cfg.get("activation_function") or "torch.nn.modules.activation.Tanh"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"Dense module {path} has a bad config.json: {exc!r}") from exc


def is_sentence_transformers_folder(path: Path) -> bool:
    """True when ``path`` holds a modules.json."""
    return (path / "modules.json").is_file()


def _read_modules(root: Path) -> list[dict[str, Any]]:
    """``root/modules.json`` as a list of module objects (ModelLoadError otherwise)."""
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {root / 'modules.json'}: {exc}") from exc
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError(f"{root / 'modules.json'} is not a list of module objects")
    return modules


def read_st_pipeline(root: Path) -> STPipeline:
    """Read ``root``'s modules.json and module configs.

    Raises ModelLoadError naming any module type poolserve does not implement, so a
    model is never served with part of its pipeline silently dropped.
    """
    modules = _read_modules(root)
    transformer_path = root
    modes: tuple[str, ...] = ("mean",)
    include_prompt = True
    dense: list[DenseSpec] = []
    normalize = False
    seen_pooling = False
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = _MODULE_KINDS.get(str(module.get("type", "")).rsplit(".", 1)[-1])
        mpath = root / module.get("path", "")
        if kind == "transformer":
            transformer_path = mpath
        elif kind == "pooling":
            modes, include_prompt = pooling_modes_from_config(_read_json(mpath / "config.json"))
            seen_pooling = True
        elif kind == "dense":
            dense.append(_dense_spec(mpath))
        elif kind == "normalize":
            normalize = True
        else:
            raise ModelLoadError(
                f"unsupported sentence-transformers module {module.get('type')!r} in "
                f"{root / 'modules.json'}"
            )
    if not seen_pooling:
        raise ModelLoadError(f"{root / 'modules.json'} has no Pooling module")

    max_seq_length = None
    do_lower_case = False
    for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        for base in (transformer_path, root):
            if (base / name).is_file():
                bert_cfg = _read_json(base / name)
                max_seq_length = bert_cfg.get("max_seq_length")
                do_lower_case = bool(bert_cfg.get("do_lower_case", False))
                break
        else:
            continue
        break

    prompts: dict[str, str] = {}
    default_prompt_name = None
    similarity = None
    st_cfg_path = root / "config_sentence_transformers.json"
    if st_cfg_path.is_file():
        st_cfg = _read_json(st_cfg_path)
        prompts = {str(k): str(v) for k, v in (st_cfg.get("prompts") or {}).items()}
        default_prompt_name = st_cfg.get("default_prompt_name")
        similarity = st_cfg.get("similarity_fn_name")
    return STPipeline(
        transformer_path=transformer_path,
        pooling_modes=modes,
        include_prompt=include_prompt,
        dense=tuple(dense),
        normalize=normalize,
        max_seq_length=int(max_seq_length) if max_seq_length else None,
        do_lower_case=do_lower_case,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name=similarity,
    )


def st_model_type(root: Path) -> str:
    """``model_type`` of config_sentence_transformers.json ("SentenceTransformer" if absent),
    as sentence-transformers reads it to tell embedding models from cross-encoders."""
    path = root / "config_sentence_transformers.json"
    if not path.is_file():
        return "SentenceTransformer"
    return str(_read_json(path).get("model_type") or "SentenceTransformer")


@dataclass(frozen=True)
class CrossEncoderFolder:
    """A folder written by sentence-transformers' ``CrossEncoder.save``."""

    transformer_path: Path
    config: dict[str, Any]  # its config_sentence_transformers.json


def read_cross_encoder_folder(root: Path) -> CrossEncoderFolder:
    """Read a CrossEncoder folder: one Transformer module and its saved settings.

    Raises ModelLoadError for any other module (a Dense score head, LogitScore) and for
    a default prompt, which poolserve does not apply to pairs: refusing is better than
    serving scores that differ from sentence-transformers.
    """
    modules = _read_modules(root)
    kinds = [_MODULE_KINDS.get(str(m.get("type", "")).rsplit(".", 1)[-1]) for m in modules]
    if kinds != ["transformer"]:
        raise ModelLoadError(
            f"unsupported CrossEncoder modules in {root / 'modules.json'}: "
            f"{[m.get('type') for m in modules]} (only a single Transformer is supported)"
        )
    config = _read_json(root / "config_sentence_transformers.json")
    if config.get("default_prompt_name"):
        raise ModelLoadError(
            f"CrossEncoder {root} has a default prompt ({config['default_prompt_name']!r}); "
            "prompts for text pairs are not supported"
        )
    return CrossEncoderFolder(transformer_path=root / modules[0].get("path", ""), config=config)
