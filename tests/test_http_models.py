"""``/``, ``/api/version``, ``/api/tags``, ``/api/show``; 404/405 (reference §1.1, §4.1–§4.5)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from daemon import OLLAMA_COMPAT_VERSION
from daemon.app import create_app
from daemon.config import Settings
from daemon.routes.models import tokenizer_chat_template
from daemon.testing import FAKE_CHAT_TEMPLATE, ScriptedEngine, install_fake_model
from registry.store import ModelConfig, Store
from tests.http_support import error_of, json_body

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

DETAIL_KEYS = ["parent_model", "format", "family", "families", "parameter_size", "quantization_level"]


async def test_root(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "Ollama is running"
    assert (await client.head("/")).status_code == 200


async def test_version(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/version")
    assert response.status_code == 200
    assert json_body(response) == {"version": OLLAMA_COMPAT_VERSION}
    assert (await client.head("/api/version")).status_code == 200


async def test_unknown_path_and_wrong_method(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/api/nothing"), await client.post("/v2/x", json={})):
        assert response.status_code == 404
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == "404 page not found"
    for response in (
        await client.get("/api/show"),
        await client.get("/api/generate"),
        await client.post("/api/tags"),
        await client.delete("/"),
    ):
        assert response.status_code == 405
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == "405 method not allowed"
    # HEAD only where Ollama's routes declare it (a HEAD answer has no body)
    assert (await client.head("/api/ps")).status_code == 405
    assert (await client.head("/api/status")).status_code == 405
    assert (await client.head("/api/tags")).status_code == 200


async def test_status_reports_cloud_features_off(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/status")
    assert response.status_code == 200
    assert json_body(response) == {"cloud": {"disabled": True, "source": "env"}}


async def test_tags(client: httpx.AsyncClient, store: Store) -> None:
    response = await client.get("/api/tags")
    assert response.status_code == 200
    models = json_body(response)["models"]
    assert [m["name"] for m in models] == [m.display for m in store.list()]
    tiny = next(m for m in models if m["name"] == "tiny:latest")
    installed = store.resolve("tiny")
    assert installed is not None
    assert list(tiny) == ["name", "model", "modified_at", "size", "digest", "details", "capabilities"]
    assert tiny["model"] == "tiny:latest"
    assert tiny["size"] == installed.size > 0
    assert tiny["digest"] == installed.digest and len(tiny["digest"]) == 64
    modified = datetime.fromisoformat(tiny["modified_at"])
    assert modified.utcoffset() is not None  # local time with its offset
    assert modified == installed.modified_at
    assert tiny["details"] == {
        "parent_model": "",
        "format": "mlx",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "135M",
        "quantization_level": "Q4_0",
        "context_length": 2048,
        "embedding_length": 576,
    }
    assert tiny["capabilities"] == ["completion"]
    chatty = next(m for m in models if m["name"] == "chatty:latest")
    assert list(chatty["details"]) == DETAIL_KEYS  # lengths only when known
    assert chatty["details"]["families"] is None
    assert all("expires_at" not in m for m in models)
    assert (await client.head("/api/tags")).status_code == 200


async def test_tags_sorted_newest_first(client: httpx.AsyncClient, store: Store) -> None:
    install_fake_model(store, "newest")
    names = [m["name"] for m in json_body(await client.get("/api/tags"))["models"]]
    assert names[0] == "newest:latest"
    stamps = [
        datetime.fromisoformat(m["modified_at"]) for m in json_body(await client.get("/api/tags"))["models"]
    ]
    assert stamps == sorted(stamps, reverse=True)


async def test_tags_empty_store(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path), ScriptedEngine(), Store(tmp_path / "empty"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/api/tags")
    assert json_body(response) == {"models": []}


async def test_show(client: httpx.AsyncClient, store: Store) -> None:
    response = await client.post("/api/show", json={"model": "tiny"})
    assert response.status_code == 200
    body = json_body(response)
    assert list(body) == [
        "license",
        "modelfile",
        "parameters",
        "template",
        "system",
        "details",
        "model_info",
        "capabilities",
        "modified_at",
    ]
    assert body["license"] == "MIT License"
    assert "FROM " in body["modelfile"]
    assert 'SYSTEM "You are terse."' in body["modelfile"] or "SYSTEM You are terse." in body["modelfile"]
    params = body["parameters"].split("\n")
    assert f"{'temperature':<30} 0.5" in params
    assert f'{"stop":<30} "<|end|>"' in params
    assert f"{'num_keep':<30} 8" in params
    assert body["template"] == FAKE_CHAT_TEMPLATE  # the tokenizer's own chat template
    assert body["system"] == "You are terse."
    assert list(body["details"]) == DETAIL_KEYS  # no lengths in show
    assert body["details"]["family"] == "llama"
    assert body["model_info"] == {
        "general.architecture": "llama",
        "general.parameter_count": 134515008,
        "llama.context_length": 2048,
        "llama.embedding_length": 576,
        "tokenizer.ggml.tokens": [],  # more than 5 items: hidden unless verbose
        "tokenizer.ggml.bos_token_id": 1,
    }
    assert body["capabilities"] == ["completion"]
    installed = store.resolve("tiny")
    assert installed is not None
    assert datetime.fromisoformat(body["modified_at"]) == installed.modified_at


async def test_show_verbose_system_and_options(client: httpx.AsyncClient) -> None:
    body = json_body(
        await client.post(
            "/api/show",
            json={"model": "tiny", "verbose": True, "system": "Be loud.", "options": {"top_k": 7}},
        )
    )
    assert body["model_info"]["tokenizer.ggml.tokens"] == ["a", "b", "c", "d", "e", "f"]
    assert body["system"] == "Be loud."
    assert "Be loud." in body["modelfile"]
    assert "top_k" in body["modelfile"]
    assert "top_k" not in body["parameters"]


async def test_show_minimal_model(client: httpx.AsyncClient) -> None:
    body = json_body(await client.post("/api/show", json={"model": "chatty"}))
    assert "license" not in body and "system" not in body and "parameters" not in body
    assert body["model_info"] == {}  # always present
    assert body["messages"] == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "A test model."},
    ]


async def test_show_model_template_wins(client: httpx.AsyncClient, store: Store) -> None:
    install_fake_model(store, "templated", ModelConfig(template="{{ .Prompt }}"))
    assert (
        json_body(await client.post("/api/show", json={"model": "templated"}))["template"] == "{{ .Prompt }}"
    )


async def test_show_names(client: httpx.AsyncClient) -> None:
    # the deprecated "name", the Go CLI's {"model": "", "name": ...}, case-insensitive lookup
    for payload in (
        {"name": "tiny"},
        {"model": "", "name": "tiny", "system": "", "template": "", "verbose": False, "options": None},
        {"model": "TINY:Latest"},
        {"model": "registry.ollama.ai/library/tiny:latest"},
        {"model": " tiny "},
    ):
        assert (await client.post("/api/show", json=payload)).status_code == 200, payload


async def test_show_errors(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/show", json={})
    assert (response.status_code, error_of(response)) == (400, "model is required")
    response = await client.post("/api/show", json={"model": "", "name": ""})
    assert (response.status_code, error_of(response)) == (400, "model is required")
    response = await client.post("/api/show", json={"model": "bad name!"})
    assert (response.status_code, error_of(response)) == (400, "invalid model name")
    response = await client.post("/api/show", json={"model": "Foo"})
    assert (response.status_code, error_of(response)) == (404, "model 'Foo:latest' not found")
    response = await client.post("/api/show", json={"model": "someone/foo:q4"})
    assert (response.status_code, error_of(response)) == (404, "model 'someone/foo:q4' not found")


def test_tokenizer_chat_template(tmp_path: Path) -> None:
    assert tokenizer_chat_template(tmp_path) == ""
    (tmp_path / "chat_template.jinja").write_text("from jinja file")
    assert tokenizer_chat_template(tmp_path) == "from jinja file"
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
        )
    )
    assert tokenizer_chat_template(tmp_path) == "D"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "S"}))
    assert tokenizer_chat_template(tmp_path) == "S"
    (tmp_path / "tokenizer_config.json").write_text("not json")
    assert tokenizer_chat_template(tmp_path) == "from jinja file"


def test_shutdown_closes_the_engine(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    engine = ScriptedEngine()
    app = create_app(Settings(home=tmp_path), engine, Store(tmp_path / "store"))
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        assert not engine.closed
    assert engine.closed
