"""nomic-bert and XLM-RoBERTa in MLX against transformers (torch), on tiny random models.

The weights come from ``data/tiny_encoders.py`` (seeded numpy); the reference outputs from
``data/make_tiny_references.py``, run once with torch and committed. (BERT itself is checked
against sentence-transformers on the real all-MiniLM-L6-v2 in ``test_embed_e2e.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from tests.data import tiny_encoders as tiny
from tests.test_embedding import write_tokenizer
from worker import bert, nomic_bert
from worker.bert import UnsupportedModel
from worker.embedding import Encoder, is_encoder, pool

REFERENCE = json.loads((Path(__file__).parent / "data" / "tiny_references.json").read_text())


def outputs(model: bert.BertModel | nomic_bert.NomicBertModel, pad: int) -> tuple[np.ndarray, np.ndarray]:
    ids, mask = mx.array(tiny.input_ids(pad)), mx.array(tiny.ATTENTION_MASK)
    states = model(ids, mask)
    return np.array(pool(states, mask, ["mean"])), np.array(pool(states, mask, ["cls"]))


def arrays(weights: dict[str, np.ndarray]) -> dict[str, mx.array]:
    return {name: mx.array(value) for name, value in weights.items()}


@pytest.mark.parametrize("names", ["published", "transformers"])
def test_nomic_matches_transformers(names: str) -> None:
    weights = tiny.nomic_weights()
    if names == "transformers":
        weights = tiny.nomic_transformers_names(weights)
    model = nomic_bert.build(tiny.NOMIC_CONFIG, arrays(weights), float32=True)
    mean, cls = outputs(model, 0)
    assert np.allclose(mean, REFERENCE["nomic_bert"]["mean"], atol=1e-4)
    assert np.allclose(cls, REFERENCE["nomic_bert"]["cls"], atol=1e-4)
    assert model.config.max_tokens == 64 and model.config.rope_theta == 1000.0


def test_xlm_roberta_matches_transformers() -> None:
    model = bert.build(tiny.ROBERTA_CONFIG, arrays(tiny.roberta_weights()), float32=True)
    mean, cls = outputs(model, tiny.ROBERTA_CONFIG["pad_token_id"])
    assert np.allclose(mean, REFERENCE["xlm-roberta"]["mean"], atol=1e-4)
    assert np.allclose(cls, REFERENCE["xlm-roberta"]["cls"], atol=1e-4)
    assert model.config.max_tokens == 24 - 1 - 1  # positions start after the pad id


def test_nomic_config_spellings_and_refusals() -> None:
    native = {
        "model_type": "nomic_bert",
        "vocab_size": 8,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
        "max_position_embeddings": 128,
        "hidden_act": "silu",
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }
    config = nomic_bert.NomicConfig.from_dict(native)
    assert (config.hidden_size, config.max_tokens, config.rope_theta) == (8, 128, 10000.0)
    for change in (
        {"prenorm": True},
        {"rotary_emb_fraction": 0.5},
        {"rotary_emb_interleaved": True},
        {"rotary_scaling_factor": 2.0},
        {"activation_function": "gelu"},
    ):
        with pytest.raises(UnsupportedModel):
            nomic_bert.NomicConfig.from_dict({**tiny.NOMIC_CONFIG, **change})


def test_encoder_on_a_nomic_directory(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny.NOMIC_CONFIG))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), arrays(tiny.nomic_weights()))
    assert is_encoder(tmp_path)
    encoder = Encoder(tmp_path)
    assert encoder.info()["context_length"] == 64 and encoder.info()["embedding_length"] == 32
    texts = ["hello world", "why is the sky blue?", "the quick brown fox"]
    batched, tokens = encoder.embed(texts)
    alone = np.stack([encoder.embed([text])[0][0] for text in texts])
    assert np.allclose(batched, alone, atol=1e-5)
    assert tokens == 4 + 8 + 6
