"""``poolserve embed`` / ``classify`` / ``score``: resumable file jobs on the offline engine.

Each command reads a .txt/.jsonl/.csv/.parquet file in windows, computes every row on
the same engine as the server (or on a Ray actor pool with ``--ray``) and writes a
.parquet/.jsonl/.npy file in input order; killed and rerun with the same arguments it
resumes from its checkpoint. See docs/file-jobs.md. Exit status: 0 done (also with
skipped bad rows), 1 a bad row with ``--on-error fail``, 2 refused (changed arguments
on resume, unreadable input).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..config import EngineConfig, ModelConfig
from ..flags import add_dataclass_flags, config_from

_HELP = {
    "embed": "Embed every row of a file (resumable; .txt/.jsonl/.csv/.parquet in).",
    "classify": "Classify every row of a file (class probabilities and label).",
    "score": "Score every (text_1, text_2) pair of a file (cross-encoder or cosine).",
}


# Rows per window. One process: large, so length-sorting packs batches well. On Ray,
# windows are the unit of work per actor: smaller, so a few actors share a job evenly
# (5,000 rows, 2 actors on 2 cores: one 8192-row window left one actor idle, 0.55x
# one process; 1,250-row windows 0.83x).
WINDOW = 8192
RAY_WINDOW = 2048


def add_parsers(sub: Any) -> None:
    """Register ``embed``, ``classify`` and ``score`` on the ``poolserve`` sub-parsers."""
    for task in ("embed", "classify", "score"):
        p = sub.add_parser(task, help=_HELP[task], description=_HELP[task])
        add_dataclass_flags(p, ModelConfig, "model")
        add_dataclass_flags(p, EngineConfig, "engine")
        _add_job_flags(p, task)
        p.set_defaults(handler=run_command, task=task)


def _add_job_flags(p: argparse.ArgumentParser, task: str) -> None:
    g = p.add_argument_group("file job")
    g.add_argument(
        "--input",
        "-i",
        default="-",
        help="Input .txt (one text per line; empty lines skipped), .jsonl, .csv (with a "
        "header) or .parquet; - for text lines on stdin (not resumable).",
    )
    g.add_argument(
        "--output",
        "-o",
        default="-",
        help="Output .parquet, .jsonl or .npy; - for JSONL on stdout (not resumable).",
    )
    g.add_argument("--input-format", choices=("txt", "jsonl", "csv", "parquet"), default=None)
    g.add_argument("--output-format", choices=("parquet", "jsonl", "npy"), default=None)
    if task == "score":
        g.add_argument("--text-1-field", default="text_1", help="Field of the first text.")
        g.add_argument("--text-2-field", default="text_2", help="Field of the second text.")
    else:
        g.add_argument("--text-field", default="text", help="Field holding the text.")
    g.add_argument("--id-field", default=None, help="Field carried to the output as 'id'.")
    g.add_argument(
        "--window",
        type=_positive,
        default=None,
        help="Rows per window: the unit of length-sorting, checkpointing and Ray tasks "
        f"(default {WINDOW}; {RAY_WINDOW} with --ray, so every actor gets several).",
    )
    g.add_argument(
        "--chunk", type=_positive, default=256, help="Rows per engine call (several in flight)."
    )
    g.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="A bad row: stop with exit 1 (fail) or keep going with a null value and list "
        "it in OUTPUT.errors.jsonl (skip). Either way it is named on stderr.",
    )
    g.add_argument(
        "--restart",
        action="store_true",
        help="Discard a checkpoint of this output made with other arguments.",
    )
    g.add_argument("--no-progress", action="store_true", help="No progress bar or log lines.")
    g.add_argument(
        "--truncate-prompt-tokens",
        type=int,
        default=None,
        help="Truncate inputs to this many tokens (-1: the max length).",
    )
    if task == "embed":
        g.add_argument(
            "--normalize",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Override the model's normalization.",
        )
        g.add_argument("--dimensions", type=int, default=None, help="Matryoshka dimensions.")
    else:
        g.add_argument(
            "--activation",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Apply the model's activation (default) or return raw logits.",
        )
    g.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="Compute on a Ray actor pool (ADDRESS of the cluster; 'auto' if omitted).",
    )
    g.add_argument("--ray-actors", type=_positive, default=None, help="Ray actors (engines).")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_spec(args: argparse.Namespace) -> Any:
    """The :class:`~.job.JobSpec` of parsed flags."""
    from .job import JobSpec
    from .window import TaskOptions

    task = args.task
    cfg = config_from(args, ("model", "engine"))
    model_options = {**dataclasses.asdict(cfg.model), **dataclasses.asdict(cfg.engine)}
    options = TaskOptions(
        task=task,
        normalize=getattr(args, "normalize", None),
        dimensions=getattr(args, "dimensions", None),
        truncate_prompt_tokens=args.truncate_prompt_tokens,
        activation=getattr(args, "activation", None),
        chunk=args.chunk,
    )
    if task == "score":
        fields = {"text_1": args.text_1_field, "text_2": args.text_2_field}
    else:
        fields = {"text": args.text_field}
    if args.id_field:
        fields["id"] = args.id_field
    return JobSpec(
        input=args.input,
        output=args.output,
        options=options,
        model_options=model_options,
        fields=fields,
        window=args.window or (RAY_WINDOW if args.ray is not None else WINDOW),
        on_error=args.on_error,
        restart=args.restart,
        input_format=args.input_format,
        output_format=args.output_format,
        progress=not args.no_progress,
    )


def run_command(args: argparse.Namespace) -> int:
    """The handler of the three commands: run (or resume) the job, print a summary."""
    from .files import InputError
    from .job import JobError, run_job
    from .window import local_compute

    try:
        spec = build_spec(args)
        if args.ray is not None:
            from ..scale.ray_data import ray_compute

            compute = ray_compute(args.ray, args.ray_actors, spec.model_options, spec.options)
        else:
            compute = local_compute(spec.model_options, spec.options)
        summary = run_job(spec, compute)
    except (JobError, InputError, OSError) as exc:  # OSError: no such input, disk full
        print(f"poolserve {args.task}: error: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, JobError) else 2
    except KeyboardInterrupt:
        print(
            f"poolserve {args.task}: interrupted; finished windows are checkpointed, "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(summary.line(args.output), file=sys.stderr)
    return 0
