"""Model management over HTTP (reference §4.10–§4.15): pull, push, copy, delete, blobs,
create from uploaded files or a pulled model, and which clients may create from a path."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from starlette.applications import Starlette

from daemon.routes.create import LOCAL_PATH_ONLY
from daemon.routes.pull import NO_PUSH
from daemon.testing import ScriptedEngine
from registry.create import UNKNOWN_FILES
from registry.hub import Hub
from registry.pull import Puller
from registry.store import Store
from registry.uploads import Uploads
from tests.fakehub import FakeHub
from tests.http_support import error_of, json_body, ndjson
from tests.test_store import make_model_dir

pytest_plugins = ["tests.http_support"]
pytestmark = pytest.mark.anyio

REPO = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"  # the catalog's qwen2.5:0.5b
HOSTILE = ["../../etc/passwd", "/etc/passwd", "..", "a/../../b", "a\x00b", "x" * 5000, "C:\\x", "~/.ssh/id"]


@pytest.fixture
def hub(tiny_model_dir: Path) -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add_model_dir(REPO, tiny_model_dir)
    with fake.serve():
        yield fake


@pytest.fixture
def pulling(app: Starlette, store: Store, hub: FakeHub) -> Iterator[Puller]:
    """The app's puller, pointed at the fake hub."""
    puller = Puller(store, Hub(endpoint=f"http://127.0.0.1:{hub.port}"), interval=0.01)
    app.state.puller = puller
    yield puller
    puller.close()


@pytest.fixture
async def remote(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client on another machine."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- pull / push ------------------------------------------------------------------------


async def test_pull_streamed(client: httpx.AsyncClient, pulling: Puller, store: Store) -> None:
    response = await client.post("/api/pull", json={"model": "qwen2.5:0.5b", "insecure": True})
    assert response.status_code == 200
    events = ndjson(response)
    assert events[0] == {"status": "pulling manifest"}
    assert [e["status"] for e in events[-3:]] == ["verifying sha256 digest", "writing manifest", "success"]
    assert all(set(e) <= {"status", "digest", "total", "completed"} for e in events)
    listed = json_body(await client.get("/api/tags"))["models"]
    pulled = next(m for m in listed if m["name"] == "qwen2.5:0.5b")
    assert list(pulled) == ["name", "model", "modified_at", "size", "digest", "details", "capabilities"]
    assert pulled["details"] == {
        "parent_model": "",
        "format": "mlx",
        "family": "qwen2",
        "families": ["qwen2"],
        "parameter_size": pulled["details"]["parameter_size"],
        "quantization_level": "F32",
        "context_length": 4096,
        "embedding_length": 64,
    }
    installed = store.resolve("qwen2.5:0.5b")
    assert installed is not None and pulled["size"] == installed.size and pulled["digest"] == installed.digest
    shown = json_body(await client.post("/api/show", json={"model": "qwen2.5:0.5b"}))
    assert {"modelfile", "template", "details", "model_info", "capabilities", "modified_at"} <= set(shown)
    assert shown["model_info"]["qwen2.context_length"] == 4096
    assert shown["capabilities"] == ["completion"]


def _config_digest(store: Store, name: str) -> str:
    model = store.resolve(name)
    assert model is not None
    raw = json.loads(store.manifest_path(model.name).read_bytes())
    return str(raw["config"]["digest"])


async def test_pull_not_streamed_and_errors(client: httpx.AsyncClient, pulling: Puller) -> None:
    response = await client.post("/api/pull", json={"name": REPO, "stream": False})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "success"}
    for stream in (True, False):
        for name in ("", "bad name!", *HOSTILE):
            response = await client.post("/api/pull", json={"model": name, "stream": stream})
            assert (response.status_code, error_of(response)) == (400, "invalid model name"), name
    response = await client.post("/api/pull", json={"model": "qwen2.5:8b"})
    events = ndjson(response)
    assert response.status_code == 200 and events[0] == {"status": "pulling manifest"}
    assert events[-1]["error"].startswith("pull model manifest: file does not exist")
    response = await client.post("/api/pull", json={"model": "qwen2.5:8b", "stream": False})
    assert response.status_code == 500
    assert error_of(response).startswith("pull model manifest: file does not exist")
    response = await client.post("/api/pull", json={"model": REPO, "insecure": "yes"})
    assert response.status_code == 400 and "PullRequest.insecure" in error_of(response)


async def test_pull_with_the_ollama_client(api: ollama.AsyncClient, pulling: Puller) -> None:
    parts = [part async for part in await api.pull("qwen2.5:0.5b", stream=True)]
    assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
    layers = [p for p in parts if p.digest]
    assert layers and all(p.total and p.status == f"pulling {p.digest[7:19]}" for p in layers)
    assert (await api.pull("qwen2.5:0.5b")).status == "success"
    with pytest.raises(ollama.ResponseError) as info:
        await api.pull("nope/nothing")
    assert info.value.status_code == 500 and "file does not exist" in info.value.error


async def test_push(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/push", json={"model": "tiny"})
    assert (response.status_code, error_of(response)) == (501, NO_PUSH)
    assert error_of(await client.post("/api/push", json={})) == "model is required"
    assert error_of(await client.post("/api/push", json={"name": "bad name!"})) == "invalid model name"


# -- copy / delete ----------------------------------------------------------------------


async def test_copy(client: httpx.AsyncClient, api: ollama.AsyncClient, store: Store) -> None:
    response = await client.post("/api/copy", json={"source": "tiny", "destination": "Mine:v1"})
    assert (response.status_code, response.content) == (200, b"")
    assert "content-type" not in response.headers
    source, copied = store.resolve("tiny"), store.resolve("mine:V1")
    assert source is not None and copied is not None and copied.digest == source.digest
    assert copied.display == "Mine:v1"
    assert (await api.copy("tiny", "other")).status == "success"
    cases = [
        ({"source": "bad name!", "destination": "x"}, 400, 'source "bad name!" is invalid'),
        ({"source": "tiny", "destination": "../x"}, 400, 'destination "../x" is invalid'),
        ({"source": "nope", "destination": "x"}, 404, 'model "nope" not found'),
        ({}, 400, 'source "" is invalid'),
    ]
    for body, status, message in cases:
        response = await client.post("/api/copy", json=body)
        assert (response.status_code, error_of(response)) == (status, message)


async def test_delete(
    client: httpx.AsyncClient, api: ollama.AsyncClient, store: Store, engine: ScriptedEngine
) -> None:
    tiny = store.resolve("tiny")
    assert tiny is not None
    config_blob = _config_digest(store, "tiny")  # its layers are shared with the other fake models
    await client.post("/api/copy", json={"source": "tiny", "destination": "copy"})
    # Deleting the source of a copy: the files stay, the copy still works, nothing is unloaded.
    response = await client.request("DELETE", "/api/delete", json={"model": "tiny"})
    assert (response.status_code, response.content) == (200, b"")
    assert store.resolve("tiny") is None and engine.unloads == []
    copy = store.resolve("copy")
    assert copy is not None and all(store.has_blob(layer.digest) for layer in copy.layers)
    assert (
        await client.post("/api/chat", json={"model": "copy", "messages": [], "stream": False})
    ).status_code == 200
    # The last name of a model: unloaded first, then its files go.
    response = await client.request(
        "DELETE", "/api/delete", json={"name": "COPY"}
    )  # the JS client sends name
    assert response.status_code == 200 and [h.digest for h in engine.unloads] == [tiny.digest]
    assert not store.has_blob(config_blob) and all(store.has_blob(layer.digest) for layer in tiny.layers)
    assert (await api.delete("chatty")).status == "success"
    cases = [
        ({}, 400, "model is required"),
        ({"model": "../x"}, 400, 'name "../x" is invalid'),
        ({"model": "nope"}, 404, "model 'nope' not found"),
    ]
    for body, status, message in cases:
        response = await client.request("DELETE", "/api/delete", json=body)
        assert (response.status_code, error_of(response)) == (status, message)


async def test_hostile_names_never_touch_the_disk(
    client: httpx.AsyncClient, store: Store, tmp_path: Path
) -> None:
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in HOSTILE:
        assert (await client.post("/api/show", json={"model": name})).status_code == 400
        assert (await client.post("/api/create", json={"model": name, "from": "tiny"})).status_code == 400
        assert (
            await client.post("/api/copy", json={"source": "tiny", "destination": name})
        ).status_code == 400
        assert (await client.request("DELETE", "/api/delete", json={"model": name})).status_code == 400
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# -- blobs and create from files --------------------------------------------------------


async def test_blobs(client: httpx.AsyncClient, api: ollama.AsyncClient, tmp_path: Path) -> None:
    data = b"some file contents"
    digest = digest_of(data)
    assert (await client.head(f"/api/blobs/{digest}")).status_code == 404
    assert (await client.post(f"/api/blobs/{digest}", content=data)).status_code == 201
    assert (await client.head(f"/api/blobs/{digest}")).status_code == 200
    assert (await client.head(f"/api/blobs/{digest.replace(':', '-')}")).status_code == 200
    assert (await client.post(f"/api/blobs/{digest}", content=data)).status_code == 200
    other = digest_of(b"other")
    response = await client.post(f"/api/blobs/{other}", content=data)
    assert response.status_code == 400
    assert error_of(response) == f'digest mismatch, expected "{other}", got "{digest}"'
    assert (await client.head(f"/api/blobs/{other}")).status_code == 404
    for bad in ("sha256:123", "md5:" + "0" * 64, "sha256:" + "g" * 64):
        response = await client.post(f"/api/blobs/{bad}", content=data)
        assert (response.status_code, error_of(response)) == (400, "invalid digest format")
        assert (await client.head(f"/api/blobs/{bad}")).status_code == 400
    (tmp_path / "file.bin").write_bytes(b"x" * 100_000)
    assert await api.create_blob(tmp_path / "file.bin") == digest_of(b"x" * 100_000)


async def test_create_from_uploaded_files(api: ollama.AsyncClient, store: Store, tmp_path: Path) -> None:
    source = make_model_dir(tmp_path / "weights")
    files = {path.name: await api.create_blob(path) for path in sorted(source.iterdir())}
    progress = [p async for p in await api.create("uploaded", files=files, system="Hi.", stream=True)]
    assert progress[-1].status == "success"
    assert [p.status for p in progress[:-2]] == [
        f"creating new layer {files[name]}" for name in sorted(files)
    ]
    model = store.resolve("uploaded")
    assert model is not None and model.config.system == "Hi." and model.config.format == "mlx"
    assert {layer.filename: layer.digest for layer in model.layers} == files
    assert list((store.home / "uploads").glob("sha256-*")) == []  # moved into the store
    again = await api.create("again", files=files)  # the blobs are in the store now
    assert again.status == "success"


async def test_create_from_an_uploaded_gguf(
    client: httpx.AsyncClient, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import registry.gguf_import as gguf_import

    def convert(gguf: Path, out: Path, progress: Any = None) -> None:
        assert gguf.read_bytes().startswith(b"GGUF")
        make_model_dir(out)

    monkeypatch.setattr(gguf_import, "convert_gguf", convert)
    data = b"GGUF" + b"\0" * 60
    await client.post(f"/api/blobs/{digest_of(data)}", content=data)
    body = {"model": "from-gguf", "files": {"model.gguf": digest_of(data)}, "stream": False}
    response = await client.post("/api/create", json=body)
    assert response.json() == {"status": "success"}, response.text
    assert store.resolve("from-gguf") is not None
    assert list((store.home / "uploads").glob("sha256-*")) == []


async def test_create_files_errors(client: httpx.AsyncClient) -> None:
    data = b"not a model"
    await client.post(f"/api/blobs/{digest_of(data)}", content=data)
    missing = digest_of(b"missing")
    cases = [
        ({"../x": digest_of(data)}, "file path must be relative"),
        ({"/abs/x": digest_of(data)}, "file path must be relative"),
        ({"a\\b": digest_of(data)}, "file path must be relative"),
        ({"x": "sha256:zz"}, "invalid digest format"),
        ({"x": ""}, "invalid digest format"),
        ({"config.json": missing}, f'blob "{missing}" not found'),
        ({"notes.txt": digest_of(data)}, UNKNOWN_FILES),
    ]
    for files, message in cases:
        response = await client.post("/api/create", json={"model": "x", "files": files})
        assert response.status_code == 400, files
        assert error_of(response).startswith(message), (files, error_of(response))
    response = await client.post("/api/create", json={"model": "x", "files": {"a": 1}})
    assert response.status_code == 400 and "CreateRequest.files" in error_of(response)


async def test_create_pulls_a_missing_source(
    client: httpx.AsyncClient, pulling: Puller, store: Store
) -> None:
    response = await client.post("/api/create", json={"model": "mine", "from": REPO, "system": "Be brief."})
    events = ndjson(response)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert statuses.count("success") == 1  # the pull's own success is not passed on
    assert "verifying sha256 digest" in statuses and statuses.count("writing manifest") == 2
    mine, pulled = store.resolve("mine"), store.resolve(REPO)
    assert mine is not None and pulled is not None
    assert mine.config.parent_model == f"{REPO}:latest" and mine.config.system == "Be brief."
    response = await client.post("/api/create", json={"model": "x", "from": "qwen2.5:8b", "stream": False})
    assert response.status_code == 500 and "file does not exist" in error_of(response)


async def test_paths_only_from_this_machine(
    client: httpx.AsyncClient, remote: httpx.AsyncClient, app: Starlette, store: Store, tmp_path: Path
) -> None:
    source = make_model_dir(tmp_path / "local-model")
    for path in (str(source), "./models/x", "~/models/x", "/etc"):
        response = await remote.post("/api/create", json={"model": "x", "from": path})
        assert (response.status_code, error_of(response)) == (400, LOCAL_PATH_ONLY), path
    assert (
        await remote.post("/api/create", json={"model": "x", "from": "tiny", "stream": False})
    ).status_code == 200
    assert (
        await client.post("/api/create", json={"model": "y", "from": str(source), "stream": False})
    ).status_code == 200
    for host in ("::1", "127.8.9.10", "::ffff:127.0.0.1"):
        transport = httpx.ASGITransport(app=app, client=(host, 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as local:
            body = {"model": "z", "from": str(source), "stream": False}
            assert (await local.post("/api/create", json=body)).status_code == 200, host


def test_uploads_are_kept_a_day(store: Store) -> None:
    uploads = Uploads(store)
    data = b"an upload nobody used"
    with uploads.receive(digest_of(data)) as writer:
        writer.write(data)
        writer.commit()
    path = uploads.path(digest_of(data))
    assert path.read_bytes() == data and uploads.prune() == 0
    old = time.time() - 25 * 3600
    os.utime(path, (old, old))
    assert uploads.prune() == 1 and not uploads.exists(digest_of(data))
