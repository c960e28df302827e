"""Assemble a served model: load it, wrap it in an engine, build the serving context.

This is where the layers meet (the CLI, the offline API and the tests call it), so
no lower layer has to import a higher one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

from . import backends, cpu
from .backends import Runnable
from .config import DEFAULT_MODEL_NAME, Config, ModelConfig
from .engine import Engine
from .engine.engine import EngineObserver
from .engine.remote import RemoteEngine
from .inputs.processor import InputProcessor
from .metrics import Metrics
from .models.activations import numpy_activation
from .models.base import CLASSIFIER, TOKENS, Activation, Backend, InputRules, ModelInfo
from .models.spec import ModelSpec, describe
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


@dataclass
class LoadedModel:
    """A described model with its backend built: what a context or a test needs."""

    spec: ModelSpec
    runnable: Runnable
    info: ModelInfo  # spec.info with the device, dtype and score activation filled in

    @property
    def backend(self) -> Backend:
        return self.runnable.backend

    @property
    def tokenizer(self) -> Any:
        return self.spec.tokenizer

    @property
    def rules(self) -> InputRules:
        return self.spec.rules


def score_activation(path: str, *, trusted: bool = False) -> Activation:
    """The activation class ``path`` as a numpy function: computed in numpy where
    ``poolserve.models.activations`` knows the class, else run by torch.

    Raises ModelLoadError for a class that does not exist or is not an activation.
    """
    found = numpy_activation(path)
    if found is not None:
        return found
    from .backends.torch.pooler import TorchActivation

    return TorchActivation(path, trusted=trusted)


def model_info(spec: ModelSpec, dtype: str, device: str) -> ModelInfo:
    """The serving facts of ``spec`` run in ``dtype`` on ``device`` (score activation built)."""
    info = dataclasses.replace(spec.info, dtype=dtype, device=device)
    if spec.score_activation is not None:
        info = dataclasses.replace(
            info,
            score_activation=score_activation(
                spec.score_activation, trusted=spec.trust_remote_code and not spec.decoder
            ),
        )
    return info


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Describe the model of ``cfg`` and build its backend (ModelLoadError on failure)."""
    spec = describe(cfg)
    runnable = backends.build(spec, cfg)
    info = model_info(spec, runnable.dtype, runnable.device)
    log.info(
        "loaded %s: task=%s backend=%s dtype=%s device=%s max_model_len=%d %s",
        spec.root,
        info.task,
        runnable.runtime,
        info.dtype,
        info.device,
        info.max_model_len,
        _head_summary(spec, info),
    )
    return LoadedModel(spec=spec, runnable=runnable, info=info)


def _head_summary(spec: ModelSpec, info: ModelInfo) -> str:
    if info.head == TOKENS:
        step = f"STEP (tag {spec.step_tag_id})" if spec.step_tag_id is not None else "ALL"
        return f"per-token width={info.dimension} {step}"
    pooling = "+".join(spec.pooling_modes)
    if info.head == CLASSIFIER:
        activation = (spec.score_activation or "").rsplit(".", 1)[-1]
        return f"labels={info.num_labels} pooling={pooling} score activation={activation}"
    return f"dim={info.dimension} pooling={pooling}" + (" normalize" if info.normalize else "")


def build_engine(
    config: Config,
    loaded: LoadedModel,
    *,
    cores: int | None = None,
    observer: EngineObserver | None = None,
) -> Engine:
    """The engine over ``loaded``'s backend (warmed up), its threads set for ``cores``
    (default: every core this process may use)."""
    runnable = loaded.runnable
    cores = cores or len(os.sched_getaffinity(0))
    workers = config.engine.model_workers or min(cores, runnable.default_workers(cores))
    threads = 1
    if runnable.on_cpu:
        threads = runnable.configure_threads(workers, cores)
        log.info("cpu: %s; %d model worker(s) x %d thread(s)", cpu.describe(), workers, threads)
    loaded.backend.warmup()
    return Engine(
        loaded.backend,
        max_num_batched_tokens=config.engine.max_num_batched_tokens
        or default_token_budget(loaded.info.device, threads),
        max_num_seqs=config.engine.max_num_seqs,
        max_queued_requests=config.engine.max_queued_requests,
        max_request_tokens=config.engine.max_request_tokens,
        workers=workers,
        observer=observer,
    )


def bounded_rules(rules: InputRules, config: Config) -> InputRules:
    """``rules``, with chunked processing and no max_embed_len capped at
    --max-request-tokens: no request may hand the model more, and the cap keeps the
    tokenization of a huge text to a measured prefix (inputs/processor.py)."""
    if rules.chunked and rules.max_embed_len is None:
        return dataclasses.replace(rules, max_embed_len=config.engine.max_request_tokens)
    return rules


def build_context(config: Config, *, cores: int | None = None) -> ServingContext:
    """Load the model of ``config`` and return a ready (not yet started) serving context,
    its engine's threads sized for ``cores`` (default: every core this process may use).

    Raises ModelLoadError with a one-line message when the model cannot be loaded.
    """
    loaded = load_model(config.model)
    names = served_names(config)
    metrics = Metrics(names[0])
    return ServingContext(
        engine=build_engine(config, loaded, cores=cores, observer=metrics),
        processor=InputProcessor(loaded.tokenizer, bounded_rules(loaded.rules, config)),
        info=loaded.info,
        served_names=names,
        metrics=metrics,
        max_client_batch_size=config.engine.max_client_batch_size,
    )


def frontend_context(
    config: Config, engine_paths: list[str], dtype: str, device: str
) -> ServingContext:
    """A front-end process's context: the model described (tokenizer, facts), not loaded;
    its engine the engine processes listening at ``engine_paths``."""
    spec = describe(config.model)
    names = served_names(config)
    engine = RemoteEngine(
        engine_paths,
        max_num_batched_tokens=config.engine.max_num_batched_tokens or 0,
        max_num_seqs=config.engine.max_num_seqs,
        max_queued_requests=config.engine.max_queued_requests,
        max_request_tokens=config.engine.max_request_tokens,
    )
    return ServingContext(
        engine=engine,
        processor=InputProcessor(spec.tokenizer, bounded_rules(spec.rules, config)),
        info=model_info(spec, dtype, device),
        served_names=names,
        metrics=Metrics(names[0]),
        max_client_batch_size=config.engine.max_client_batch_size,
    )
