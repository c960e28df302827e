"""Injected by benchmarks/frontend_throughput.py (on PYTHONPATH): a backend whose forward
costs nothing, so the benchmark measures the server around the model.

Active only when POOLSERVE_BENCH_FREE_DIM is set; it replaces ``poolserve.backends.build``
(the one entry point every poolserve version since the backend split calls) in this
interpreter and in every process poolserve starts with the same environment.
"""

from __future__ import annotations

import os

if os.environ.get("POOLSERVE_BENCH_FREE_DIM"):
    import numpy as np

    import poolserve.backends as _backends

    _DIM = int(os.environ["POOLSERVE_BENCH_FREE_DIM"])
    _ROWS = np.random.default_rng(0).standard_normal((4096, _DIM)).astype(np.float32)

    class FreeBackend:
        """One precomputed vector per row: no model work at all."""

        def forward(self, batch):  # type: ignore[no-untyped-def]
            n = len(batch.sequences)
            return _ROWS[:n] if n <= len(_ROWS) else np.resize(_ROWS, (n, _DIM))

        def warmup(self) -> None:
            pass

    def _free_build(spec, cfg):  # type: ignore[no-untyped-def]
        return _backends.Runnable(
            backend=FreeBackend(),
            runtime="free (benchmark)",
            device="cpu",
            dtype="float32",
            set_threads=lambda n: None,
        )

    _backends.build = _free_build
