"""Describe an MLX model directory the way Ollama describes a model (``ModelDetails``).

Reads only ``config.json`` and the JSON headers of the safetensors files, never the
weights, so it is fast enough to run on every ``/api/tags`` or ``/api/show``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

# safetensors dtype names → Ollama's file-type names for float weights.
_FLOAT_LEVELS = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64"}


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber``: 8030261248 → "8.0B", 494032768 → "494.03M", 137M whole."""
    for unit, value in (("T", 10**12), ("B", 10**9), ("M", 10**6)):
        if n >= value:
            number = n / value
            if number == math.floor(number):
                return f"{number:.0f}{unit}"
            return f"{number:.1f}{unit}" if unit in "TB" else f"{number:.2f}{unit}"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: {name: {"dtype", "shape", "data_offsets"}, ...}."""
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"not a safetensors file: {path}")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100 * 1024 * 1024:
            raise ValueError(f"safetensors header too large: {path}")
        header: dict[str, Any] = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def _load_config(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((path / "config.json").read_text(encoding="utf-8"))
    # Multimodal checkpoints keep the language model's sizes under text_config.
    text = config.get("text_config")
    if isinstance(text, dict):
        config = {**text, **{k: v for k, v in config.items() if k != "text_config"}}
    return config


def _layer_quantization(config: dict[str, Any], layer: str) -> dict[str, Any]:
    quant = config.get("quantization") or config.get("quantization_config") or {}
    per_layer = quant.get(layer)
    return per_layer if isinstance(per_layer, dict) else quant


def _count_parameters(
    config: dict[str, Any], tensors: dict[str, dict[str, Any]]
) -> tuple[int, dict[str, int]]:
    """Logical parameter count (packed weights at their unpacked size) and elements per dtype."""
    total = 0
    by_dtype: dict[str, int] = {}
    for name, info in tensors.items():
        base, _, suffix = name.rpartition(".")
        if suffix in ("scales", "biases") and f"{base}.weight" in tensors:
            continue  # quantization side data, not parameters
        shape = [int(d) for d in info["shape"]]
        count = math.prod(shape)
        scales = tensors.get(f"{base}.scales")
        if suffix == "weight" and scales is not None and shape:
            group = int(_layer_quantization(config, base).get("group_size", 64))
            count = math.prod(shape[:-1]) * int(scales["shape"][-1]) * group
        total += count
        by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + count
    return total, by_dtype


def _quantization_level(config: dict[str, Any], by_dtype: dict[str, int]) -> str:
    gguf = config.get("gguf")
    if isinstance(gguf, dict) and gguf.get("file_type"):
        return str(gguf["file_type"])  # an imported GGUF keeps the name of its source file type
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, dict) and quant.get("bits"):
        mode = str(quant.get("mode", "affine"))
        return f"Q{int(quant['bits'])}_0" if mode == "affine" else mode.upper()
    floats = {k: v for k, v in by_dtype.items() if k in _FLOAT_LEVELS}
    if not floats:
        return ""
    return _FLOAT_LEVELS[max(floats, key=lambda k: floats[k])]


def describe_model_dir(path: Path) -> dict[str, Any]:
    """family, parameter_count, parameter_size, quantization_level, context_length and
    embedding_length of an MLX model directory."""
    config = _load_config(path)
    tensors: dict[str, dict[str, Any]] = {}
    for file in sorted(path.glob("model*.safetensors")):
        tensors.update(read_safetensors_header(file))
    count, by_dtype = _count_parameters(config, tensors)
    context = config.get("max_position_embeddings") or config.get("n_positions") or config.get("seq_length")
    embedding = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    return {
        "family": str(config.get("model_type", "")),
        "parameter_count": count,
        "parameter_size": human_number(count),
        "quantization_level": _quantization_level(config, by_dtype),
        "context_length": int(context or 0),
        "embedding_length": int(embedding or 0),
    }
