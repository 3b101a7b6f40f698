"""``POST /api/create`` (reference §4.12): progress streaming, ``stream: false``, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from registry.create import CreateError, CreateRequest
from registry.store import Store
from tests.http_support import error_of, json_body, ndjson

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio


async def test_create_from_an_installed_model(client: httpx.AsyncClient, store: Store) -> None:
    response = await client.post(
        "/api/create",
        json={
            "model": "mine",
            "from": "tiny",
            "system": "Be brief.",
            "parameters": {"temperature": 0.2, "stop": ["###"]},
            "license": "Apache-2.0",
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        },
    )
    assert response.status_code == 200
    progress = ndjson(response)
    assert progress[-1] == {"status": "success"}
    assert all(set(p) <= {"status", "digest", "total", "completed"} for p in progress)
    created = store.resolve("mine")
    assert created is not None
    assert created.config.system == "Be brief."
    assert created.config.parameters["temperature"] == 0.2
    assert created.config.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    assert "Apache-2.0" in created.config.license
    shown = json_body(await client.post("/api/show", json={"model": "mine"}))
    assert shown["system"] == "Be brief."
    names = [m["name"] for m in json_body(await client.get("/api/tags"))["models"]]
    assert "mine:latest" in names


async def test_create_not_streamed(client: httpx.AsyncClient, store: Store) -> None:
    response = await client.post("/api/create", json={"name": "copy", "from": "tiny", "stream": False})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "success"}
    assert store.resolve("copy") is not None
    go_cli = {"model": "", "name": "copy2", "from": "tiny", "license": ["a", "b"], "stream": False}
    assert (await client.post("/api/create", json=go_cli)).status_code == 200


async def test_create_errors(client: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"from": "tiny"}, 400, "invalid model name"),
        ({"model": "bad name!", "from": "tiny"}, 400, "invalid model name"),
        ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "x", "files": {"model.gguf": "sha256:" + "0" * 64}}, 400, "not found"),
        (
            {"model": "x", "from": "tiny", "adapters": {"a.gguf": "sha256:00"}},
            400,
            "'adapters' is not supported",
        ),
        ({"model": "x", "from": "tiny", "quantize": "q4_K_M"}, 400, "quantization is not supported yet"),
        ({"model": "x", "from": "tiny", "quantization": "q8_0"}, 400, "quantization is not supported yet"),
        ({"model": "x", "from": "tiny", "license": 5}, 400, "CreateRequest.license"),
        ({"model": "x", "from": "tiny", "messages": "hi"}, 400, "CreateRequest.messages"),
        ({"model": "x", "from": "tiny", "parameters": []}, 400, "CreateRequest.parameters"),
    ]
    for payload, status, text in cases:
        for stream in (True, False):
            response = await client.post("/api/create", json={**payload, "stream": stream})
            assert response.status_code == status, payload
            assert text in error_of(response), payload
    # A "from" that is not installed is pulled first, and "nope" is in no catalog (as Ollama).
    response = await client.post("/api/create", json={"model": "x", "from": "nope", "stream": False})
    assert response.status_code == 500
    assert error_of(response).startswith("pull model manifest: file does not exist")
    response = await client.post("/api/create", json={"model": "x", "from": "nope"})
    assert ndjson(response)[-1]["error"].startswith("pull model manifest: file does not exist")


def scripted_create(steps: list[dict[str, Any] | CreateError]) -> Any:
    def create_model(store: Store, req: CreateRequest, pull: Any = None) -> Iterator[dict[str, Any]]:
        for step in steps:
            if isinstance(step, CreateError):
                raise step
            yield step

    return create_model


async def test_error_after_the_first_object(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = scripted_create([{"status": "using existing layer sha256:aa"}, CreateError("disk full", 507)])
    monkeypatch.setattr("daemon.routes.create.create_model", fake)
    response = await client.post("/api/create", json={"model": "x", "from": "tiny"})
    assert response.status_code == 200
    assert ndjson(response) == [{"status": "using existing layer sha256:aa"}, {"error": "disk full"}]
    response = await client.post("/api/create", json={"model": "x", "from": "tiny", "stream": False})
    assert (response.status_code, error_of(response)) == (507, "disk full")


async def test_error_before_the_first_object(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("daemon.routes.create.create_model", scripted_create([CreateError("busy", 503)]))
    response = await client.post("/api/create", json={"model": "x", "from": "tiny"})
    assert (response.status_code, error_of(response)) == (503, "busy")


async def test_request_reaches_the_registry(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[CreateRequest] = []

    def create_model(store: Store, req: CreateRequest, pull: Any = None) -> Iterator[dict[str, Any]]:
        seen.append(req)
        yield {"status": "success"}

    monkeypatch.setattr("daemon.routes.create.create_model", create_model)
    payload = {
        "model": " Mine:v1 ",
        "from": "tiny",
        "template": "T",
        "system": "S",
        "parameters": {"top_k": 3},
        "license": "L",
        "messages": [{"role": "User", "content": "c"}],
    }
    assert (await client.post("/api/create", json=payload)).status_code == 200
    assert seen == [
        CreateRequest(
            model="Mine:v1",
            from_="tiny",
            template="T",
            system="S",
            parameters={"top_k": 3},
            messages=[{"role": "user", "content": "c"}],
            license=["L"],
        )
    ]


async def test_create_with_the_ollama_client(api: ollama.AsyncClient) -> None:
    result = await api.create("derived", from_="tiny", system="Short answers.", parameters={"top_k": 5})
    assert result.status == "success"
    assert "Short answers." in ((await api.show("derived")).modelfile or "")
    parts = [part async for part in await api.create("derived2", from_="tiny", stream=True)]
    assert parts[-1].status == "success"
