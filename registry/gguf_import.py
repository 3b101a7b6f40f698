"""Convert a GGUF file into a model directory that ``mlx_lm.load`` accepts.

The output is a Hugging Face style directory: ``config.json``, ``model.safetensors``
(or shards with an index), ``tokenizer.json`` and the tokenizer/generation configs.

Weights: Q4_0, Q4_1 and Q8_0 blocks are affine with 32 weights per group, which is MLX's
own quantized layout, so by default the 2-D weights of those types are repacked losslessly
(uint32 words + scales + biases) instead of expanded to fp32. Every other tensor type is
dequantized with gguf-py. Three llama.cpp conventions are undone on the way: the Q/K row
permutation of the ``llama`` architecture, Gemma's RMSNorm weights stored as ``w + 1``, and
Llama 3 rope scaling stored as a ``rope_freqs`` tensor instead of config values.

Only numpy, gguf, tokenizers and safetensors are used: the daemon imports this module and
never imports MLX.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType, ReaderTensor
from gguf.quants import dequantize
from safetensors.numpy import save_file

from registry.gguf_tokenizer import GGUFVocab, build_tokenizer, write_tokenizer_files
from registry.model_dir import human_number

Progress = Callable[[str], None]

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
GROUP_SIZE = 32
MAX_SHARD_BYTES = 4 << 30

# GGUF block types that map one-to-one onto MLX affine quantization (group 32).
_DIRECT_BITS = {GGMLQuantizationType.Q4_0: 4, GGMLQuantizationType.Q4_1: 4, GGMLQuantizationType.Q8_0: 8}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


class _Meta:
    """Typed access to GGUF key/values."""

    def __init__(self, reader: GGUFReader) -> None:
        self.reader = reader
        self.arch = str(self.get("general.architecture", ""))

    def get(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        if field is None or not field.types:
            return default
        return field.contents()

    def arch_int(self, suffix: str, default: int | None = None) -> int:
        value = self.get(f"{self.arch}.{suffix}", default)
        if isinstance(value, list):  # per-layer arrays: only uniform ones have an HF equivalent
            if len(set(value)) != 1:
                raise ValueError(f"GGUF {self.arch}.{suffix} varies per layer; not supported")
            value = value[0]
        if value is None:
            raise ValueError(f"GGUF metadata is missing {self.arch}.{suffix}")
        return int(value)

    def arch_float(self, suffix: str, default: float | None = None) -> float | None:
        value = self.get(f"{self.arch}.{suffix}", default)
        # GGUF keeps f32; 9.999999747e-06 reads better (and means the same) as 1e-05.
        return None if value is None else float(f"{float(value):.7g}")


def _open(gguf_path: Path) -> GGUFReader:
    try:
        return GGUFReader(gguf_path)
    except (ValueError, OSError) as exc:
        raise ValueError(f"not a readable GGUF file: {gguf_path}: {exc}") from exc


def _file_type_name(meta: _Meta, reader: GGUFReader) -> str:
    value = meta.get("general.file_type")
    known = {int(t) for t in LlamaFileType} - {int(LlamaFileType.GUESSED)}
    if value is not None and int(value) in known:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No (known) file type: name it after the most common type among the 2-D tensors.
    counts: dict[str, int] = {}
    for t in reader.tensors:
        if len(t.shape) >= 2:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + int(t.n_elements)
    return max(counts, key=lambda k: counts[k]) if counts else "F32"


def gguf_metadata_summary(gguf_path: Path) -> dict[str, Any]:
    """What Ollama shows for a GGUF: architecture, parameter count/size, file type, lengths."""
    reader = _open(gguf_path)
    meta = _Meta(reader)
    count = sum(int(t.n_elements) for t in reader.tensors)
    return {
        "architecture": meta.arch,
        "name": meta.get("general.name", ""),
        "size_label": meta.get("general.size_label", ""),
        "file_type": _file_type_name(meta, reader),
        "parameter_count": count,
        "parameter_size": human_number(count),
        "context_length": meta.get(f"{meta.arch}.context_length"),
        "embedding_length": meta.get(f"{meta.arch}.embedding_length"),
        "tokenizer_model": meta.get("tokenizer.ggml.model", ""),
        "supported": meta.arch in SUPPORTED_ARCHITECTURES,
    }


def _read_vocab(meta: _Meta) -> GGUFVocab:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError("GGUF file has no tokenizer (tokenizer.ggml.tokens)")
    model = str(meta.get("tokenizer.ggml.model", ""))
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)

    def opt_int(key: str) -> int | None:
        value = meta.get(key)
        return None if value is None else int(value)

    return GGUFVocab(
        model=model,
        tokens=list(tokens),
        token_types=[int(t) for t in types],
        scores=[float(s) for s in meta.get("tokenizer.ggml.scores") or []],
        merges=list(meta.get("tokenizer.ggml.merges") or []),
        pre=str(meta.get("tokenizer.ggml.pre", "default")),
        bos_id=opt_int("tokenizer.ggml.bos_token_id"),
        eos_id=opt_int("tokenizer.ggml.eos_token_id"),
        eot_id=opt_int("tokenizer.ggml.eot_token_id"),
        unk_id=opt_int("tokenizer.ggml.unknown_token_id"),
        pad_id=opt_int("tokenizer.ggml.padding_token_id"),
        # llama.cpp adds BOS by default for SentencePiece vocabularies, not for BPE ones.
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama")),
        add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", model == "llama")),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def _llama3_factors(
    head_dim: int, theta: float, factor: float, low: float, high: float, old: int
) -> np.ndarray:
    """The per-frequency divisors Llama 3 rope scaling applies (what ``rope_freqs`` stores)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
    return 1.0 / ((1 - smooth) / factor + smooth)


def _rope_scaling(meta: _Meta, tensors: dict[str, ReaderTensor], head_dim: int, theta: float) -> Any:
    kind = meta.get(f"{meta.arch}.rope.scaling.type")
    factor = meta.arch_float("rope.scaling.factor")
    if "rope_freqs.weight" in tensors:
        stored = np.asarray(dequantize(tensors["rope_freqs.weight"].data, GGMLQuantizationType.F32))
        stored = stored.astype(np.float64).reshape(-1)
        big = float(stored.max())
        # GGUF keeps only the resulting divisors; Llama 3.x always used these constants.
        for low, high, old in ((1.0, 4.0, 8192),):
            if np.allclose(_llama3_factors(head_dim, theta, big, low, high, old), stored, rtol=1e-3):
                return {
                    "rope_type": "llama3",
                    "factor": big,
                    "low_freq_factor": low,
                    "high_freq_factor": high,
                    "original_max_position_embeddings": old,
                }
        raise ValueError("GGUF rope_freqs tensor does not match Llama 3 rope scaling; not supported")
    if kind in (None, "none") or not factor or factor == 1.0:
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    if kind == "yarn":
        original = meta.get(f"{meta.arch}.rope.scaling.original_context_length")
        scaling: dict[str, Any] = {"rope_type": "yarn", "factor": factor}
        if original:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    raise ValueError(f"unsupported GGUF rope scaling type: {kind}")


def _hf_config(meta: _Meta, tensors: dict[str, ReaderTensor], vocab: GGUFVocab) -> dict[str, Any]:
    arch = meta.arch
    hidden = meta.arch_int("embedding_length")
    heads = meta.arch_int("attention.head_count")
    head_dim = meta.arch_int("attention.key_length", hidden // heads)
    embed = tensors.get("token_embd.weight")
    if embed is None:
        raise ValueError("GGUF file has no token_embd.weight tensor")
    theta = meta.arch_float("rope.freq_base", 10000.0 if arch == "llama" else 1_000_000.0) or 10000.0
    config: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": meta.arch_int("block_count"),
        "intermediate_size": meta.arch_int("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": meta.arch_int("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": meta.arch_float("attention.layer_norm_rms_epsilon", 1e-6),
        "vocab_size": int(embed.shape[-1]),
        "max_position_embeddings": meta.arch_int("context_length"),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(meta, tensors, head_dim, theta),
        "tie_word_embeddings": "output.weight" not in tensors,
        "torch_dtype": "float32",
    }
    if arch == "llama":
        config.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu")
        config.update(attention_bias="blk.0.attn_q.bias" in tensors, mlp_bias=False)
    elif arch == "qwen2":
        config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu")
    elif arch == "gemma3":
        # llama.cpp scales queries by 1/sqrt(hidden/heads) for the 62-layer (27B) model only.
        scalar = hidden // heads if config["num_hidden_layers"] == 62 else head_dim
        pattern = meta.get(f"{arch}.attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):  # per-layer "is sliding" flags: the period is the first global layer
            pattern = next((i + 1 for i, sliding in enumerate(pattern) if not sliding), len(pattern))
        config.update(
            model_type="gemma3_text",
            architectures=["Gemma3ForCausalLM"],
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=scalar,
            sliding_window=meta.arch_int("attention.sliding_window", 4096),
            sliding_window_pattern=int(pattern),
            rope_local_base_freq=10000.0,
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
        )
    if vocab.bos_id is not None:
        config["bos_token_id"] = vocab.bos_id
    eos = vocab.eos_ids()
    if eos:
        config["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    return config


def _hf_name(arch: str, gguf_name: str) -> str | None:
    """The mlx_lm/HF parameter name of a GGUF tensor; None for tensors with no weight (rope_freqs)."""
    if gguf_name == "rope_freqs.weight":
        return None
    base, _, suffix = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{suffix}"
    match = _BLOCK_RE.fullmatch(gguf_name)
    names = _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES
    if match is None or match.group(2) not in names:
        raise ValueError(f"unexpected tensor in {arch} GGUF: {gguf_name}")
    return f"model.layers.{match.group(1)}.{names[match.group(2)]}.{match.group(3)}"


def _unpermute_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation (rotary pairs interleaved per head) along axis 0."""
    rows = a.shape[0]
    return a.reshape(n_head, rows // n_head // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def _f16_column(blocks: np.ndarray, start: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., start : start + 2]).view(np.float16)[..., 0].astype(np.float32)


def affine_from_blocks(
    data: np.ndarray, qtype: GGMLQuantizationType, rows: int, cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repack Q4_0/Q4_1/Q8_0 blocks as MLX affine quantization: (uint32 words, scales, biases).

    MLX dequantizes ``scale * q + bias`` with unsigned q packed low bits first; the GGUF
    formulas rewrite exactly into that form, so the result is lossless:
    Q4_0 ``d * (q - 8)``, Q4_1 ``d * q + m``, Q8_0 ``d * x`` with signed x = q - 128.
    """
    bits = _DIRECT_BITS[qtype]
    blocks = np.asarray(data, dtype=np.uint8).reshape(rows, cols // GROUP_SIZE, -1)
    scale = _f16_column(blocks, 0)
    q: np.ndarray
    if qtype == GGMLQuantizationType.Q8_0:
        signed = blocks[..., 2:34].view(np.int8).astype(np.int16)
        q = (signed + 128).astype(np.uint8)
        bias = scale * np.float32(-128)
    else:
        offset = 2 if qtype == GGMLQuantizationType.Q4_0 else 4
        packed = blocks[..., offset : offset + 16]
        # A GGUF 4-bit block keeps weights i and i+16 in one byte (low, high nibble).
        q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)
        bias = scale * np.float32(-8) if qtype == GGMLQuantizationType.Q4_0 else _f16_column(blocks, 2)
    q = q.reshape(rows, cols)
    if bits == 4:
        q = q[:, 0::2] | (q[:, 1::2] << np.uint8(4))  # MLX: weight j at bits 4*j of the little-endian word
    words = np.ascontiguousarray(q).view("<u4")
    return words, scale, bias


def _convert_tensor(
    tensor: ReaderTensor, name: str, config: dict[str, Any], keep_quantized: bool, dtype: np.dtype[Any]
) -> dict[str, np.ndarray]:
    arch = config["model_type"]
    shape = tuple(int(n) for n in reversed(tensor.shape))
    qtype = GGMLQuantizationType(tensor.tensor_type)
    permute_heads = 0
    if arch == "llama" and ".self_attn.q_proj." in name:
        permute_heads = config["num_attention_heads"]
    elif arch == "llama" and ".self_attn.k_proj." in name:
        permute_heads = config["num_key_value_heads"]
    if keep_quantized and qtype in _DIRECT_BITS and len(shape) == 2 and name.endswith(".weight"):
        words, scales, biases = affine_from_blocks(tensor.data, qtype, shape[0], shape[1])
        arrays = [words, scales, biases]
        if permute_heads:
            arrays = [_unpermute_rows(a, permute_heads) for a in arrays]
        base = name.removesuffix(".weight")
        return {
            name: np.ascontiguousarray(arrays[0]),
            f"{base}.scales": np.ascontiguousarray(arrays[1], dtype=dtype),
            f"{base}.biases": np.ascontiguousarray(arrays[2], dtype=dtype),
        }
    weight = np.asarray(dequantize(tensor.data, qtype), dtype=np.float32).reshape(shape)
    if permute_heads:
        weight = _unpermute_rows(weight, permute_heads)
    if arch == "gemma3_text" and name.endswith("norm.weight"):
        weight = weight - np.float32(1.0)  # GGUF stores Gemma RMSNorm scales as 1 + w
    return {name: np.ascontiguousarray(weight, dtype=dtype)}


def _planned_bytes(tensor: ReaderTensor, keep_quantized: bool, itemsize: int) -> int:
    qtype = GGMLQuantizationType(tensor.tensor_type)
    n = int(tensor.n_elements)
    if keep_quantized and qtype in _DIRECT_BITS and len(tensor.shape) == 2:
        return n * _DIRECT_BITS[qtype] // 8 + 2 * itemsize * n // GROUP_SIZE
    return n * itemsize


def _write_weights(
    out_dir: Path,
    tensors: list[tuple[ReaderTensor, str]],
    config: dict[str, Any],
    keep_quantized: bool,
    dtype: np.dtype[Any],
    progress: Progress,
) -> dict[str, int]:
    """Write the safetensors file(s); returns {module path: bits} of the quantized weights."""
    shards: list[list[tuple[ReaderTensor, str]]] = [[]]
    size = 0
    for item in tensors:
        nbytes = _planned_bytes(item[0], keep_quantized, dtype.itemsize)
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    quant_bits: dict[str, int] = {}
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        filename = (
            "model.safetensors"
            if len(shards) == 1
            else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        )
        progress(f"converting model ({filename})")
        arrays: dict[str, np.ndarray] = {}
        for tensor, name in shard:
            converted = _convert_tensor(tensor, name, config, keep_quantized, dtype)
            if len(converted) == 3:
                quant_bits[name.removesuffix(".weight")] = _DIRECT_BITS[
                    GGMLQuantizationType(tensor.tensor_type)
                ]
            arrays.update(converted)
        save_file(arrays, str(out_dir / filename), metadata={"format": "mlx"})
        os.chmod(out_dir / filename, 0o644)  # safetensors creates it owner-only
        weight_map.update(dict.fromkeys(arrays, filename))
    if len(shards) > 1:
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return quant_bits


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    progress: Progress | None = None,
    *,
    keep_quantized: bool = True,
    dtype: Literal["float32", "float16"] = "float32",
) -> None:
    """Convert ``gguf_path`` into an MLX model directory at ``out_dir`` (created if needed).

    ``keep_quantized`` repacks Q4_0/Q4_1/Q8_0 weights losslessly as MLX 4/8-bit affine
    quantization instead of expanding them; ``dtype`` is the float type of everything else
    (and of the quantization scales). Raises ValueError for an unsupported architecture,
    tokenizer or tensor layout.
    """
    report: Progress = progress or (lambda _message: None)
    report("parsing GGUF")
    reader = _open(gguf_path)
    meta = _Meta(reader)
    if meta.arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture: {meta.arch or '(none)'}")
    tensors = {t.name: t for t in reader.tensors}
    vocab = _read_vocab(meta)
    # The tokenizer first: an unsupported one fails before the long weight conversion.
    report("converting tokenizer")
    tokenizer = build_tokenizer(vocab)
    config = _hf_config(meta, tensors, vocab)

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("model*.safetensors"), out_dir / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)  # mlx_lm loads every model*.safetensors it finds
    named = [(t, hf) for t in reader.tensors if (hf := _hf_name(meta.arch, t.name)) is not None]
    np_dtype = np.dtype(dtype)
    quant_bits = _write_weights(out_dir, named, config, keep_quantized, np_dtype, report)
    config["torch_dtype"] = dtype
    if quant_bits:
        bits = max(set(quant_bits.values()), key=list(quant_bits.values()).count)
        quantization: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
        for path, layer_bits in sorted(quant_bits.items()):
            if layer_bits != bits:
                quantization[path] = {"group_size": GROUP_SIZE, "bits": layer_bits}
        config["quantization"] = quantization
    config["gguf"] = {"architecture": meta.arch, "file_type": _file_type_name(meta, reader)}
    report("writing config")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_tokenizer_files(
        out_dir,
        tokenizer,
        bos_token=vocab.token(vocab.bos_id),
        eos_token=vocab.token(vocab.eos_id),
        eos_ids=vocab.eos_ids(),
        bos_id=vocab.bos_id,
        unk_token=vocab.token(vocab.unk_id) if vocab.model == "llama" else None,
        pad_token=vocab.token(vocab.pad_id),
        pad_id=vocab.pad_id,
        chat_template=vocab.chat_template,
        model_max_length=config["max_position_embeddings"],
        add_bos_token=vocab.add_bos,
    )
