"""Pooling of token states into one vector per sequence, and the post-pooling steps.

The maths follows sentence-transformers' Pooling module exactly (same masks, same
accumulation dtype, same order of concatenated modes), so vectors match it.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import ModelLoadError
from ...models.st_config import DenseSpec


def exclude_prompt(mask: Tensor, prompt_lens: Tensor) -> Tensor:
    """Zero the first ``prompt_lens[i]`` real tokens of row i (left padding aware)."""
    pad = mask.to(torch.int32).argmax(dim=1)
    positions = torch.arange(mask.size(1), device=mask.device).unsqueeze(0)
    return mask.masked_fill(positions < (pad + prompt_lens).unsqueeze(1), 0)


def pool(
    hidden: Tensor,
    mask: Tensor,
    modes: tuple[str, ...],
    prompt_lens: Tensor | None = None,
) -> Tensor:
    """Pool ``hidden`` [B, T, H] under ``mask`` [B, T] into [B, H * len(modes)], float32.

    ``prompt_lens`` (one int per row) excludes that many leading tokens from pooling,
    as sentence-transformers does when its Pooling has ``include_prompt=False``.
    """
    pooling_mask = mask
    if prompt_lens is not None and bool((prompt_lens > 0).any()):
        pooling_mask = exclude_prompt(mask, prompt_lens)
    return pool_masked(hidden, mask, pooling_mask, modes)


def pool_masked(hidden: Tensor, original: Tensor, mask: Tensor, modes: tuple[str, ...]) -> Tensor:
    """:func:`pool` with the prompt already excluded: ``mask`` is the pooling mask,
    ``original`` the attention mask (for left-padding offsets). No data-dependent
    branches, so it traces into one graph for every batch."""
    hidden = hidden.float()
    maskf = mask.unsqueeze(-1).to(hidden.dtype)
    out: list[Tensor] = []
    for mode in modes:
        if mode == "cls":
            first = mask.to(torch.int32).argmax(dim=1)
            out.append(hidden[torch.arange(hidden.size(0), device=hidden.device), first])
        elif mode == "max":
            out.append(hidden.masked_fill(maskf == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (hidden * maskf).sum(dim=1)
            count = maskf.sum(dim=1).clamp(min=1e-9)
            out.append(total / (count if mode == "mean" else count.sqrt()))
        elif mode == "weightedmean":
            weights = torch.arange(1, hidden.size(1) + 1, device=hidden.device, dtype=hidden.dtype)
            pad = original.to(torch.int32).argmax(dim=1)
            weights = weights.view(1, -1, 1) - pad.view(-1, 1, 1)
            wmask = maskf * weights
            out.append((hidden * wmask).sum(dim=1) / wmask.sum(dim=1).clamp(min=1e-9))
        elif mode == "lasttoken":
            seq_len = hidden.size(1)
            values, idx = mask.flip(1).max(1)
            idx = torch.where(values == 0, seq_len - 1, idx)
            last = seq_len - idx - 1
            out.append((hidden * maskf)[torch.arange(hidden.size(0), device=hidden.device), last])
        else:  # st_config validated modes at load time
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(out, dim=-1)


def activation_module(
    name: str, what: str = "Dense activation", trusted: bool = False
) -> nn.Module:
    """Instantiate an activation named by its dotted class path.

    Only ``torch.*`` ``nn.Module`` classes load unless ``trusted`` (--trust-remote-code),
    so a config cannot make us call arbitrary code. Raises ModelLoadError naming
    ``what`` when the class is unknown, not a module, or cannot be built.
    """
    if not trusted and not name.startswith("torch."):
        raise ModelLoadError(f"untrusted {what} {name!r}: only torch.* classes load")
    module_name, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ModelLoadError(f"unknown {what} {name!r}") from exc
    # As sentence-transformers without trust_remote_code: only nn.Module classes, so a
    # config cannot make us call an arbitrary torch function.
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"{what} {name!r} is not a torch.nn.Module class")
    try:
        return cls()
    except Exception as exc:
        raise ModelLoadError(f"cannot build {what} {name!r}: {exc}") from exc


def load_dense(spec: DenseSpec) -> nn.Module:
    """Build a sentence-transformers Dense module (Linear + activation) from its folder."""
    linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
    st_file = spec.path / "model.safetensors"
    bin_file = spec.path / "pytorch_model.bin"
    if st_file.is_file():
        from safetensors.torch import load_file

        state = load_file(str(st_file))
    elif bin_file.is_file():
        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
    else:
        raise ModelLoadError(f"Dense module {spec.path} has no weights file")
    state = {k.removeprefix("linear."): v for k, v in state.items()}
    try:
        linear.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"Dense module {spec.path}: {exc}") from exc
    return nn.Sequential(linear, activation_module(spec.activation))


def normalize_rows(x: Tensor) -> Tensor:
    """L2-normalize each row (zero rows stay zero)."""
    return nn.functional.normalize(x, p=2, dim=-1)


class TorchActivation:
    """A torch activation module applied to float32 logits ``[n, k]`` given as numpy.

    For activation classes numpy does not compute (``poolserve.models.activations``):
    other ``torch.nn`` classes, or custom ones under --trust-remote-code. Applied to the
    2-D logits, before any squeezing, as sentence-transformers does. Returns float32.
    """

    def __init__(self, path: str, what: str = "cross-encoder activation", trusted: bool = False):
        self.module = activation_module(path, what, trusted=trusted).eval()
        self.name = path.rsplit(".", 1)[-1]

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
        with torch.inference_mode():
            return np.asarray(self.module(x).float().numpy(), dtype=np.float32)

    def __repr__(self) -> str:
        return f"TorchActivation({self.name})"
