"""Prometheus metrics, one registry per served model (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
            "poolserve_queue_depth", "Sequences waiting for a batch.", ["model"], registry=r
        )
        self.requests_inflight = Gauge(
            "poolserve_requests_inflight",
            "POST requests admitted and not yet answered (being read, queued or computed).",
            ["model"],
            registry=r,
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
