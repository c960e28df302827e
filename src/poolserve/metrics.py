"""Prometheus metrics, one registry per served model (so tests can build many apps);
/metrics merges a server's registries, each series labelled with its model.

A multi-process server (``--api-server-count``, ``--data-parallel-size``) sets
``PROMETHEUS_MULTIPROC_DIR`` before it starts its children: every process then writes
its values there and ``/metrics`` on any front end reports the sum over all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

# The variable prometheus_client reads (at import) to share values between processes.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """The metric families of API.md, each labelled with the model name.

    Also the engine's observer (``on_batch`` etc.), so the engine stays free of
    any metrics library.
    """

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        self._families(self.registry)

    def _families(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "poolserve_requests", "Requests answered.", ["model", "endpoint", "status"], registry=r
        )
        self.request_duration = Histogram(
            "poolserve_request_duration_seconds",
            "Request wall time.",
            ["model", "endpoint"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_time = Histogram(
            "poolserve_queue_time_seconds",
            "Time from admission to the first batch.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.inference_time = Histogram(
            "poolserve_inference_time_seconds",
            "Forward time of one batch.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_size = Histogram(
            "poolserve_batch_size", "Sequences per batch.", ["model"], buckets=_SIZES, registry=r
        )
        self.batch_tokens = Histogram(
            "poolserve_batch_tokens",
            "Real tokens per batch.",
            ["model"],
            buckets=_TOKENS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "poolserve_queue_depth",
            "Sequences waiting for a batch.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",  # each engine process has its queue
        )
        self.requests_inflight = Gauge(
            "poolserve_requests_inflight",
            "POST requests admitted and not yet answered (being read, queued or computed).",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",  # each front end reports its own
        )
        self.prompt_tokens = Counter(
            "poolserve_prompt_tokens", "Prompt tokens computed.", ["model"], registry=r
        )
        self.computed_sequences = Counter(
            "poolserve_computed_sequences",
            "Sequences run through the model.",
            ["model"],
            registry=r,
        )
        self.dropped_sequences = Counter(
            "poolserve_dropped_sequences",
            "Queued sequences removed without computing (client gone).",
            ["model"],
            registry=r,
        )

    def on_batch(self, size: int, tokens: int, padded: int, seconds: float) -> None:
        self.inference_time.labels(self.model).observe(seconds)
        self.batch_size.labels(self.model).observe(size)
        self.batch_tokens.labels(self.model).observe(tokens)
        self.prompt_tokens.labels(self.model).inc(tokens)
        self.computed_sequences.labels(self.model).inc(size)

    def on_queue_time(self, seconds: float) -> None:
        self.queue_time.labels(self.model).observe(seconds)

    def on_queue_depth(self, sequences: int) -> None:
        self.queue_depth.labels(self.model).set(sequences)

    def on_dropped(self, sequences: int) -> None:
        self.dropped_sequences.labels(self.model).inc(sequences)

    def on_inflight(self, requests: int) -> None:
        self.requests_inflight.labels(self.model).set(requests)

    def on_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(self.model, endpoint, str(status)).inc()
        self.request_duration.labels(self.model, endpoint).observe(seconds)


class _Merged:
    """Several registries read as one: each family once, with every registry's samples
    (models built apart keep their own registries; one /metrics shows them all)."""

    def __init__(self, registries: list[CollectorRegistry]) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for registry in self.registries:
            for family in registry.collect():
                if family.name in families:
                    families[family.name].samples.extend(family.samples)
                else:
                    families[family.name] = family
        yield from families.values()


def exposition(metrics: Metrics | Sequence[Metrics]) -> tuple[bytes, str]:
    """(body, content type) of ``/metrics``: this process's registries (one per server,
    or per model when its models were built apart), or the sum over the server's
    processes when they share a multiprocess directory."""
    if os.environ.get(MULTIPROC_DIR):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    every = [metrics] if isinstance(metrics, Metrics) else list(metrics)
    registries = list({id(m.registry): m.registry for m in every}.values())
    if len(registries) == 1:
        return generate_latest(registries[0]), CONTENT_TYPE_LATEST
    return generate_latest(_Merged(registries)), CONTENT_TYPE_LATEST
