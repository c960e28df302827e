"""The async engine: admission, a length-sorted queue, a token-budget packer, the model thread."""

from .engine import Engine, EngineStats
from .packer import choose_window

__all__ = ["Engine", "EngineStats", "choose_window"]
