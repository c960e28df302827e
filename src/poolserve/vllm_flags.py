"""vLLM launch-line compatibility for ``poolserve serve``.

Launch lines copied from vLLM's docs must start poolserve unchanged. Two things make
that work besides the flags poolserve shares with vLLM (config.py):

- vLLM's parser takes ``--hf_overrides`` for ``--hf-overrides`` (underscores in a flag's
  name are dashes); :func:`dashed` does the same before parsing;
- flags that tune machinery poolserve does not have (CUDA graphs, GPU memory planning,
  tensor parallelism over GPUs, the KV cache, prefix caching, stats logging) are
  accepted and logged as having no effect, because none of them changes an output.
  ``--tensor-parallel-size`` above 1 is refused: it asks for a model split over devices,
  which poolserve does not do (``--data-parallel-size`` runs copies instead).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from .errors import PoolserveError

log = logging.getLogger("poolserve")

# (flag, takes a value, why it has no effect here)
_NO_EFFECT: tuple[tuple[str, bool, str], ...] = (
    ("--enforce-eager", False, "poolserve captures no CUDA graphs"),
    ("--gpu-memory-utilization", True, "poolserve plans no KV-cache memory"),
    ("--kv-cache-dtype", True, "pooling models keep no KV cache"),
    ("--block-size", True, "pooling models keep no KV cache"),
    ("--swap-space", True, "pooling models keep no KV cache"),
    ("--enable-prefix-caching", False, "pooling models keep no KV cache"),
    ("--no-enable-prefix-caching", False, "pooling models keep no KV cache"),
    ("--disable-log-stats", False, "poolserve logs no periodic stats (see /metrics)"),
    ("--seed", True, "pooling has no sampling"),
    ("--trust-request-chat-template", False, "requests' chat templates are always allowed"),
    ("--model-impl", True, "poolserve runs every model through transformers' classes"),
    ("--load-format", True, "weights load as transformers finds them"),
    ("--generation-config", True, "pooling generates nothing"),
    ("--enable-chunked-prefill", False, "pooling has no prefill scheduler"),
    ("--no-enable-chunked-prefill", False, "pooling has no prefill scheduler"),
    ("--max-logprobs", True, "pooling returns no logprobs"),
    ("--disable-uvicorn-access-log", False, "poolserve logs its own line per request"),
)
# vLLM's other names for values (its --dtype half/float, 0.9's --task embedding).
_VALUE_ALIASES = {
    "--dtype": {"half": "float16", "float": "float32"},
    "--task": {"embedding": "embed"},
}
# Flags with an effect, applied as vLLM applies them (environment of the hub client).
_ENV_FLAGS = {"--download-dir": "HF_HUB_CACHE", "--hf-token": "HF_TOKEN"}
_TOKENIZER_MODES = ("auto", "hf")
_TP = "--tensor-parallel-size"


def dashed(argv: Sequence[str]) -> list[str]:
    """``argv`` as vLLM's parser reads it: underscores in long flag names are dashes
    (``--hf_overrides X`` is ``--hf-overrides X``; only the name up to a dot changes, so
    ``--pooler_config.pooling_type`` keeps its key), and vLLM's other value names are
    poolserve's (``--dtype half`` is float16, ``float`` float32; ``--task embedding`` is
    embed). Other values are untouched."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("---"):
            name, eq, value = arg.partition("=")
            flag, dot, key = name.partition(".")
            flag = flag.replace("_", "-")
            if eq and not dot:
                value = _VALUE_ALIASES.get(flag, {}).get(value, value)
            arg = flag + dot + key + eq + value
        elif out and out[-1] in _VALUE_ALIASES:
            arg = _VALUE_ALIASES[out[-1]].get(arg, arg)
        out.append(arg)
    return out


def add_vllm_engine_flags(cmd: argparse.ArgumentParser) -> None:
    """The vLLM flags accepted with no effect (see the module docstring)."""
    group = cmd.add_argument_group(
        "vLLM engine flags accepted for launch-line compatibility (no effect here)"
    )
    group.add_argument(_TP, "-tp", type=int, default=1, help="Only 1 (no model splitting).")
    group.add_argument(
        "--tokenizer-mode",
        dest="vllm_tokenizer_mode",
        default="auto",
        help="auto or hf: the Hugging Face tokenizer (fast when the model has one).",
    )
    for flag, env in _ENV_FLAGS.items():
        dest = "vllm_" + flag.lstrip("-").replace("-", "_")
        group.add_argument(flag, dest=dest, default=None, help=f"Sets {env} for downloads.")
    for flag, takes_value, why in _NO_EFFECT:
        dest = "vllm_" + flag.lstrip("-").replace("-", "_")
        if takes_value:
            group.add_argument(flag, dest=dest, default=None, help=f"No effect: {why}.")
        else:
            group.add_argument(flag, dest=dest, action="store_true", help=f"No effect: {why}.")


def check_vllm_engine_flags(args: argparse.Namespace) -> None:
    """Refuse tensor parallelism and tokenizer modes poolserve lacks; set the hub
    client's environment for --download-dir / --hf-token; log each no-effect flag."""
    if getattr(args, "tensor_parallel_size", 1) != 1:
        raise PoolserveError(
            f"{_TP} {args.tensor_parallel_size}: poolserve does not split a model over "
            "devices; use --data-parallel-size N for N copies of it"
        )
    mode = getattr(args, "vllm_tokenizer_mode", "auto")
    if mode not in _TOKENIZER_MODES:
        raise PoolserveError(
            f"--tokenizer-mode {mode}: poolserve loads Hugging Face tokenizers only "
            f"({' or '.join(_TOKENIZER_MODES)})"
        )
    for flag, env in _ENV_FLAGS.items():
        value = getattr(args, "vllm_" + flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            os.environ[env] = value  # read by huggingface_hub when the model is fetched
    for flag, _, why in _NO_EFFECT:
        value = getattr(args, "vllm_" + flag.lstrip("-").replace("-", "_"), None)
        if value not in (None, False):
            log.info("%s has no effect: %s", flag, why)
