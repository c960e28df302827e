"""``python -m tests.e2e.launch serve ARGS``: ``poolserve serve`` with a test backend wrapper.

The e2e hardening tests start this instead of ``python -m poolserve`` when they need
a slow or faulty model in a real server process; poolserve itself has no fault hook.
Environment (all optional):

- ``POOLSERVE_TEST_DELAY``: seconds every forward sleeps;
- ``POOLSERVE_TEST_POISON``: a token id; a batch holding it raises in its forward.

The wrapper goes around every backend ``poolserve.backends.build`` returns. It is
installed when this module is imported, so the engine processes of a multi-process
server (spawned children re-import the parent's main module) get it too.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import poolserve.backends as backends
from poolserve import cli
from tests.fixtures.hardening import ControlledBackend

_build = backends.build


def _build_wrapped(spec: Any, cfg: Any) -> Any:
    runnable = _build(spec, cfg)
    poison = os.environ.get("POOLSERVE_TEST_POISON")
    runnable.backend = ControlledBackend(
        runnable.backend,
        delay=float(os.environ.get("POOLSERVE_TEST_DELAY", "0")),
        poison=int(poison) if poison else None,
    )
    return runnable


backends.build = _build_wrapped  # runtime.load_model calls it at call time

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
