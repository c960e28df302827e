"""Prometheus metrics, one registry per served model (so tests can build many apps).

A multi-process server (``--api-server-count``, ``--data-parallel-size``) sets
``PROMETHEUS_MULTIPROC_DIR`` before it starts its children: every process then writes
its values there and ``/metrics`` on any front end reports the sum over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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
        r = self.registry
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


def exposition(metrics: Metrics) -> tuple[bytes, str]:
    """(body, content type) of ``/metrics``: this process's registry, or the sum over the
    server's processes when they share a multiprocess directory."""
    registry = metrics.registry
    if os.environ.get(MULTIPROC_DIR):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
