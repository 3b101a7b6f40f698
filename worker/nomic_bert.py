"""nomic-bert (nomic-embed-text) in MLX: a post-LN BERT with rotary positions and SwiGLU.

Differences from :mod:`worker.bert`: no position table (rotary embeddings in every attention,
GPT-NeoX style, over the whole head), one fused ``Wqkv`` projection, a SwiGLU feed-forward
(``fc2(silu(fc12(x)) * fc11(x))``) and, as published, no biases. Parameter names are those of
the published checkpoints (``emb_ln``, ``encoder.layers.N.attn.Wqkv``, ``mlp.fc11``…);
checkpoints saved by transformers' own ``NomicBertModel`` (``q_proj``, ``up_proj``…) are
renamed on load. Both spellings of the configuration are read (``n_embd`` or
``hidden_size``…).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from worker.bert import UnsupportedModel, load_weights

MODEL_TYPE = "nomic_bert"


def _first(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    if default is None:
        raise UnsupportedModel(f"nomic_bert config has no {keys[0]!r}")
    return default


@dataclass(frozen=True)
class NomicConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_tokens: int  # the trained context
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    rope_theta: float = 1000.0
    qkv_bias: bool = False
    fc1_bias: bool = False
    fc2_bias: bool = False
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> NomicConfig:
        if config.get("model_type") != MODEL_TYPE:
            raise UnsupportedModel(f"not a nomic_bert config: {config.get('model_type')!r}")
        if config.get("prenorm") or config.get("parallel_block") or config.get("use_rms_norm"):
            raise UnsupportedModel("unsupported nomic_bert variant (prenorm, parallel block or RMSNorm)")
        if float(config.get("rotary_emb_fraction") or 1.0) != 1.0 or config.get("rotary_emb_interleaved"):
            raise UnsupportedModel("unsupported nomic_bert rotary embeddings (partial or interleaved)")
        if config.get("rotary_scaling_factor"):
            raise UnsupportedModel("unsupported nomic_bert rotary scaling")
        act = str(config.get("activation_function") or config.get("hidden_act") or "swiglu")
        if act not in ("swiglu", "silu"):
            raise UnsupportedModel(f"unsupported nomic_bert activation {act!r}")
        rope = config.get("rope_parameters") if isinstance(config.get("rope_parameters"), dict) else {}
        assert isinstance(rope, dict)
        if rope.get("rope_type", "default") != "default":
            raise UnsupportedModel(f"unsupported nomic_bert rope type {rope.get('rope_type')!r}")
        return cls(
            vocab_size=int(_first(config, "vocab_size")),
            hidden_size=int(_first(config, "hidden_size", "n_embd")),
            num_hidden_layers=int(_first(config, "num_hidden_layers", "n_layer")),
            num_attention_heads=int(_first(config, "num_attention_heads", "n_head")),
            intermediate_size=int(_first(config, "intermediate_size", "n_inner")),
            max_tokens=int(_first(config, "max_trained_positions", "max_position_embeddings", "n_positions")),
            type_vocab_size=int(config.get("type_vocab_size") or 2),
            layer_norm_eps=float(_first(config, "layer_norm_eps", "layer_norm_epsilon", default=1e-12)),
            rope_theta=float(rope.get("rope_theta") or config.get("rotary_emb_base") or 1000.0),
            qkv_bias=bool(config.get("qkv_proj_bias", False)),
            fc1_bias=bool(config.get("mlp_fc1_bias", False)),
            fc2_bias=bool(config.get("mlp_fc2_bias", False)),
            pad_token_id=int(config.get("pad_token_id") or 0),
        )


class Embeddings(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)


class Attention(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.theta = config.rope_theta
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, _ = x.shape
        qkv = self.Wqkv(x).reshape(batch, length, 3, self.heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = mx.fast.rope(q, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=0)
        k = mx.fast.rope(k, self.head_dim, traditional=False, base=self.theta, scale=1.0, offset=0)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5, mask=mask)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class SwiGLU(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.fc11 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.fc1_bias)
        self.fc12 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.fc1_bias)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.fc2_bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.silu(self.fc12(x)) * self.fc11(x))


class Block(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.attn = Attention(config)
        self.mlp = SwiGLU(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + self.mlp(x))


class Encoder(nn.Module):
    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.layers = [Block(config) for _ in range(config.num_hidden_layers)]


class NomicBertModel(nn.Module):
    """Token ids (with their attention mask) in, the last layer's token states out."""

    def __init__(self, config: NomicConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(config)

    def __call__(
        self, input_ids: mx.array, attention_mask: mx.array, token_type_ids: mx.array | None = None
    ) -> mx.array:
        if token_type_ids is None:
            token_type_ids = mx.zeros_like(input_ids)
        x = self.embeddings.word_embeddings(input_ids) + self.embeddings.token_type_embeddings(token_type_ids)
        x = self.emb_ln(x)
        keep = attention_mask.astype(mx.bool_)[:, None, None, :]
        bias = mx.where(keep, mx.array(0.0, x.dtype), mx.array(-mx.inf, x.dtype))
        for layer in self.encoder.layers:
            x = layer(x, bias)
        return x


# transformers' NomicBertModel names → the published checkpoints' names.
_RENAMES = (
    (re.compile(r"^layers\."), "encoder.layers."),
    (re.compile(r"\.self_attn\.o_proj\."), ".attn.out_proj."),
    (re.compile(r"\.mlp\.up_proj\."), ".mlp.fc11."),
    (re.compile(r"\.mlp\.gate_proj\."), ".mlp.fc12."),
    (re.compile(r"\.mlp\.down_proj\."), ".mlp.fc2."),
    (re.compile(r"\.post_attention_layernorm\."), ".norm1."),
    (re.compile(r"\.post_mlp_layernorm\."), ".norm2."),
    (re.compile(r"^embeddings\.LayerNorm\."), "emb_ln."),
)
_QKV = re.compile(r"^(encoder\.layers\.\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Published names kept, transformers' names renamed (``q/k/v_proj`` fused into ``Wqkv``),
    prefixes and heads that sentence embeddings do not use dropped."""
    out: dict[str, mx.array] = {}
    parts: dict[tuple[str, str], dict[str, mx.array]] = {}
    for name, value in weights.items():
        for prefix in ("bert.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name.startswith(("pooler.", "cls.", "lm_head.", "embeddings.position_ids")):
            continue
        for pattern, replacement in _RENAMES:
            name = pattern.sub(replacement, name)
        found = _QKV.match(name)
        if found:
            parts.setdefault((found[1], found[3]), {})[found[2]] = value
        else:
            out[name] = value
    for (layer, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise UnsupportedModel(f"{layer}: incomplete q/k/v projections")
        out[f"{layer}.attn.Wqkv.{kind}"] = mx.concatenate([qkv["q"], qkv["k"], qkv["v"]], axis=0)
    return out


def build(config: dict[str, Any], weights: dict[str, mx.array], float32: bool) -> NomicBertModel:
    """The model of ``config.json`` with ``weights`` loaded (see :func:`worker.bert.load_weights`)."""
    model = NomicBertModel(NomicConfig.from_dict(config))
    load_weights(model, config, sanitize(weights), float32)
    return model
