"""Describe an MLX model directory the way Ollama describes a model.

* :func:`describe_model_dir`: ``ModelDetails`` (family, sizes, quantization);
* :func:`detect_capabilities`: what the model's files say it can do;
* :func:`config_model_info`: ``/api/show``'s ``model_info`` (Ollama's ``general.*`` and
  ``<arch>.*`` keys) from ``config.json``;
* :func:`chat_template`: the tokenizer's own chat template.

Reads only the JSON files and the JSON headers of the safetensors files, never the
weights, so it is fast enough to run on every create or pull.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

# safetensors dtype names → Ollama's file-type names for float weights.
_FLOAT_LEVELS = {"F32": "F32", "F16": "F16", "BF16": "BF16", "F64": "F64"}

# Hugging Face ``model_type`` → the family (GGUF architecture) name Ollama reports, where
# they differ. Ollama's mistral:7b is a "llama"; its phi4 a "phi3".
OLLAMA_FAMILIES = {
    "gemma3_text": "gemma3",
    "gemma3n_text": "gemma3n",
    "mistral": "llama",
    "phi": "phi2",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "deepseek_v2": "deepseek2",
    "deepseek_v3": "deepseek2",
    "gpt_oss": "gptoss",
    "cohere": "command-r",
    "nomic_bert": "nomic-bert",
    "xlm-roberta": "bert",
    "roberta": "bert",
    "distilbert": "bert",
    "modernbert": "bert",
}

# Encoder-only (embedding) model types, and the files sentence-transformers repos carry.
_EMBEDDING_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "distilbert", "nomic_bert", "modernbert"})
_EMBEDDING_FILES = ("modules.json", "sentence_bert_config.json")
_VISION_KEYS = ("vision_config", "vision_tower", "mm_vision_tower", "visual")
_THINK_TAGS = (("<think>", "</think>"),)

# config.json key(s) → the ``<arch>.`` key of ``model_info`` (first key present wins).
_INFO_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("block_count", ("num_hidden_layers", "n_layer", "num_layers")),
    ("feed_forward_length", ("intermediate_size", "n_inner", "ffn_dim")),
    ("attention.head_count", ("num_attention_heads", "n_head")),
    ("attention.head_count_kv", ("num_key_value_heads",)),
    ("attention.key_length", ("head_dim",)),
    ("attention.value_length", ("head_dim",)),
    ("attention.layer_norm_rms_epsilon", ("rms_norm_eps",)),
    ("attention.layer_norm_epsilon", ("layer_norm_eps", "layer_norm_epsilon")),
    ("rope.freq_base", ("rope_theta",)),
    ("vocab_size", ("vocab_size",)),
    ("expert_count", ("num_experts", "num_local_experts", "n_routed_experts")),
    ("expert_used_count", ("num_experts_per_tok",)),
)


def ollama_family(model_type: str) -> str:
    """The family name Ollama uses for a Hugging Face ``model_type`` (``gemma3_text`` → ``gemma3``)."""
    return OLLAMA_FAMILIES.get(model_type, model_type)


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
        return f"Q{int(quant['bits'])}" if mode == "affine" else mode.upper()
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
        "family": ollama_family(str(config.get("model_type", ""))),
        "parameter_count": count,
        "parameter_size": human_number(count),
        "quantization_level": _quantization_level(config, by_dtype),
        "context_length": int(context or 0),
        "embedding_length": int(embedding or 0),
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _named_templates(path: Path) -> dict[str, str]:
    """Every chat template the tokenizer defines, by name (``default`` for a single one)."""
    data = _read_json(path / "tokenizer_config.json")
    template = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(template, list):
        named = {
            str(t.get("name")): t["template"]
            for t in template
            if isinstance(t, dict) and isinstance(t.get("template"), str)
        }
        if named:
            return named
    if isinstance(template, str) and template:
        return {"default": template}
    processor = _read_json(path / "chat_template.json")
    if isinstance(processor, dict) and isinstance(processor.get("chat_template"), str):
        return {"default": processor["chat_template"]}
    try:
        return {"default": (path / "chat_template.jinja").read_text(encoding="utf-8")}
    except OSError:
        return {}


def chat_template(path: Path) -> str:
    """The chat template of an MLX model directory: ``tokenizer_config.json``'s
    ``chat_template`` (a string, or a list of named templates: ``default`` first), else
    ``chat_template.json``'s, else ``chat_template.jinja``; ``""`` when there is none."""
    named = _named_templates(path)
    return named.get("default") or next(iter(named.values()), "")


def detect_capabilities(path: Path) -> list[str]:
    """The capabilities the files of the model in ``path`` establish, in Ollama's order.

    ``embedding`` alone for an encoder model; otherwise ``completion``, plus ``vision`` when
    the config has a vision tower and ``thinking`` when the chat template has reasoning tags.
    ``tools`` and ``insert`` depend on what the worker can parse and prompt, so the daemon
    derives them when a request comes (``daemon.capabilities``), not the store."""
    config = _read_json(path / "config.json")
    config = config if isinstance(config, dict) else {}
    model_type = str(config.get("model_type", ""))
    architectures = [str(a) for a in config.get("architectures") or [] if isinstance(a, str)]
    encoder = model_type in _EMBEDDING_TYPES or any((path / name).is_file() for name in _EMBEDDING_FILES)
    if encoder and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in architectures):
        return ["embedding"]
    templates = "\n".join(_named_templates(path).values())
    capabilities = ["completion"]
    if any(isinstance(config.get(key), dict | str) and config.get(key) for key in _VISION_KEYS):
        capabilities.append("vision")
    if any(start in templates and end in templates for start, end in _THINK_TAGS):
        capabilities.append("thinking")
    return capabilities


def config_model_info(path: Path, details: dict[str, Any]) -> dict[str, Any]:
    """``model_info`` as Ollama shows it, from ``details`` (see :func:`describe_model_dir`)
    and ``config.json``: ``general.architecture``, ``general.parameter_count``, then
    ``<arch>.context_length``, ``<arch>.embedding_length``, ``<arch>.block_count``…, and the
    tokenizer's special token ids. Keys whose value is unknown are left out."""
    family = str(details.get("family") or "")
    if not family:
        return {}
    try:
        config = _load_config(path)
    except (OSError, ValueError):
        config = {}
    info: dict[str, Any] = {"general.architecture": family}
    if details.get("parameter_count"):
        info["general.parameter_count"] = int(details["parameter_count"])
    if details.get("context_length"):
        info[f"{family}.context_length"] = int(details["context_length"])
    if details.get("embedding_length"):
        info[f"{family}.embedding_length"] = int(details["embedding_length"])
    for key, sources in _INFO_KEYS:
        value = next((config[k] for k in sources if _is_number(config.get(k))), None)
        if value is not None:
            info[f"{family}.{key}"] = value
    if config.get("use_sliding_window") is not False and _is_number(config.get("sliding_window")):
        info[f"{family}.attention.sliding_window"] = config["sliding_window"]
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type") or scaling.get("type")
        if isinstance(kind, str):
            info[f"{family}.rope.scaling.type"] = kind
        if _is_number(scaling.get("factor")):
            info[f"{family}.rope.scaling.factor"] = scaling["factor"]
    for token in ("bos", "eos"):
        value = config.get(f"{token}_token_id")
        if _is_number(value):
            info[f"tokenizer.ggml.{token}_token_id"] = value
    return info


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
