"""Security properties as tests: the daemon binds to loopback unless told otherwise; no model
name or blob digest, through any route, reads, writes or deletes outside MLXD_HOME; shared
memory is private and unguessable; a writer killed mid-manifest leaves no torn manifest."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import posix_ipc
import pytest
from starlette.testclient import TestClient

from daemon.app import create_app
from daemon.config import Settings
from daemon.testing import ScriptedEngine, install_fake_model
from registry.hub import Hub
from registry.names import parse_name
from registry.pull import Puller
from registry.store import Layer, ModelConfig, Store
from tests.http_support import EMBED_CONFIG, TINY_CONFIG
from worker.transport import ShmChannel

# Names that would leave the store if joined naively, plainly and encoded.
HOSTILE_NAMES = [
    "../../../../victim",
    "../../../../victim:latest",
    "registry.ollama.ai/library/../../../../../victim:latest",
    "a/../../../../../victim",
    "/etc/passwd",
    "//etc/passwd",
    str(Path("/tmp").absolute()),
    "..",
    ".",
    "tiny/../../../../victim",
    "tiny:../../../../victim",
    "tiny\0:latest",
    "tiny%00",
    "..%2F..%2F..%2F..%2Fvictim",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/victim",
    "..\\..\\..\\..\\victim",
    "\uff0e\uff0e/\uff0e\uff0e/victim",
    "tiny:latest/../../../../../victim",
    "~/victim",
    "$HOME/victim",
]
HOSTILE_DIGESTS = [
    "sha256:../../../victim",
    "sha256-../../../victim",
    "sha256:" + "0" * 63 + "/",
    "sha256:..%2F..%2Fvictim",
    "sha256:%2e%2e%2fvictim",
    "sha256:" + "0" * 64 + "%00",
    "../../victim",
    "/etc/passwd",
    "sha256:" + "g" * 64,
    "sha512:" + "0" * 128,
]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: (size, mtime in ns)."""
    found = {}
    for dirpath, _, files in os.walk(root):
        for file in files:
            path = Path(dirpath, file)
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Path, Path]]:
    """An app over a store in ``tmp/home``, with copies of a valid manifest planted outside
    it where a traversal would land; yields the client, the home and the outside root."""
    home = tmp_path / "home"
    store = Store(home)
    install_fake_model(store, "tiny", TINY_CONFIG)
    install_fake_model(store, "embed", EMBED_CONFIG)
    manifest = store.manifest_path(parse_name("tiny"))
    for folder in [tmp_path, *manifest.parents[1:]]:  # wherever a traversal could land
        if folder == tmp_path.parent:
            break
        (folder / "victim").write_bytes(manifest.read_bytes())
    app = create_app(Settings(home=home), ScriptedEngine(load_seconds=0.0), store)
    app.state.puller = Puller(store, Hub("http://127.0.0.1:9"))  # nothing listens there
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, home, tmp_path


def requests_for(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("POST", "/api/show", {"model": name}),
        ("POST", "/api/generate", {"model": name, "prompt": "hi", "stream": False}),
        ("POST", "/api/chat", {"model": name, "messages": [], "stream": False}),
        ("POST", "/api/embed", {"model": name, "input": "hi"}),
        ("POST", "/api/embeddings", {"model": name, "prompt": "hi"}),
        ("POST", "/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/v1/completions", {"model": name, "prompt": "hi"}),
        ("POST", "/v1/embeddings", {"model": name, "input": "hi"}),
        ("POST", "/api/copy", {"source": name, "destination": "copied"}),
        ("POST", "/api/copy", {"source": "tiny", "destination": name}),
        ("POST", "/api/create", {"model": name, "from": "tiny", "stream": False}),
        ("POST", "/api/create", {"model": "created", "from": name, "stream": False}),
        ("POST", "/api/pull", {"model": name, "stream": False}),
        ("DELETE", "/api/delete", {"model": name}),
    ]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_no_name_reaches_outside_the_store(world: tuple[TestClient, Path, Path], name: str) -> None:
    client, _, root = world
    outside_before = {k: v for k, v in tree(root).items() if not k.startswith("home/")}
    for method, path, body in requests_for(name):
        response = client.request(method, path, content=orjson.dumps(body))
        assert response.status_code != 500 or path in ("/api/pull", "/api/create"), (path, response.text)
        # A copy from "tiny" or a create from it to a hostile name must be refused, and no
        # hostile name may find the planted manifests.
        assert response.status_code >= 400, (method, path, body, response.text)
    response = client.get("/v1/models/" + quote(name, safe="/"))
    if response.status_code == 200:  # "." and ".." are resolved by the client: the list
        assert response.json()["object"] == "list", (name, response.text)
    else:
        assert response.status_code in (400, 404), (name, response.text)
    outside_after = {k: v for k, v in tree(root).items() if not k.startswith("home/")}
    assert outside_after == outside_before
    assert (root / "victim").exists()
    names = [m["name"] for m in client.get("/api/tags").json()["models"]]
    assert sorted(names) == ["embed:latest", "tiny:latest"]


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
def test_no_digest_reaches_outside_the_blobs(world: tuple[TestClient, Path, Path], digest: str) -> None:
    client, _, root = world
    before = tree(root)
    data = b"payload"
    for encoded in (digest, quote(digest, safe=":"), quote(digest, safe="")):
        head = client.head("/api/blobs/" + encoded)
        assert head.status_code in (400, 404), (encoded, head.status_code)
        post = client.post("/api/blobs/" + encoded, content=data)
        assert post.status_code in (400, 404), (encoded, post.status_code, post.text)
    files = {"a.safetensors": digest}
    create = client.post("/api/create", content=orjson.dumps({"model": "m", "files": files, "stream": False}))
    assert create.status_code == 400, create.text
    assert tree(root) == before


def test_an_honest_blob_is_taken(world: tuple[TestClient, Path, Path]) -> None:
    client, _, _ = world
    data = b"payload"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.post("/api/blobs/" + digest, content=data).status_code == 201
    assert client.head("/api/blobs/" + digest).status_code == 200


def test_loopback_is_the_default_bind() -> None:
    for environ in ({}, {"OLLAMA_HOST": ""}, {"OLLAMA_HOST": "http://"}, {"OLLAMA_HOST": "127.0.0.1:8080"}):
        settings = Settings.from_env(environ)
        assert settings.bind_host == "127.0.0.1", (environ, settings.bind_host)
    assert Settings().bind_host == "127.0.0.1"
    # Every interface only when asked for (Ollama's "0.0.0.0" or an empty host: ":11434").
    assert Settings.from_env({"OLLAMA_HOST": "0.0.0.0"}).bind_host == "0.0.0.0"
    assert Settings.from_env({"OLLAMA_HOST": ":11434"}).bind_host == "0.0.0.0"


def test_shared_memory_is_private_and_unguessable() -> None:
    channels = [ShmChannel.create(capacity=1 << 16) for _ in range(8)]
    try:
        names = [channel.name for channel in channels]
        assert len(set(names)) == len(names)
        for name in names:
            suffix = name.rsplit("-", 1)[-1]
            assert len(suffix) >= 16 and int(suffix, 16) >= 0  # 64 random bits
            entries = [e for e in os.listdir("/dev/shm") if name.lstrip("/") in e]
            assert len(entries) == 2, entries  # the segment and its semaphore
            for entry in entries:
                mode = stat.S_IMODE(os.stat(f"/dev/shm/{entry}").st_mode)
                assert mode == 0o600, (entry, oct(mode))
        # A name someone planted first is never opened: creation is exclusive.
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.SharedMemory(names[0], posix_ipc.O_CREX, size=4096)
    finally:
        for channel in channels:
            channel.close()
    assert not any(name.lstrip("/") in entry for entry in os.listdir("/dev/shm") for name in names)


def _write_manifests_forever(home: str, ready: Any) -> None:
    """Child process: rewrite one model's manifest, alternately with two configs, until killed."""
    store = Store(Path(home))
    model = store.resolve("tiny")
    assert model is not None
    layers: list[Layer] = list(model.layers)
    configs = [ModelConfig(system="a" * 5000), ModelConfig(system="b" * 7000)]
    ready.set()
    i = 0
    while True:
        with store.writing():
            store.write_manifest(parse_name("tiny"), layers, configs[i % 2])
        i += 1


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31])
def test_a_writer_killed_mid_manifest_leaves_no_torn_manifest(tmp_path: Path, delay: float) -> None:
    store = Store(tmp_path / "home")
    install_fake_model(store, "tiny", TINY_CONFIG)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_write_manifests_forever, args=(str(store.home), ready))
    child.start()
    try:
        assert ready.wait(30)
        child.join(delay)
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    manifest = store.manifest_path(parse_name("tiny"))
    orjson.loads(manifest.read_bytes())  # whole JSON, one version or the other
    model = Store(store.home).resolve("tiny")
    assert model is not None and model.config.system in ("a" * 5000, "b" * 7000, TINY_CONFIG.system)
    leftovers = [p for p in manifest.parent.iterdir() if p.name != manifest.name]
    assert all(p.name.startswith(".") or p.suffix == ".tmp" for p in leftovers) or not leftovers
