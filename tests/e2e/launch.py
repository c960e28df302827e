"""``python -m tests.e2e.launch serve ARGS``: ``poolserve serve`` with a test backend wrapper.

The e2e hardening tests start this instead of ``python -m poolserve`` when they need
a slow or faulty model in a real server process; poolserve itself has no fault hook.
Environment (all optional):

- ``POOLSERVE_TEST_DELAY``: seconds every forward sleeps;
- ``POOLSERVE_TEST_POISON``: a token id; a batch holding it raises in its forward.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import poolserve.runtime as runtime
from poolserve import cli
from tests.fixtures.hardening import control

_build_context = runtime.build_context


def _build_wrapped(config: Any) -> Any:
    ctx = _build_context(config)
    poison = os.environ.get("POOLSERVE_TEST_POISON")
    control(
        ctx,
        delay=float(os.environ.get("POOLSERVE_TEST_DELAY", "0")),
        poison=int(poison) if poison else None,
    )
    return ctx


if __name__ == "__main__":
    runtime.build_context = _build_wrapped  # cli.serve imports it at call time
    sys.exit(cli.main(sys.argv[1:]))
