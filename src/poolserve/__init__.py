"""poolserve: a fast, strict server for pooling transformer models.

The HTTP server is a drop-in for vLLM's pooling API; the same engine backs the
offline API (:class:`poolserve.LLM`, shaped as ``vllm.LLM``; the array-level
:class:`poolserve.offline.PoolingModel`), the batch commands and the Ray integrations.
``from poolserve import LLM`` loads the engine's modules on first use only.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["LLM", "PoolingParams", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import poolserve` (the CLI, the API layers) must not load the engine.
    if name in ("LLM", "PoolingParams"):
        from . import llm

        return getattr(llm, name)
    raise AttributeError(f"module 'poolserve' has no attribute {name!r}")
