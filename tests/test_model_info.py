"""What a model's own files say about it: family names, quantization, capabilities and
``model_info`` (``registry.model_dir``), and how ``/api/tags`` and ``/api/show`` list capabilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file

from daemon.testing import install_fake_model
from registry.create import config_from_dir
from registry.model_dir import (
    chat_template,
    config_model_info,
    describe_model_dir,
    detect_capabilities,
    ollama_family,
)
from registry.store import Store
from tests.http_support import json_body

pytest_plugins = ["tests.http_support"]

QWEN2_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "vocab_size": 151936,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "quantization": {"group_size": 64, "bits": 4},
}


def model_dir(path: Path, config: dict[str, Any], template: str = "", **files: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if template:
        (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    for name, content in files.items():
        (path / name.replace("__", ".")).write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("model_type", "family"),
    [
        ("qwen2", "qwen2"),
        ("gemma3_text", "gemma3"),
        ("mistral", "llama"),
        ("qwen3_moe", "qwen3moe"),
        ("phi3", "phi3"),
    ],
)
def test_ollama_family(model_type: str, family: str) -> None:
    assert ollama_family(model_type) == family


def test_details_of_a_quantized_model(tmp_path: Path) -> None:
    path = model_dir(tmp_path / "m", QWEN2_CONFIG)
    rng = np.random.default_rng(0)
    save_file(
        {
            "model.embed_tokens.weight": rng.integers(0, 2**31, (16, 8), dtype=np.uint32),
            "model.embed_tokens.scales": np.ones((16, 1), np.float16),
            "model.embed_tokens.biases": np.zeros((16, 1), np.float16),
        },
        str(path / "model.safetensors"),
    )
    details = describe_model_dir(path)
    assert details["quantization_level"] == "Q4" and details["family"] == "qwen2"
    assert details["parameter_count"] == 16 * 64  # packed weights counted at their real size
    (path / "config.json").write_text(
        json.dumps({**QWEN2_CONFIG, "quantization": {"bits": 4, "mode": "mxfp4"}})
    )
    assert describe_model_dir(path)["quantization_level"] == "MXFP4"
    gemma = model_dir(tmp_path / "g", {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}})
    assert describe_model_dir(gemma)["family"] == "gemma3"


def test_capabilities_from_the_files(tmp_path: Path) -> None:
    assert detect_capabilities(model_dir(tmp_path / "plain", QWEN2_CONFIG, "{{ messages }}")) == [
        "completion"
    ]
    thinking = "{% if enable_thinking %}<think>\n\n</think>{% endif %}{{ messages }}"
    assert detect_capabilities(model_dir(tmp_path / "think", QWEN2_CONFIG, thinking)) == [
        "completion",
        "thinking",
    ]
    only_closing = "{{ content.split('</think>')[-1] }}"  # no reasoning tags to parse
    assert detect_capabilities(model_dir(tmp_path / "split", QWEN2_CONFIG, only_closing)) == ["completion"]
    vision = {**QWEN2_CONFIG, "model_type": "gemma3", "vision_config": {"hidden_size": 1152}}
    assert detect_capabilities(model_dir(tmp_path / "vision", vision)) == ["completion", "vision"]
    bert = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384}
    assert detect_capabilities(model_dir(tmp_path / "bert", bert)) == ["embedding"]
    st = {"architectures": ["Qwen3Model"], "model_type": "qwen3"}
    assert detect_capabilities(model_dir(tmp_path / "st", st, modules__json=[])) == ["embedding"]
    causal = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}
    assert detect_capabilities(model_dir(tmp_path / "causal", causal, modules__json=[])) == ["completion"]


def test_chat_template_sources(tmp_path: Path) -> None:
    path = model_dir(tmp_path / "m", QWEN2_CONFIG)
    assert chat_template(path) == ""
    (path / "chat_template.jinja").write_text("J")
    assert chat_template(path) == "J"
    (path / "chat_template.json").write_text(json.dumps({"chat_template": "P"}))
    assert chat_template(path) == "P"
    (path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "x", "template": "X"}]})
    )
    assert chat_template(path) == "X"


def test_model_info_from_config(tmp_path: Path) -> None:
    path = model_dir(tmp_path / "m", {**QWEN2_CONFIG, "rope_scaling": {"type": "yarn", "factor": 4.0}})
    details = {
        "family": "qwen2",
        "parameter_count": 494032768,
        "context_length": 32768,
        "embedding_length": 896,
    }
    assert config_model_info(path, details) == {
        "general.architecture": "qwen2",
        "general.parameter_count": 494032768,
        "qwen2.context_length": 32768,
        "qwen2.embedding_length": 896,
        "qwen2.block_count": 24,
        "qwen2.feed_forward_length": 4864,
        "qwen2.attention.head_count": 14,
        "qwen2.attention.head_count_kv": 2,
        "qwen2.attention.layer_norm_rms_epsilon": 1e-06,
        "qwen2.rope.freq_base": 1000000.0,
        "qwen2.vocab_size": 151936,
        "qwen2.rope.scaling.type": "yarn",
        "qwen2.rope.scaling.factor": 4.0,
        "tokenizer.ggml.bos_token_id": 151643,
        "tokenizer.ggml.eos_token_id": 151645,
    }
    moe = model_dir(
        tmp_path / "moe", {"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8}
    )
    info = config_model_info(moe, {"family": "qwen3moe"})
    assert info["qwen3moe.expert_count"] == 128 and info["qwen3moe.expert_used_count"] == 8
    assert config_model_info(moe, {"family": ""}) == {}


def test_config_from_dir_orders_capabilities(tmp_path: Path) -> None:
    path = model_dir(tmp_path / "m", QWEN2_CONFIG, "<think></think>")
    save_file({"w": np.zeros((2, 2), np.float32)}, str(path / "model.safetensors"))
    config = config_from_dir(path, system="S", license=["MIT"], extra_capabilities=("insert",))
    assert config.capabilities == ["completion", "insert", "thinking"]
    assert (config.format, config.family, config.system, config.license) == ("mlx", "qwen2", "S", ["MIT"])


TOOLS_TEMPLATE = (
    "{% if tools %}{% for tool in tools %}{{ tool | tojson }}{% endfor %}"
    "Call a tool with <tool_call>{...}</tool_call>{% endif %}{{ messages }}"
)


@pytest.mark.anyio
async def test_tags_and_show_list_what_requests_may_use(client: httpx.AsyncClient, store: Store) -> None:
    install_fake_model(store, "tooled", chat_template=TOOLS_TEMPLATE)
    listed = json_body(await client.get("/api/tags"))["models"]
    assert next(m for m in listed if m["name"] == "tooled:latest")["capabilities"] == ["completion", "tools"]
    assert next(m for m in listed if m["name"] == "tiny:latest")["capabilities"] == ["completion"]
    shown = json_body(await client.post("/api/show", json={"model": "tooled"}))
    assert shown["capabilities"] == ["completion", "tools"]
