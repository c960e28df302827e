"""A sentence-transformers peer, run as a subprocess (possibly from another venv).

    python st_peer.py embed|rerank MODEL_DIR BACKEND INPUTS_JSON OUT_NPY

Copies the model folder (an export writes into it), loads ``SentenceTransformer`` (embed:
inputs are texts) or ``CrossEncoder`` (rerank: inputs are [query, document] pairs) with
``backend=BACKEND`` and default settings, warms up, times ``encode`` / ``predict`` with
``batch_size=32`` and prints ``{"seconds": ...}``; the outputs go to OUT_NPY so the
caller can compare them with its reference.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    kind, model_dir, backend, inputs_file, out = sys.argv[1:6]
    inputs = json.loads(Path(inputs_file).read_text(encoding="utf-8"))
    from sentence_transformers import CrossEncoder, SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        copy = shutil.copytree(model_dir, f"{tmp}/model")
        if kind == "rerank":
            cross = CrossEncoder(copy, device="cpu", backend=backend)
            pairs = [tuple(p) for p in inputs]
            cross.predict(pairs[:64], batch_size=32)
            start = time.perf_counter()
            vectors = cross.predict(pairs, batch_size=32)
        else:
            model = SentenceTransformer(copy, device="cpu", backend=backend)
            model.encode(inputs[:64], batch_size=32)
            start = time.perf_counter()
            vectors = model.encode(inputs, batch_size=32, convert_to_numpy=True)
        seconds = time.perf_counter() - start
    np.save(out, np.asarray(vectors, dtype=np.float32))
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
