"""Random-weight models of real shapes, for benchmarks where no weights can be downloaded.

Decode speed depends on the shapes and the quantization, not on the weight values, so a
random 4-bit Qwen2.5-7B decodes like the real one. The tokenizer is synthetic: one token
per byte-level character plus made-up words up to the real vocabulary size, and an
end-of-sequence token *outside* the model's vocabulary, so a run never stops early: every
benchmark run makes exactly the number of tokens it asks for. The chat template ends a
turn with a newline, never with that token: the model has no embedding for it, and a
prompt holding it would make the model read past its embedding table (garbage, often
NaN, different in every process).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from registry.gguf_tokenizer import write_tokenizer_files
from registry.model_dir import chat_template

# Shapes from the published Qwen2.5 configs (hidden, layers, heads, kv heads, ffn, vocab, tied).
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv=2, ffn=128, vocab=1024, tied=True, bits=0),
    "qwen2.5-0.5b": dict(hidden=896, layers=24, heads=14, kv=2, ffn=4864, vocab=151936, tied=True, bits=4),
    "qwen2.5-7b": dict(hidden=3584, layers=28, heads=28, kv=4, ffn=18944, vocab=152064, tied=False, bits=4),
    "qwen2.5-32b": dict(hidden=5120, layers=64, heads=40, kv=8, ffn=27648, vocab=152064, tied=False, bits=4),
}
GROUP_SIZE = 64
EOS = "<|im_end|>"
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _tokenizer(vocab_size: int) -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for i in range(len(vocab), vocab_size - 1):
        vocab[f"Ġw{i}"] = i
    vocab["<|im_start|>"] = vocab_size - 1
    vocab[EOS] = vocab_size  # unreachable: the model's logits stop at vocab_size - 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True), AddedToken(EOS, special=True)])
    return tok


def _weights(shape: dict[str, Any], seed: int) -> dict[str, Any]:
    import mlx.core as mx

    mx.random.seed(seed)
    bits = shape["bits"]
    hidden, ffn, vocab = shape["hidden"], shape["ffn"], shape["vocab"]
    head_dim = hidden // shape["heads"]
    kv_dim = head_dim * shape["kv"]
    dtype = mx.float32 if bits == 0 else mx.bfloat16

    def linear(name: str, out_dim: int, in_dim: int) -> dict[str, Any]:
        if bits == 0:
            return {f"{name}.weight": mx.random.normal((out_dim, in_dim)) * (in_dim**-0.5)}
        packed = in_dim * bits // 32
        groups = in_dim // GROUP_SIZE
        return {
            f"{name}.weight": mx.random.randint(0, 2**31 - 1, (out_dim, packed)).astype(mx.uint32),
            f"{name}.scales": (mx.random.uniform(0.5, 1.5, (out_dim, groups)) * 0.01).astype(dtype),
            f"{name}.biases": (mx.random.uniform(-1, 1, (out_dim, groups)) * 0.08).astype(dtype),
        }

    weights: dict[str, Any] = {}
    weights |= linear("model.embed_tokens", vocab, hidden)
    weights["model.norm.weight"] = mx.ones((hidden,), dtype=dtype)
    if not shape["tied"]:
        weights |= linear("lm_head", vocab, hidden)
    for i in range(shape["layers"]):
        p = f"model.layers.{i}"
        weights |= linear(f"{p}.self_attn.q_proj", hidden, hidden)
        weights |= linear(f"{p}.self_attn.k_proj", kv_dim, hidden)
        weights |= linear(f"{p}.self_attn.v_proj", kv_dim, hidden)
        weights |= linear(f"{p}.self_attn.o_proj", hidden, hidden)
        for proj, dim in (("q_proj", hidden), ("k_proj", kv_dim), ("v_proj", kv_dim)):
            weights[f"{p}.self_attn.{proj}.bias"] = mx.zeros((dim,), dtype=dtype)
        weights |= linear(f"{p}.mlp.gate_proj", ffn, hidden)
        weights |= linear(f"{p}.mlp.up_proj", ffn, hidden)
        weights |= linear(f"{p}.mlp.down_proj", hidden, ffn)
        weights[f"{p}.input_layernorm.weight"] = mx.ones((hidden,), dtype=dtype)
        weights[f"{p}.post_attention_layernorm.weight"] = mx.ones((hidden,), dtype=dtype)
    return weights


def build_random_model(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Write the random model ``name`` (a key of SHAPES) to ``out_dir`` unless it is there."""
    if name not in SHAPES:
        raise ValueError(f"unknown random model {name!r}; choose one of {', '.join(SHAPES)}")
    if (out_dir / "config.json").is_file():
        if chat_template(out_dir) != CHAT_TEMPLATE:  # built before the template changed
            _write_tokenizer(out_dir, SHAPES[name]["vocab"])
        return out_dir
    import mlx.core as mx

    shape = SHAPES[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = _weights(shape, seed)
    # Evaluate and write layer by layer would be gentler, but one file per model keeps
    # loading simple; the largest (32B, 4-bit) is ~18 GB.
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    config: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": shape["hidden"],
        "intermediate_size": shape["ffn"],
        "num_hidden_layers": shape["layers"],
        "num_attention_heads": shape["heads"],
        "num_key_value_heads": shape["kv"],
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "vocab_size": shape["vocab"],
        "tie_word_embeddings": shape["tied"],
        "eos_token_id": shape["vocab"],
    }
    if shape["bits"]:
        config["quantization"] = {"group_size": GROUP_SIZE, "bits": shape["bits"]}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _write_tokenizer(out_dir, shape["vocab"])
    return out_dir


def _write_tokenizer(out_dir: Path, vocab_size: int) -> None:
    write_tokenizer_files(
        out_dir,
        _tokenizer(vocab_size),
        bos_token=None,
        eos_token=EOS,
        eos_ids=[vocab_size],
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )
