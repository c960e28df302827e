"""Batch work on the same engine as the server: file jobs (``poolserve embed|classify|score``)
and OpenAI/vLLM batch files (``poolserve run-batch``)."""
