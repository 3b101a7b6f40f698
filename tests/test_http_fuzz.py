"""Random JSON bodies never break the API: a 2xx, or a 4xx with ``{"error"}``; a 500 only for the
documented option-type and format errors (reference §2.3, §2.6)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from daemon.app import create_app
from daemon.config import Settings
from daemon.testing import ScriptedEngine, install_fake_model
from registry.store import Store
from tests.http_support import CHATTY_CONFIG, EMBED_CONFIG, TINY_CONFIG

DOCUMENTED_500 = re.compile(
    r'^(option "[a-z_]+" must be (of type \w+|of an array of strings)|invalid format: .*)$'
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Well-typed values three times in four."""
    return st.one_of(good, good, good, values)


names = st.sampled_from(
    ["tiny", "TINY:latest", "chatty", "embed", "nope", "bad name!", "", " tiny ", "a/b/c/d/e"]
)
texts = st.text(max_size=12)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": mostly(st.sampled_from(["user", "assistant", "system", "User", "tool"]))},
        optional={"content": mostly(texts), "images": values, "tool_calls": values, "thinking": values},
    ),
    max_size=3,
)
option_values = st.integers(-5, 5000) | st.floats(-2, 2, allow_nan=False) | st.lists(texts, max_size=2)
options = st.dictionaries(
    st.sampled_from(
        ["temperature", "top_k", "top_p", "seed", "stop", "num_ctx", "use_mmap", "numa", "mirostat"]
    ),
    mostly(option_values),
    max_size=3,
)
# Well-typed fields (whose values can still be wrong: unknown models, bad durations...).
WELL_TYPED: dict[str, st.SearchStrategy[Any]] = {
    "model": names,
    "name": names,
    "prompt": st.sampled_from(["", "hi"]) | texts,
    "suffix": st.sampled_from(["", "}"]),
    "system": texts,
    "template": st.sampled_from(["", "{{ .Prompt }}"]),
    "context": st.lists(st.integers(0, 50_000), max_size=3),
    "raw": st.booleans(),
    "images": st.sampled_from([[], ["aGk="]]),
    "messages": messages,
    "tools": st.sampled_from([[], [{"type": "function"}]]),
    "options": options,
    "keep_alive": st.sampled_from([0, -1, 1.5, "0", "5m", "5", "1h30m0s", "-1m", "soon"]),
    "stream": st.booleans(),
    "think": st.sampled_from([True, False, "low", "max", "hard"]),
    "format": st.sampled_from(["", "json", {"type": "object"}, "xml"]),
    "top_logprobs": st.integers(-2, 25),
    "logprobs": st.booleans(),
    "verbose": st.booleans(),
    "from": st.sampled_from(["tiny", "nope", "", "chatty"]),
    "license": texts | st.lists(texts, max_size=2),
    "parameters": options,
    "files": st.sampled_from([{}, {"a.gguf": "sha256:00"}]),
    "adapters": st.just({}),
    "quantize": st.sampled_from(["", "q4_K_M"]),
    "unknown_field": values,
}
# Sometimes any field may hold any JSON value.
LOOSE = {key: mostly(strategy) for key, strategy in WELL_TYPED.items()}
bodies = st.one_of(
    st.fixed_dictionaries({"model": names}, optional={k: v for k, v in WELL_TYPED.items() if k != "model"}),
    st.fixed_dictionaries({}, optional=WELL_TYPED),
    st.fixed_dictionaries({}, optional=LOOSE),
    values,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    store = Store(home / "store")
    for name, config in (("tiny", TINY_CONFIG), ("chatty", CHATTY_CONFIG), ("embed", EMBED_CONFIG)):
        install_fake_model(store, name, config)
    app = create_app(Settings(home=home), ScriptedEngine(load_seconds=0.0), store)
    with TestClient(app) as test_client:
        yield test_client


def check(client: TestClient, path: str, body: Any) -> None:
    if (
        path == "/api/create"
        and isinstance(body, dict)
        and str(body.get("model") or body.get("name")).strip()
        in (
            "tiny",
            "TINY:latest",
            "chatty",
            "embed",
        )
    ):
        body = {**body, "model": "fuzzed", "name": None}  # keep the fixtures' own models intact
    response = client.post(path, content=json.dumps(body))
    content_type = response.headers.get("content-type", "")
    assert "Traceback" not in response.text
    if response.status_code == 200:
        if content_type == "application/x-ndjson":
            lines = response.content.split(b"\n")
            assert lines[-1] == b"" and all(lines[:-1])
            assert all(isinstance(orjson.loads(line), dict) for line in lines[:-1])
        else:
            assert content_type.startswith("application/json")
            assert isinstance(orjson.loads(response.content), dict)
        return
    assert content_type.startswith("application/json"), (response.status_code, response.text)
    error = orjson.loads(response.content)
    assert list(error) == ["error"] and isinstance(error["error"], str) and error["error"]
    if response.status_code == 500 and path == "/api/create":
        # a "from" that is not installed is pulled: Ollama's 500 for a failed pull (no network here)
        assert error["error"].startswith("pull model manifest: "), error
    elif response.status_code == 500:
        assert path in ("/api/generate", "/api/chat") and DOCUMENTED_500.match(error["error"]), error
    else:
        assert response.status_code in (400, 404), (response.status_code, error)


FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(body=bodies)
def test_generate(client: TestClient, body: Any) -> None:
    check(client, "/api/generate", body)


@FUZZ
@given(body=bodies)
def test_chat(client: TestClient, body: Any) -> None:
    check(client, "/api/chat", body)


@FUZZ
@given(body=bodies)
def test_show(client: TestClient, body: Any) -> None:
    check(client, "/api/show", body)


@FUZZ
@given(body=bodies)
def test_create(client: TestClient, body: Any) -> None:
    check(client, "/api/create", body)
