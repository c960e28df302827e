"""A sentence-transformers peer, run as a subprocess (possibly from another venv).

    python st_peer.py MODEL_DIR BACKEND TEXTS_JSON OUT_NPY

Copies the model folder (an export writes into it), loads
``SentenceTransformer(copy, backend=BACKEND)`` with default settings, warms up, times
``encode(texts, batch_size=32)`` and prints ``{"seconds": ...}``; the vectors go to
OUT_NPY so the caller can compare them with the float32 reference.
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
    model_dir, backend, texts_file, out = sys.argv[1:5]
    texts = json.loads(Path(texts_file).read_text(encoding="utf-8"))
    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        copy = shutil.copytree(model_dir, f"{tmp}/model")
        model = SentenceTransformer(copy, device="cpu", backend=backend)
        model.encode(texts[:64], batch_size=32)
        start = time.perf_counter()
        vectors = model.encode(texts, batch_size=32, convert_to_numpy=True)
        seconds = time.perf_counter() - start
    np.save(out, np.asarray(vectors, dtype=np.float32))
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
