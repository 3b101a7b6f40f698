"""Fixtures and helpers for the HTTP tests: a temporary store with fake models, a scripted engine,
the app, and an httpx client that calls it in-process (no sockets).

Test modules load it with ``pytest_plugins`` and import its helpers, so pytest sees it as
imported before it could rewrite its asserts: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import orjson
import pytest
from starlette.applications import Starlette

from daemon.app import create_app
from daemon.config import Settings
from daemon.testing import ScriptedEngine, install_fake_model
from registry.store import ModelConfig, Store

JSON_CT = "application/json; charset=utf-8"
NDJSON_CT = "application/x-ndjson"
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)

TINY_CONFIG = ModelConfig(
    system="You are terse.",
    parameters={"temperature": 0.5, "stop": ["<|end|>"], "num_keep": 8},
    license=["MIT License"],
    family="llama",
    families=["llama"],
    parameter_size="135M",
    quantization_level="Q4_0",
    context_length=2048,
    embedding_length=576,
    model_info={
        "general.architecture": "llama",
        "general.name": "hidden",
        "general.parameter_count": 134515008,
        "llama.context_length": 2048,
        "llama.embedding_length": 576,
        "tokenizer.ggml.tokens": ["a", "b", "c", "d", "e", "f"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.chat_template": "hidden",
    },
)
CHATTY_CONFIG = ModelConfig(
    messages=[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A test model."}],
)
EMBED_CONFIG = ModelConfig(capabilities=["embedding"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """``tiny`` (system prompt, parameters, details), ``chatty`` (MESSAGE history), ``embed``."""
    store = Store(tmp_path / "home")
    install_fake_model(store, "tiny", TINY_CONFIG)
    install_fake_model(store, "chatty", CHATTY_CONFIG)
    install_fake_model(store, "embed", EMBED_CONFIG)
    return store


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def app(settings: Settings, engine: ScriptedEngine, store: Store) -> Starlette:
    return create_app(settings, engine, store)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[ollama.AsyncClient]:
    """The official ``ollama`` client, unchanged, talking to the app in-process."""
    client = ollama.AsyncClient(host="http://test", transport=httpx.ASGITransport(app=app))
    yield client
    await client._client.aclose()


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    """The objects of an NDJSON body, checking the framing: ``\\n`` after each, no blank line."""
    assert response.headers["content-type"] == NDJSON_CT
    body = response.content
    assert body.endswith(b"\n")
    lines = body[:-1].split(b"\n")
    assert all(lines), "blank line in the stream"
    objects = [orjson.loads(line) for line in lines]
    assert all(isinstance(obj, dict) for obj in objects)
    return objects


def json_body(response: httpx.Response) -> Any:
    """A JSON answer: the exact content type and no trailing newline."""
    assert response.headers["content-type"] == JSON_CT
    assert not response.content.endswith(b"\n")
    return orjson.loads(response.content)


def error_of(response: httpx.Response) -> str:
    body = json_body(response)
    assert set(body) == {"error"}
    message: str = body["error"]
    return message
