"""numpy -> torch for callers above the backends (the offline API's vLLM-shaped outputs
hold ``torch.Tensor`` data, as vLLM's do)."""

from __future__ import annotations

import numpy as np
import torch


def as_tensor(values: np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``values`` (shares memory when ``values`` is contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(values))
