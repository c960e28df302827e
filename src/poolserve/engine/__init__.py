"""The async engine: admission, a length-sorted queue, a token-budget packer, the model thread."""

from .engine import Engine, EngineHandle, EngineStats
from .packer import choose_window

__all__ = ["Engine", "EngineHandle", "EngineStats", "choose_window"]
