"""poolserve: a fast, strict server for pooling transformer models.

The HTTP server is a drop-in for vLLM's pooling API; the same engine backs the
offline API (:class:`poolserve.offline.PoolingModel`) and the batch command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
