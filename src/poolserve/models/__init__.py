"""Model loading, pooling and backends: the only layer that imports torch."""
