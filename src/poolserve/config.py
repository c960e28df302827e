"""Frozen configuration of a poolserve process.

Each field carries its help text in ``metadata["help"]``; ``cli.py`` builds the
command-line flags from these dataclasses (vLLM's flag names where vLLM has one),
so a flag and its field can never drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

TASKS = ("auto", "embed", "classify", "score", "reward")
CONVERTS = ("auto", "none", "embed", "classify", "reward")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "torch", "openvino", "onnxruntime")


def _list_field(default: tuple[str, ...], help_text: str) -> Any:
    """A flag taking one or more values, or vLLM's JSON-list form of them."""
    return field(default=default, metadata={"help": help_text, "nargs": "+", "parse": "list"})


@dataclass(frozen=True)
class ModelConfig:
    """What to load and how to pool it."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "A local directory, a Hugging Face id, or an installed model package. "
            "Omitted: the packaged sentence-transformers/all-MiniLM-L6-v2.",
            "positional": True,
        },
    )
    task: str = field(
        default="auto",
        metadata={"help": "What the model serves; auto reads the checkpoint.", "choices": TASKS},
    )
    convert: str = field(
        default="auto",
        metadata={
            "help": "Adapt a *ForCausalLM checkpoint to a pooling task.",
            "choices": CONVERTS,
        },
    )
    runner: str = field(
        default="pooling",
        metadata={
            "help": "Accepted for vLLM compatibility; only 'pooling' exists.",
            "choices": ("auto", "pooling"),
        },
    )
    served_model_name: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Names clients may use in `model`; the first is the default.",
            "nargs": "+",
        },
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer path or id; defaults to the model's."}
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hugging Face revision (branch, tag or commit)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the checkpoint."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype; auto is bfloat16 where the hardware runs it natively "
            "(CUDA, CPUs with AVX512-BF16 or AMX) and float32 elsewhere.",
            "choices": DTYPES,
        },
    )
    backend: str = field(
        default="auto",
        metadata={
            "help": "The runtime that runs the model; auto picks the fastest one measured "
            "for this machine that can run the model kind (README: Backends).",
            "choices": BACKENDS,
        },
    )
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "int8: static int8 weights and activations (OpenVINO + NNCF), checked "
            "at every start against the float model (--min-quantized-cosine).",
            "choices": ("int8",),
        },
    )
    min_quantized_cosine: float = field(
        default=0.99,
        metadata={
            "help": "--quantization int8 refuses to start when the minimum cosine between "
            "int8 and float outputs on a fixed held-out set is below this."
        },
    )
    max_model_len: int | None = field(
        default=None,
        metadata={
            "help": "Longest input in tokens (accepts 1k, 25.6k). Default: the model's.",
            "parse": "size",
        },
    )
    override_pooler_config: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "JSON overriding the pooler (pooling_type, "
            "normalize, activation, softmax, step_tag_id, returned_token_ids); newest "
            "vLLM's --pooler-config, also in its dotted form (--pooler-config.KEY VALUE).",
            "parse": "json",
            "aliases": ("--pooler-config",),
        },
    )
    hf_overrides: dict[str, Any] | None = field(
        default=None, metadata={"help": "JSON merged into config.json.", "parse": "json"}
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "A chat template (Jinja text or a file path)."}
    )
    auto_truncate: bool = field(
        default=False,
        metadata={"help": "Truncate over-long inputs to the max length instead of a 400."},
    )
    device: str = field(
        default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto (cuda when present)."}
    )
    onednn_linear: bool = field(
        default=False,
        metadata={
            "help": "CPU float32 encoders: run Linear layers through oneDNN with pre-packed "
            "weights (verified exact at load; a few percent faster). Off by default: its "
            "per-shape caches keep growing the server's memory under varied batch shapes "
            "(MiniLM: +1 GB over 4,000 forwards of random shapes, still rising)."
        },
    )


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and admits work."""

    max_num_batched_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Padded tokens (rows x longest row) one forward may take. Default: "
            "512 per CPU thread of a worker (batches that stay in L2 measured fastest), "
            "16384 on GPU.",
            "parse": "size",
        },
    )
    model_workers: int | None = field(
        default=None,
        metadata={
            "help": "Batches computed at once, each on its own thread (default: "
            "1 on GPU; on CPU 2 up to 8 cores, then one per 4 cores)."
        },
    )
    max_num_seqs: int = field(default=256, metadata={"help": "Sequences one forward may take."})
    data_parallel_size: int = field(
        default=1,
        metadata={
            "help": "Engine processes, each with its own copy of the model: one per GPU, or "
            "several on one GPU or CPU for small models; front ends send each request to "
            "the one with the fewest tokens in flight. On a CPU they share the cores.",
            "aliases": ("-dp",),
        },
    )
    max_queued_requests: int = field(
        default=1024,
        metadata={
            "help": "Requests admitted at once (being read, tokenized, queued or computed); "
            "past it new ones get 429 with Retry-After. Alias: --max-concurrent-requests.",
            "aliases": ("--max-concurrent-requests",),
        },
    )
    max_client_batch_size: int = field(
        default=4096, metadata={"help": "Inputs one request may carry (413 past it)."}
    )
    max_request_tokens: int = field(
        default=2**20,
        metadata={
            "help": "Tokens one request may hand the model, all inputs together (413 past "
            "it; /tokenize too). Accepts 1M forms.",
            "parse": "size",
        },
    )


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP side."""

    host: str = field(default="0.0.0.0", metadata={"help": "Address to bind."})
    port: int = field(default=8000, metadata={"help": "Port to bind."})
    api_key: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Keys accepted as `Authorization: Bearer K` (env POOLSERVE_API_KEY).",
            "nargs": "+",
        },
    )
    root_path: str = field(default="", metadata={"help": "ASGI root path behind a proxy."})
    allowed_origins: tuple[str, ...] = _list_field(
        ("*",),
        "CORS origins allowed: any (*) by default, as vLLM; values or vLLM's JSON list "
        "('[\"https://app.example\"]'); '[]' turns CORS off.",
    )
    allowed_methods: tuple[str, ...] = _list_field(
        ("*",), "CORS methods allowed (values or a JSON list)."
    )
    allowed_headers: tuple[str, ...] = _list_field(
        ("*",), "CORS request headers allowed (values or a JSON list)."
    )
    allow_credentials: bool = field(default=False, metadata={"help": "CORS: allow credentials."})
    uvicorn_log_level: str = field(
        default="info",
        metadata={
            "help": "uvicorn's log level.",
            "choices": ("critical", "error", "warning", "info", "debug", "trace"),
        },
    )
    enable_log_requests: bool = field(
        default=False,
        metadata={"help": "Add each request's body (cut to 2000 characters) to its log line."},
    )
    disable_log_requests: bool = field(
        default=False,
        metadata={
            "help": "No per-request log line (by default one line per request: id, "
            "endpoint, status, inputs, tokens, queue and compute time; never the inputs)."
        },
    )
    request_timeout: float | None = field(
        default=None,
        metadata={
            "help": "Seconds a POST request may take, body upload included; past it 504 and "
            "its queued work is dropped. Default: no limit."
        },
    )
    shutdown_grace: float = field(
        default=30.0,
        metadata={
            "help": "On SIGTERM/SIGINT: seconds to finish in-flight and queued requests "
            "before the rest are cancelled."
        },
    )
    max_request_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "Largest request body accepted (413 past it). Accepts 64M forms.",
            "parse": "size",
        },
    )
    max_inflight_bytes: int = field(
        default=1024**3,
        metadata={
            "help": "Request body bytes all admitted requests may hold at once (a request "
            "holds its body until answered); past it 429 with Retry-After, so memory stays "
            "bounded whatever clients send. Accepts 1G forms.",
            "parse": "size",
        },
    )
    header_timeout: float = field(
        default=10.0,
        metadata={
            "help": "Seconds a client has to send a whole request head: from connecting, "
            "or from the first byte of its next request on a kept-alive connection. Past "
            "it 408 and the connection closes (a silent close if nothing came). A head "
            "is a few hundred bytes, one round trip; 0: no limit."
        },
    )
    body_timeout: float = field(
        default=60.0,
        metadata={
            "help": "Seconds a client has to send a whole request body once its head is "
            "in (a stalled body, a Content-Length longer than the body); past it 408 "
            "and the connection closes. 60 s takes a 1 MB body at 17 kB/s, a 64 MiB one "
            "(--max-request-bytes) at 9 Mbit/s: raise it for big bodies on slow links. "
            "0: no limit."
        },
    )
    keep_alive_timeout: float = field(
        default=5.0,
        metadata={
            "help": "Seconds a kept-alive connection may sit idle after an answer before "
            "it is closed (uvicorn's and vLLM's 5). Behind a proxy or load balancer "
            "that reuses connections, set it above the proxy's own idle timeout."
        },
    )
    max_connections: int | None = field(
        default=None,
        metadata={
            "help": "Open connections this process keeps; a new one past it gets 503 "
            "and is closed at once. Default: the open-file limit (ulimit -n) less 256 "
            "for the process's own files, at most 4096, so the server refuses cleanly "
            "before it runs out of descriptors. 0: no cap."
        },
    )
    ssl_keyfile: str | None = field(default=None, metadata={"help": "TLS key file."})
    ssl_certfile: str | None = field(default=None, metadata={"help": "TLS certificate file."})
    api_server_count: int | None = field(
        default=None,
        metadata={
            "help": "HTTP front-end processes on the one port, each parsing and tokenizing, "
            "all feeding the engine process(es) over Unix sockets as raw arrays. Default: 1 "
            "on a CPU (the model needs the cores; one front end is fastest on 2 cores), "
            "up to 4 (a quarter of the cores) with a GPU.",
            "aliases": ("-asc",),
        },
    )


@dataclass(frozen=True)
class Config:
    """Everything a poolserve process is started with."""

    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """Parse ``"512"``, ``"1k"``, ``"25.6k"``, ``"1K"``, ``"64M"`` into an int.

    As vLLM's ``human_readable_int``: lower-case units are decimal (1k = 1000),
    upper-case ones binary (1K = 1024, 64M = 64 * 2**20). Raises ValueError for
    anything else, and for a fraction of a unit that is not a whole number.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    # Decimal, not float: 1.001k is exactly 1001 (float would make it 1000.9999...).
    number, unit = Decimal(match.group(1)), match.group(2)
    if unit.isupper() and "." in match.group(1):  # vLLM refuses these too
        raise ValueError(f"no decimals with a binary unit: {text!r} (did you mean {unit.lower()}?)")
    factor = {
        "": 1,
        "k": 1_000,
        "m": 1_000_000,
        "g": 1_000_000_000,
        "K": 2**10,
        "M": 2**20,
        "G": 2**30,
    }[unit]
    value = number * factor
    if value != value.to_integral_value():
        raise ValueError(f"not a whole number: {text!r}")
    return int(value)
