"""Tiny random encoders, the same wherever they are built (numpy only, seeded).

``make_tiny_references.py`` runs them through transformers (torch) once;
``tests/test_tiny_encoders.py`` through mlxd's MLX implementations. The nomic-bert weights
and configuration keys are spelled as in the published nomic-embed-text checkpoints; the
XLM-RoBERTa ones as transformers saves them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HIDDEN, LAYERS, HEADS, INNER, VOCAB = 32, 2, 4, 48, 40
NOMIC_CONFIG: dict[str, Any] = {
    "model_type": "nomic_bert",
    "architectures": ["NomicBertModel"],
    "activation_function": "swiglu",
    "vocab_size": VOCAB,
    "n_embd": HIDDEN,
    "n_layer": LAYERS,
    "n_head": HEADS,
    "n_inner": INNER,
    "n_positions": 8192,
    "max_trained_positions": 64,
    "type_vocab_size": 2,
    "layer_norm_epsilon": 1e-12,
    "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "qkv_proj_bias": False,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "prenorm": False,
    "pad_token_id": 0,
}
ROBERTA_CONFIG: dict[str, Any] = {
    "model_type": "xlm-roberta",
    "architectures": ["XLMRobertaModel"],
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": INNER,
    "max_position_embeddings": 24,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "pad_token_id": 1,
}
# Two sequences, the second right-padded with the model's pad id.
INPUT_IDS = [[2, 11, 17, 5, 23, 8, 39, 3], [2, 30, 7, 3, 0, 0, 0, 0]]
ATTENTION_MASK = [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]


def input_ids(pad: int) -> list[list[int]]:
    return [
        [pad if not m else i for i, m in zip(row, mask, strict=True)]
        for row, mask in zip(INPUT_IDS, ATTENTION_MASK, strict=True)
    ]


def _normal(rng: np.random.Generator, *shape: int, scale: float = 0.2) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _norm(rng: np.random.Generator, out: dict[str, np.ndarray], name: str) -> None:
    out[f"{name}.weight"] = 1.0 + _normal(rng, HIDDEN, scale=0.1)
    out[f"{name}.bias"] = _normal(rng, HIDDEN, scale=0.1)


def nomic_weights(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {
        "embeddings.word_embeddings.weight": _normal(rng, VOCAB, HIDDEN, scale=1.0),
        "embeddings.token_type_embeddings.weight": _normal(rng, 2, HIDDEN),
    }
    _norm(rng, out, "emb_ln")
    for i in range(LAYERS):
        layer = f"encoder.layers.{i}"
        out[f"{layer}.attn.Wqkv.weight"] = _normal(rng, 3 * HIDDEN, HIDDEN)
        out[f"{layer}.attn.out_proj.weight"] = _normal(rng, HIDDEN, HIDDEN)
        out[f"{layer}.mlp.fc11.weight"] = _normal(rng, INNER, HIDDEN)
        out[f"{layer}.mlp.fc12.weight"] = _normal(rng, INNER, HIDDEN)
        out[f"{layer}.mlp.fc2.weight"] = _normal(rng, HIDDEN, INNER)
        _norm(rng, out, f"{layer}.norm1")
        _norm(rng, out, f"{layer}.norm2")
    return out


def nomic_transformers_names(hub: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The nomic weights as transformers' ``NomicBertModel`` names them (its conversion
    mapping, reversed: ``Wqkv`` split into ``q/k/v_proj`` along the output dimension)."""
    renames = (
        ("encoder.layers.", "layers."),
        ("emb_ln.", "embeddings.LayerNorm."),
        ("attn.out_proj", "self_attn.o_proj"),
        ("mlp.fc11", "mlp.up_proj"),
        ("mlp.fc12", "mlp.gate_proj"),
        ("mlp.fc2", "mlp.down_proj"),
        ("norm1", "post_attention_layernorm"),
        ("norm2", "post_mlp_layernorm"),
    )
    out = {}
    for name, value in hub.items():
        if ".attn.Wqkv." in name:
            q, k, v = np.split(value, 3, axis=0)
            base = name.replace("encoder.layers.", "layers.").replace("attn.Wqkv", "self_attn.{}_proj")
            out.update({base.format(p): part for p, part in zip("qkv", (q, k, v), strict=True)})
            continue
        for old, new in renames:
            name = name.replace(old, new)
        out[name] = value
    return out


def roberta_weights(seed: int = 11) -> dict[str, np.ndarray]:
    """Named as transformers saves an ``XLMRobertaModel`` (``roberta.`` prefix included)."""
    rng = np.random.default_rng(seed)
    p = "roberta."
    out = {
        f"{p}embeddings.word_embeddings.weight": _normal(rng, VOCAB, HIDDEN, scale=1.0),
        f"{p}embeddings.position_embeddings.weight": _normal(
            rng, ROBERTA_CONFIG["max_position_embeddings"], HIDDEN
        ),
        f"{p}embeddings.token_type_embeddings.weight": _normal(rng, 1, HIDDEN),
    }
    _norm(rng, out, f"{p}embeddings.LayerNorm")
    for i in range(LAYERS):
        layer = f"{p}encoder.layer.{i}"
        for name, shape in (
            ("attention.self.query", (HIDDEN, HIDDEN)),
            ("attention.self.key", (HIDDEN, HIDDEN)),
            ("attention.self.value", (HIDDEN, HIDDEN)),
            ("attention.output.dense", (HIDDEN, HIDDEN)),
            ("intermediate.dense", (INNER, HIDDEN)),
            ("output.dense", (HIDDEN, INNER)),
        ):
            out[f"{layer}.{name}.weight"] = _normal(rng, *shape)
            out[f"{layer}.{name}.bias"] = _normal(rng, shape[0], scale=0.05)
        _norm(rng, out, f"{layer}.attention.output.LayerNorm")
        _norm(rng, out, f"{layer}.output.LayerNorm")
    return out
