"""Request decoding for every JSON endpoint (reference §1.3, §11)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.http_support import error_of, json_body, ndjson

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

ENDPOINTS = ["/api/generate", "/api/chat", "/api/show", "/api/create"]


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_missing_body(client: httpx.AsyncClient, path: str) -> None:
    for content in (b"", b"  \n\t "):
        response = await client.post(path, content=content)
        assert (response.status_code, error_of(response)) == (400, "missing request body")


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_malformed_json(client: httpx.AsyncClient, path: str) -> None:
    for content in (
        b"x",
        b'{"model": "tiny"',
        b"{'model': 'tiny'}",
        b'{"model": "tiny"} trailing',
        b"\xff\xfe",
    ):
        response = await client.post(path, content=content)
        assert response.status_code == 400, content
        assert error_of(response).startswith("invalid JSON in request body: ")


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_body_that_is_not_an_object(client: httpx.AsyncClient, path: str) -> None:
    for content, kind in ((b"[]", "array"), (b"42", "number"), (b'"tiny"', "string"), (b"true", "bool")):
        response = await client.post(path, content=content)
        assert response.status_code == 400
        assert error_of(response).startswith(f"json: cannot unmarshal {kind} into Go value of type api.")


async def test_null_body_is_an_empty_request(client: httpx.AsyncClient) -> None:
    expected = {
        "/api/generate": (404, "model '' not found"),
        "/api/chat": (400, "model is required"),
        "/api/show": (400, "model is required"),
        "/api/create": (400, "invalid model name"),
    }
    for path, (status, message) in expected.items():
        for content in (b"null", b"{}"):
            response = await client.post(path, content=content)
            assert (response.status_code, error_of(response)) == (status, message), path


@pytest.mark.parametrize(
    ("path", "payload", "message"),
    [
        (
            "/api/generate",
            {"prompt": 5},
            "json: cannot unmarshal number 5 into Go struct field GenerateRequest.prompt",
        ),
        (
            "/api/generate",
            {"model": ["tiny"]},
            "cannot unmarshal array into Go struct field GenerateRequest.model",
        ),
        (
            "/api/generate",
            {"stream": "yes"},
            "cannot unmarshal string into Go struct field GenerateRequest.stream",
        ),
        ("/api/generate", {"raw": 1}, "GenerateRequest.raw of type bool"),
        ("/api/generate", {"context": "1,2"}, "GenerateRequest.context of type []int"),
        (
            "/api/generate",
            {"context": [1.5]},
            "cannot unmarshal number 1.5 into Go struct field GenerateRequest.context",
        ),
        ("/api/generate", {"images": [1]}, "GenerateRequest.images"),
        ("/api/generate", {"options": "fast"}, "GenerateRequest.options of type map[string]interface {}"),
        ("/api/generate", {"top_logprobs": 1.5}, "GenerateRequest.top_logprobs of type int"),
        ("/api/generate", {"keep_alive": True}, "Unsupported type: 'bool'"),
        ("/api/generate", {"keep_alive": "5"}, 'time: missing unit in duration "5"'),
        ("/api/generate", {"keep_alive": [1]}, "Unsupported type: '[]interface {}'"),
        ("/api/chat", {"messages": {"role": "user"}}, "ChatRequest.messages"),
        ("/api/chat", {"tools": "none"}, "ChatRequest.tools"),
        ("/api/chat", {"keep_alive": "-1"}, 'time: missing unit in duration "-1"'),
        ("/api/chat", {"think": "hard"}, 'invalid think value: "hard"'),
        ("/api/show", {"verbose": "yes"}, "ShowRequest.verbose of type bool"),
        ("/api/show", {"model": 1}, "ShowRequest.model of type string"),
        ("/api/create", {"from": 7}, "CreateRequest.from of type string"),
    ],
)
async def test_wrong_field_types(
    client: httpx.AsyncClient, path: str, payload: dict[str, Any], message: str
) -> None:
    response = await client.post(path, json={"model": "tiny", **payload})
    assert response.status_code == 400
    assert message in error_of(response)


async def test_any_content_type_and_headers(client: httpx.AsyncClient) -> None:
    body = b'{"model": "tiny", "prompt": "hi", "stream": false}'
    for content_type in (
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/json; charset=utf-8",
    ):
        response = await client.post(
            "/api/generate",
            content=body,
            headers={
                "content-type": content_type,
                "authorization": "Bearer sk-ignored",
                "user-agent": "curl/8",
            },
        )
        assert json_body(response)["response"] == "Hello world"
    assert ndjson(await client.post("/api/generate", content=b'{"model":"tiny","prompt":"hi"}'))[-1]["done"]


async def test_unknown_fields_are_ignored(client: httpx.AsyncClient) -> None:
    extra = {"width": 1, "steps": [1], "_debug": {"x": None}, "suspend": True}
    assert (
        await client.post("/api/generate", json={"model": "tiny", "prompt": "x", **extra})
    ).status_code == 200
    assert (await client.post("/api/show", json={"model": "tiny", **extra})).status_code == 200
