"""The requests a pull makes, and how hub failures read, with the Hub mocked by respx.

huggingface_hub 2.x sends its requests with ``httpx2``, which respx does not patch (and
``httpx2.alias_httpx()`` must run before anything imports httpx, too late in a test run).
So the hub's client gets an ``httpx2.MockTransport`` that hands every request to a respx
router, translated to ``httpx`` and back: routes, call records and side effects work as usual.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import huggingface_hub
import pytest
import respx
from huggingface_hub.utils._http import default_client_factory

from registry.catalog import MANIFEST_NOT_FOUND
from registry.hub import Hub
from registry.pull import Puller, PullError
from registry.store import Store
from tests.fakehub import git_oid
from tests.test_pull import sha
from tests.test_store import make_model_dir

ENDPOINT = "https://hub.test"
COMMIT = "c0ffee" * 6 + "c0ff"
REPO = "org/model"


def _bridge(router: respx.Router) -> httpx2.MockTransport:
    def handle(request: httpx2.Request) -> httpx2.Response:
        mirrored = httpx.Request(
            request.method, str(request.url), headers=request.headers.multi_items(), content=request.read()
        )
        try:
            response = router.handler(mirrored)
        except httpx.TransportError as exc:
            raise getattr(httpx2, type(exc).__name__)(str(exc), request=request) from None
        return httpx2.Response(
            response.status_code,
            headers=response.headers.multi_items(),
            content=response.content,
            request=request,
        )

    return httpx2.MockTransport(handle)


@pytest.fixture
def router() -> Iterator[respx.Router]:
    router = respx.Router(assert_all_called=False)
    huggingface_hub.set_client_factory(
        lambda: httpx2.Client(transport=_bridge(router), follow_redirects=True)
    )
    try:
        yield router
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    source = make_model_dir(tmp_path / "src")
    return {path.name: path.read_bytes() for path in source.iterdir()}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


def mock_repo(router: respx.Router, files: dict[str, bytes]) -> dict[str, respx.Route]:
    """The four kinds of request of a pull; LFS files redirect to a CDN host, as on the Hub."""
    routes = {
        "revision": router.get(f"{ENDPOINT}/api/models/{REPO}/revision/main").respond(
            json={"id": REPO, "sha": COMMIT}
        )
    }
    tree = []
    for path, data in files.items():
        entry = {"type": "file", "oid": git_oid(data), "size": len(data), "path": path}
        resolve = f"{ENDPOINT}/{REPO}/resolve/{COMMIT}/{path}"
        if path.endswith(".safetensors"):
            entry["lfs"] = {"oid": sha(data), "size": len(data), "pointerSize": 134}
            cdn = f"https://cdn.test/{sha(data)}"
            routes[f"head {path}"] = router.head(resolve).respond(
                302,
                headers={
                    "Location": cdn,
                    "X-Repo-Commit": COMMIT,
                    "X-Linked-Etag": f'"{sha(data)}"',
                    "X-Linked-Size": str(len(data)),
                },
            )
            routes[f"get {path}"] = router.get(cdn).respond(content=data)
        else:
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{git_oid(data)}"',
                "Content-Length": str(len(data)),
            }
            routes[f"head {path}"] = router.head(resolve).respond(headers=headers)
            routes[f"get {path}"] = router.get(resolve).respond(content=data)
        tree.append(entry)
    routes["tree"] = router.get(f"{ENDPOINT}/api/models/{REPO}/tree/{COMMIT}").respond(json=tree)
    return routes


def pull(store: Store, name: str = REPO, token: str | None = None) -> list[dict[str, object]]:
    return list(Puller(store, Hub(endpoint=ENDPOINT, token=token)).pull(name))


def test_the_requests_of_a_pull(router: respx.Router, files: dict[str, bytes], store: Store) -> None:
    routes = mock_repo(router, files)
    events = pull(store, token="hf_token")
    assert events[-1] == {"status": "success"}
    tree = routes["tree"].calls.last.request
    assert dict(tree.url.params) == {"recursive": "true", "expand": "false"}
    for call in router.calls:
        hub_host = call.request.url.host == "hub.test"
        assert call.request.headers.get("authorization") == ("Bearer hf_token" if hub_host else None)
    weights = routes["get model.safetensors"].calls
    assert len(weights) == 1 and "range" not in weights.last.request.headers
    model = store.resolve(REPO)
    assert model is not None and {layer.filename for layer in model.layers} == set(files)
    assert json.loads((model.path / "config.json").read_text())["model_type"] == "qwen2"


def test_a_partial_file_is_continued(router: respx.Router, files: dict[str, bytes], store: Store) -> None:
    routes = mock_repo(router, files)
    data = files["model.safetensors"]
    partial = store.home / "partial" / f"sha256-{sha(data)}"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:50])
    routes["get model.safetensors"].respond(
        206, content=data[50:], headers={"Content-Range": f"bytes 50-{len(data) - 1}/{len(data)}"}
    )
    assert pull(store)[-1] == {"status": "success"}
    assert routes["get model.safetensors"].calls.last.request.headers["range"] == "bytes=50-"
    model = store.resolve(REPO)
    assert model is not None and (model.path / "model.safetensors").read_bytes() == data


def test_a_corrupt_download_is_refused(router: respx.Router, files: dict[str, bytes], store: Store) -> None:
    routes = mock_repo(router, files)
    data = files["model.safetensors"]
    routes["get model.safetensors"].respond(content=b"\0" * len(data))
    with pytest.raises(PullError) as exc:
        pull(store)
    assert exc.value.message.startswith(
        f"digest mismatch, file must be downloaded again: want sha256:{sha(data)}"
    )
    assert store.list() == [] and not store.has_blob(f"sha256:{sha(data)}")


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            httpx.Response(401, headers={"X-Error-Code": "RepoNotFound"}),
            f"{MANIFEST_NOT_FOUND}: Hugging Face",
        ),
        (httpx.Response(404, headers={"X-Error-Code": "RevisionNotFound"}), 'has no revision "main"'),
        (httpx.Response(403, headers={"X-Error-Code": "GatedRepo"}), "is gated: accept its terms"),
        (httpx.Response(500, json={"error": "the hub is down"}), "pull model manifest: 500: the hub is down"),
    ],
)
def test_hub_failures(router: respx.Router, store: Store, response: httpx.Response, message: str) -> None:
    router.get(f"{ENDPOINT}/api/models/{REPO}/revision/main").mock(return_value=response)
    with pytest.raises(PullError) as exc:
        pull(store)
    assert message in exc.value.message
    assert exc.value.status == 500  # reported in the stream: Ollama's status for stream:false


def test_unreachable_hub_and_download_failures(
    router: respx.Router, files: dict[str, bytes], store: Store
) -> None:
    route = router.get(f"{ENDPOINT}/api/models/{REPO}/revision/main").mock(
        side_effect=httpx.ConnectError("connection refused")
    )
    with pytest.raises(PullError) as exc:
        pull(store)
    assert exc.value.message == f"pull model manifest: cannot reach {ENDPOINT}: connection refused"
    route.mock(side_effect=None)
    routes = mock_repo(router, files)
    routes["get model.safetensors"].respond(404, headers={"X-Error-Code": "EntryNotFound"})
    with pytest.raises(PullError) as exc:
        pull(store)
    assert exc.value.message.startswith("downloading model.safetensors: ")
    assert store.list() == []
