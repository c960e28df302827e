"""Write a random-weight BERT encoder shaped like MiniLM-L6 (6 x 384, 12 heads).

For throughput runs where the packaged model cannot travel (e.g. a GPU box with no
network): ``python benchmarks/make_minilm_sized.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.tiny_models import build_encoder

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print(build_encoder(out, "bert", hidden=384, layers=6, heads=12, max_pos=512))
