"""A BERT-family text encoder in MLX: embeddings, post-LN encoder layers, token states.

Covers ``bert`` (all-MiniLM, bge, mxbai-embed…) and ``roberta`` / ``xlm-roberta`` (bge-m3,
multilingual-e5…), whose only difference here is how positions are numbered. The module and
parameter names are those of Hugging Face's ``BertModel``, so the safetensors of a
sentence-transformers repository load as they are (a ``bert.`` / ``roberta.`` prefix is
stripped, the pooler and masked-LM heads are ignored: sentence embeddings never use them).
Pooling the token states into one vector is :mod:`worker.embedding`'s job.

(``mlx-embeddings`` has a BERT too, but it is GPL-3.0, depends on mlx-vlm and transformers,
and always mean-pools and normalizes whatever the model's pooling configuration says.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

# ``model_type`` values this module runs; the RoBERTa ones number positions after the pad id.
BERT_TYPES = frozenset({"bert"})
ROBERTA_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})
ENCODER_TYPES = BERT_TYPES | ROBERTA_TYPES

_PREFIXES = ("bert.", "roberta.", "model.")
_IGNORED = ("pooler.", "cls.", "lm_head.", "embeddings.position_ids")


def _gelu_tanh(x: mx.array) -> mx.array:
    return 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


_ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "gelu": nn.gelu,  # the exact (erf) form, as transformers' "gelu"
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
}


class UnsupportedModel(ValueError):
    """The directory holds an encoder this module cannot run faithfully."""


@dataclass(frozen=True)
class BertConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> BertConfig:
        model_type = str(config.get("model_type", ""))
        if model_type not in ENCODER_TYPES:
            raise UnsupportedModel(f"unsupported embedding model type {model_type!r}")
        position_type = config.get("position_embedding_type", "absolute")
        if position_type not in (None, "absolute"):
            raise UnsupportedModel(f"unsupported position embeddings {position_type!r}")
        act = str(config.get("hidden_act", "gelu"))
        if act not in _ACTIVATIONS:
            raise UnsupportedModel(f"unsupported activation {act!r}")
        return cls(
            model_type=model_type,
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            max_position_embeddings=int(config["max_position_embeddings"]),
            type_vocab_size=int(config.get("type_vocab_size") or 1),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            hidden_act=act,
            pad_token_id=int(config.get("pad_token_id") or 0),
        )

    @property
    def roberta_positions(self) -> bool:
        return self.model_type in ROBERTA_TYPES

    @property
    def max_tokens(self) -> int:
        """The longest input the position table allows, special tokens included."""
        if self.roberta_positions:  # positions start after the pad id
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings


class Embeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array, position_ids: mx.array) -> mx.array:
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.scale = (config.hidden_size // config.num_attention_heads) ** -0.5
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, _ = x.shape

        def split(t: mx.array) -> mx.array:
            return t.reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(batch, length, -1)


class SelfOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = SelfOutput(config)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class Output(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class Layer(nn.Module):
    """One post-LN transformer block: attention, add & norm, feed-forward, add & norm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Output(config)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        attended = self.attention(x, mask)
        return self.output(self.intermediate(attended), attended)


class Encoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = [Layer(config) for _ in range(config.num_hidden_layers)]

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertModel(nn.Module):
    """Token ids (with their attention mask) in, the last layer's token states out."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def __call__(
        self, input_ids: mx.array, attention_mask: mx.array, token_type_ids: mx.array | None = None
    ) -> mx.array:
        """``input_ids``, ``attention_mask`` (1 for real tokens, 0 for padding) and
        ``token_type_ids`` are ``[batch, length]``; returns ``[batch, length, hidden]``."""
        if token_type_ids is None:
            token_type_ids = mx.zeros_like(input_ids)
        if self.config.roberta_positions:
            # RoBERTa counts real tokens from pad_id + 1; padding keeps the pad position.
            mask = attention_mask.astype(mx.int32)
            position_ids = mx.cumsum(mask, axis=1) * mask + self.config.pad_token_id
        else:
            position_ids = mx.broadcast_to(mx.arange(input_ids.shape[1]), input_ids.shape)
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        # Additive mask over the keys: padding is never attended to.
        keep = attention_mask.astype(mx.bool_)[:, None, None, :]
        bias = mx.where(keep, mx.array(0.0, x.dtype), mx.array(-mx.inf, x.dtype))
        return self.encoder(x, bias)


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Hugging Face weight names → this module's: prefixes stripped, unused tensors dropped."""
    out: dict[str, mx.array] = {}
    for name, value in weights.items():
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if name.startswith(_IGNORED):
            continue
        # Very old checkpoints name the LayerNorm parameters gamma/beta.
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[name] = value
    return out


def build(config: dict[str, Any], weights: dict[str, mx.array], float32: bool) -> BertModel:
    """The model of ``config.json`` with ``weights`` loaded (see :func:`load_weights`)."""
    model = BertModel(BertConfig.from_dict(config))
    load_weights(model, config, sanitize(weights), float32)
    return model


def load_weights(
    model: nn.Module, config: dict[str, Any], weights: dict[str, mx.array], float32: bool
) -> None:
    """Load ``weights`` (already named as ``model``'s parameters), quantizing the layers that
    come quantized (the config's ``quantization``). ``float32`` casts float weights to fp32
    (fp16 math is slow or emulated on CPUs)."""
    quantization = config.get("quantization")
    if isinstance(quantization, dict):
        nn.quantize(
            model,
            group_size=int(quantization.get("group_size", 64)),
            bits=int(quantization.get("bits", 4)),
            class_predicate=lambda path, module: f"{path}.scales" in weights,
        )
    if float32:
        weights = {
            name: value.astype(mx.float32) if mx.issubdtype(value.dtype, mx.floating) else value
            for name, value in weights.items()
        }
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
