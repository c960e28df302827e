"""Assemble a served model: load it, wrap it in an engine, build the serving context.

This is where the layers meet (the CLI, the offline API and the tests call it), so
no lower layer has to import a higher one.
"""

from __future__ import annotations

import logging

from . import cpu
from .config import DEFAULT_MODEL_NAME, Config
from .engine import Engine
from .inputs.processor import InputProcessor
from .metrics import Metrics
from .serving.context import ServingContext

log = logging.getLogger("poolserve")


def served_names(config: Config) -> tuple[str, ...]:
    """``--served-model-name`` values, else the model argument, else the default's name."""
    if config.model.served_model_name:
        return tuple(config.model.served_model_name)
    return (config.model.model or DEFAULT_MODEL_NAME,)


def default_token_budget(device: str, threads_per_worker: int = 1) -> int:
    """Padded tokens per forward when the flag is not given.

    Measured on a 2-core AVX-512 CPU (MiniLM-L6, 1 thread per worker, HTTP load):
    256 -> 95, 512 -> 111, 1024 -> 103, 4096 -> 86 texts/s: a batch whose
    activations stay in the core's L2 wins. GPUs want big batches.
    """
    return 512 * threads_per_worker if device.startswith("cpu") else 16384


def build_context(config: Config) -> ServingContext:
    """Load the model of ``config`` and return a ready (not yet started) serving context.

    Raises ModelLoadError with a one-line message when the model cannot be loaded.
    """
    # torch is imported only from here down
    from .models.dtype import configure_cpu_threads, default_workers
    from .models.loader import load_model

    loaded = load_model(config.model)
    workers = config.engine.model_workers or default_workers(loaded.backend.device)
    threads = 1
    if loaded.backend.device.type == "cpu":
        threads = configure_cpu_threads(workers)
        log.info("cpu: %s; %d model worker(s) x %d thread(s)", cpu.describe(), workers, threads)
    loaded.backend.warmup()
    names = served_names(config)
    metrics = Metrics(names[0])
    engine = Engine(
        loaded.backend,
        max_num_batched_tokens=config.engine.max_num_batched_tokens
        or default_token_budget(loaded.info.device, threads),
        max_num_seqs=config.engine.max_num_seqs,
        max_queued_requests=config.engine.max_queued_requests,
        max_request_tokens=config.engine.max_request_tokens,
        workers=workers,
        observer=metrics,
    )
    return ServingContext(
        engine=engine,
        processor=InputProcessor(loaded.tokenizer, loaded.rules),
        info=loaded.info,
        served_names=names,
        metrics=metrics,
        max_client_batch_size=config.engine.max_client_batch_size,
    )
