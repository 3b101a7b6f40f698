"""Schemathesis against a live daemon with the tiny model, from ``daemon.openapi``'s document:
every operation gets a few dozen generated requests; each answer is a success, a 4xx carrying
``error``, or one of Ollama's documented 500s, and never takes long."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case

from daemon.openapi import document
from tests.conftest import TINY, Daemon, daemon_with_tiny

pytestmark = pytest.mark.e2e

DOCUMENTED_500 = re.compile(
    r'(option "[a-z_]+" must be (of type \w+|of an array of strings)|invalid format: )'
)
GENERATION = ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions")
PROTECTED = ("tiny", TINY, f"{TINY}:latest")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("schemathesis")
    env = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there: a pull fails at once
    with daemon_with_tiny(home, tiny_model_dir, extra_env=env) as daemon:
        yield daemon


SCHEMA = schemathesis.openapi.from_dict(document())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def bounded(case: Case) -> None:
    """Short generations (the tiny model would otherwise fill its context), and the
    installed model kept: not deleted, overwritten or copied over."""
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path in GENERATION:
        options = body.get("options")
        body["options"] = {**(options if isinstance(options, dict) else {}), "num_predict": 4}
        body["max_tokens"] = 4
    for key in ("model", "destination"):
        if (
            case.path in ("/api/delete", "/api/create", "/api/copy", "/api/pull")
            and body.get(key) in PROTECTED
        ):
            body[key] = "fuzzed"


def check(case: Case, status: int, content_type: str, content: bytes, seconds: float) -> None:
    where = f"{case.method} {case.path} {case.body!r:.300}"
    assert seconds < 20, (where, seconds)
    assert b"Traceback" not in content, where
    if status < 400:
        return
    if not content or status == 405 or (status == 404 and content == b"404 page not found"):
        return  # HEAD, or gin's answers for a path or method it has no route for
    assert content_type.startswith("application/json"), (where, status, content[:300])
    error = orjson.loads(content)
    assert isinstance(error, dict) and "error" in error, (where, status, content[:300])
    if status == 500:
        message = str(error["error"])
        pull_failed = case.path in ("/api/pull", "/api/create") and message.startswith(
            "pull model manifest: "
        )
        assert pull_failed or DOCUMENTED_500.search(message), (where, message)
    elif status == 501:
        assert case.path in ("/api/push", "/api/embed") or case.path.endswith("embeddings"), (where, error)
    else:
        assert 400 <= status < 500, (where, status, error)


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_api(live: Daemon, operation: Any, data: st.DataObject) -> None:
    case: Case = data.draw(operation.as_strategy())
    bounded(case)
    response = case.call(base_url=live.url, timeout=30)
    content_type = response.headers.get("content-type") or [""]
    check(case, response.status_code, content_type[0], response.content, response.elapsed)


def test_the_document_names_every_route() -> None:
    from daemon.openai import routes as openai_routes
    from daemon.routes import routes

    documented = set(document()["paths"])
    served = {getattr(route, "path", "").replace(":path}", "}") for route in [*routes(), *openai_routes()]}
    # Responses and Anthropic's Messages follow their vendors' own documents.
    assert served - documented <= {"/", "/v1/responses", "/v1/messages"}, served - documented
    assert documented <= served, documented - served
