"""The batch sub-commands' parsers: ``embed``, ``classify``, ``score`` and ``run-batch``.

Each parser sets ``handler(args) -> exit code``; the modules that do the work are
imported only when their command runs, so ``poolserve serve`` stays quick to start.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_batch_commands(sub: Any) -> None:
    """Add the batch commands to the ``poolserve`` sub-parsers ``sub``."""
    from . import file_cli, run_batch_cli

    file_cli.add_parsers(sub)
    run_batch_cli.add_parser(sub)


__all__ = ["add_batch_commands", "argparse"]
