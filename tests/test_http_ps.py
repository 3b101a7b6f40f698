"""``GET /api/ps`` over the scripted engine (reference §4.4), and keep_alive reaching the engine."""

from __future__ import annotations

import math
import time
from datetime import datetime

import httpx
import ollama
import pytest

from daemon.engine import LoadedModel
from daemon.routes.ps import entry
from daemon.testing import ScriptedEngine
from registry.store import Store
from tests.http_support import json_body

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

DETAIL_KEYS = ["parent_model", "format", "family", "families", "parameter_size", "quantization_level"]


async def test_nothing_loaded(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/ps")
    assert response.status_code == 200
    assert json_body(response) == {"models": []}
    assert (await client.post("/api/ps")).status_code == 405


async def test_loaded_models(client: httpx.AsyncClient, store: Store) -> None:
    await client.post("/api/generate", json={"model": "tiny", "keep_alive": "10m"})
    await client.post("/api/generate", json={"model": "chatty", "keep_alive": -1})
    models = json_body(await client.get("/api/ps"))["models"]
    assert [m["name"] for m in models] == ["chatty:latest", "tiny:latest"]  # the longest expiry first
    chatty, tiny = models
    installed = store.resolve("tiny")
    assert installed is not None
    assert list(tiny) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert tiny["model"] == "tiny:latest" and tiny["digest"] == installed.digest
    assert tiny["size"] == tiny["size_vram"] == 1 << 20
    assert tiny["context_length"] == 4096
    assert list(tiny["details"]) == DETAIL_KEYS
    assert tiny["details"]["family"] == "llama" and tiny["details"]["parameter_size"] == "135M"
    assert tiny["details"]["quantization_level"] == "Q4_0" and tiny["details"]["parent_model"] == ""
    expires = datetime.fromisoformat(tiny["expires_at"])
    assert expires.utcoffset() is not None  # local time with its offset
    assert 590 < expires.timestamp() - time.time() <= 600
    assert datetime.fromisoformat(chatty["expires_at"]).year > 2300  # forever


async def test_the_official_client_reads_it(api: ollama.AsyncClient) -> None:
    assert (await api.ps()).models == []
    await api.generate("tiny", keep_alive="5m")
    [model] = (await api.ps()).models
    assert model.model == "tiny:latest" and model.size == model.size_vram == 1 << 20
    assert model.details and model.details.family == "llama"
    assert model.expires_at is not None and model.context_length == 4096
    await api.generate("tiny", keep_alive=0)  # the unload idiom
    assert (await api.ps()).models == []


async def test_keep_alive_reaches_the_engine(client: httpx.AsyncClient, engine: ScriptedEngine) -> None:
    for keep_alive, seconds in ((None, None), ("1h30m", 5400.0), (-1, math.inf), (42.5, 42.5)):
        payload = {"model": "tiny", "prompt": "hi", "stream": False}
        if keep_alive is not None:
            payload["keep_alive"] = keep_alive
        assert (await client.post("/api/generate", json=payload)).status_code == 200
        assert engine.keep_alives[-1] == seconds
        assert engine.requests[-1].keep_alive == seconds
    response = await client.post("/api/chat", json={"model": "tiny", "messages": [], "keep_alive": "2m"})
    assert response.status_code == 200 and engine.keep_alives[-1] == 120.0


async def test_keep_alive_zero_unloads_after_the_generation(
    client: httpx.AsyncClient, engine: ScriptedEngine
) -> None:
    payload = {"model": "tiny", "prompt": "hi", "stream": False, "keep_alive": "0s"}
    assert (await client.post("/api/generate", json=payload)).status_code == 200
    assert [m.name for m in engine.unloads] == ["tiny:latest"]
    assert json_body(await client.get("/api/ps")) == {"models": []}


def test_a_model_deleted_while_loaded_keeps_its_entry() -> None:
    now = datetime.now()
    expires, body = entry(LoadedModel("gone:latest", "f" * 64, 10, 2048, expires_at=math.inf), None, now)
    assert expires.year > 2300
    assert body["details"] == {
        "parent_model": "",
        "format": "",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "",
    }
