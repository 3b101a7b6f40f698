"""The request body limit: 413 ``{"error"}`` over it (declared or chunked), untouched under it,
blob uploads exempt; and the live daemon applies it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from daemon.app import create_app
from daemon.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware, max_body_bytes, too_large
from daemon.config import Settings
from daemon.testing import ScriptedEngine, install_fake_model
from registry.store import Store
from tests.conftest import start_daemon
from tests.http_support import TINY_CONFIG

LIMIT = 4096


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = Store(tmp_path / "store")
    install_fake_model(store, "tiny", TINY_CONFIG)
    app = create_app(Settings(home=tmp_path), ScriptedEngine(load_seconds=0.0), store)
    with TestClient(BodyLimitMiddleware(app, LIMIT)) as test_client:
        yield test_client


def padded(size: int) -> bytes:
    """A valid show request of exactly ``size`` bytes."""
    head, tail = b'{"model": "tiny", "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_under_and_at_the_limit_the_route_answers(client: TestClient) -> None:
    for size in (100, LIMIT):
        assert client.post("/api/show", content=padded(size)).status_code == 200
    assert client.post("/api/show", content=chunks(padded(LIMIT))).status_code == 200


def test_over_the_limit_is_413_before_the_route_runs(client: TestClient) -> None:
    for content in (padded(LIMIT + 1), chunks(padded(LIMIT + 1)), chunks(b"[" * (10 * LIMIT))):
        response = client.post("/api/show", content=content)
        assert response.status_code == 413
        assert response.json() == {"error": too_large(LIMIT)}
    for path in ("/api/generate", "/api/chat", "/v1/chat/completions", "/api/tags"):
        assert client.post(path, content=padded(LIMIT + 1)).status_code == 413


def test_blob_uploads_are_not_bounded(client: TestClient) -> None:
    blob = b"\0" * (3 * LIMIT)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert client.post(f"/api/blobs/{digest}", content=blob).status_code == 201


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("", DEFAULT_MAX_BODY_BYTES),
        ("0", 0),
        ("123", 123),
        ("-5", DEFAULT_MAX_BODY_BYTES),
        ("1e6", DEFAULT_MAX_BODY_BYTES),
    ],
)
def test_setting(text: str, limit: int) -> None:
    assert max_body_bytes({"MLXD_MAX_BODY_BYTES": text}) == limit


def test_zero_turns_it_off(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    install_fake_model(store, "tiny", TINY_CONFIG)
    app = create_app(Settings(home=tmp_path), ScriptedEngine(load_seconds=0.0), store)
    with TestClient(BodyLimitMiddleware(app, 0)) as test_client:
        assert test_client.post("/api/show", content=padded(10 * LIMIT)).status_code == 200


@pytest.mark.e2e
def test_the_daemon_applies_it(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path / "home", extra_env={"MLXD_MAX_BODY_BYTES": str(LIMIT)})
    try:
        response = httpx.post(daemon.url + "/api/generate", content=padded(LIMIT + 1), timeout=10)
        assert response.status_code == 413 and response.json() == {"error": too_large(LIMIT)}
        response = httpx.post(daemon.url + "/api/show", content=chunks(padded(20 * LIMIT)), timeout=10)
        assert response.status_code == 413
        assert httpx.post(daemon.url + "/api/show", content=padded(LIMIT), timeout=10).status_code == 404
    finally:
        assert daemon.stop() == 0
