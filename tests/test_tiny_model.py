"""The tiny random Qwen2 test model: deterministic, fast, loadable by mlx_lm."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from registry.model_dir import describe_model_dir, human_number
from registry.tiny_model import write_tiny_model

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")

FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "seed0"
    start = time.perf_counter()
    write_tiny_model(path, seed=0)
    assert time.perf_counter() - start < 10
    return path


def test_files_and_determinism(model_dir: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in model_dir.iterdir()) == FILES
    write_tiny_model(tmp_path / "again", seed=0)
    write_tiny_model(tmp_path / "other", seed=1)
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (model_dir / name).read_bytes(), name
    # Another seed changes every weight and nothing else.
    assert (tmp_path / "other" / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    a = load_file(str(model_dir / "model.safetensors"))
    b = load_file(str(tmp_path / "other" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(not np.array_equal(a[k], b[k]) for k in a)


def test_config_and_weights(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]) == (64, 2, 128)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, 2)
    assert cfg["max_position_embeddings"] == 4096 and cfg["tie_word_embeddings"] is True
    weights = load_file(str(model_dir / "model.safetensors"))
    assert all(w.dtype == np.float32 for w in weights.values())
    assert weights["model.embed_tokens.weight"].shape == (cfg["vocab_size"], 64)
    assert "lm_head.weight" not in weights
    assert describe_model_dir(model_dir) == {
        "family": "qwen2",
        "parameter_count": sum(w.size for w in weights.values()),
        "parameter_size": human_number(sum(w.size for w in weights.values())),
        "quantization_level": "F32",
        "context_length": 4096,
        "embedding_length": 64,
    }


def test_tokenizer_round_trip(model_dir: Path) -> None:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert 512 <= tok.get_vocab_size() <= 1024
    texts = ["The capital of France is Paris.", "  two  spaces\nand\n\nlines\t", "Ünïcödé — 日本語 😀", ""]
    for text in texts:
        assert tok.decode(tok.encode(text).ids) == text
    ids = tok.encode("<|im_start|>user\nhi<|im_end|><|endoftext|>").ids
    specials = [tok.token_to_id(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")]
    assert ids[0] == specials[0] and ids[-2:] == specials[1:]
    assert len(tok.encode("the library").ids) == 2  # trained merges: whole common words


def test_chat_template_and_eos(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    assert rendered == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    assert tok.eos_token == "<|im_end|>"
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")


def test_mlx_lm_loads_and_generates_varied_tokens(model_dir: Path) -> None:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    loaded = load(str(model_dir))
    model, tokenizer = loaded[0], loaded[1]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)

    def greedy() -> list[int]:
        steps = generate_step(mx.array(prompt), model, sampler=make_sampler(0.0))
        return [int(token) for token, _ in itertools.islice(steps, 24)]

    ids = greedy()
    assert len(ids) == 24 and len(set(ids)) >= 8, ids
    assert greedy() == ids  # greedy is deterministic
