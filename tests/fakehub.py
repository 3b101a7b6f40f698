"""A fake Hugging Face Hub on loopback, speaking what huggingface_hub asks for a download:

* ``GET /api/models/{org}/{repo}/revision/{rev}``: the commit of a revision (``HfApi.model_info``);
* ``GET /api/models/{org}/{repo}/tree/{rev}?recursive=true``: the files, with the sha256 and
  size of LFS files (``HfApi.list_repo_tree``);
* ``HEAD|GET /{org}/{repo}/resolve/{rev}/{path}``: a small file is answered directly
  (``ETag``, ``X-Repo-Commit``, ``Content-Length``); an LFS file redirects to a "CDN" on
  another host name (``localhost`` instead of ``127.0.0.1``) with ``X-Linked-Etag`` and
  ``X-Linked-Size``, as the real Hub does;
* ``GET /cdn/{sha256}``: the bytes, honouring ``Range: bytes=N-`` (206 + ``Content-Range``).

Errors carry the ``X-Error-Code`` headers huggingface_hub turns into its exceptions.
Faults to inject: :meth:`FakeHub.cut` (the next downloads of a file stop midway: the
connection is dropped), :meth:`FakeHub.corrupt` (a file's bytes differ from its published
sha256), :attr:`FakeHub.paused` (downloads wait until it is cleared), :attr:`FakeHub.delay`
(seconds per 64 KiB), :attr:`FakeHub.ignore_ranges` (whole files, as some CDNs answer); all
apply to LFS files only. Every request is recorded in :attr:`FakeHub.requests`.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

CHUNK = 64 * 1024


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    """As on the Hub: weights (and anything large) are LFS files."""
    return path.endswith(".safetensors") or len(data) > 10 * 1024 * 1024


@dataclass
class HubFile:
    path: str
    data: bytes
    lfs: bool
    served: bytes  # what downloads return (differs from data when corrupted)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile]
    revisions: set[str] = field(default_factory=lambda: {"main"})


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None
    host: str


class _DropConnection(Exception):
    """Raised inside a response body to cut the connection (an injected fault)."""


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.requests: list[Seen] = []
        self.delay = 0.0
        self.ignore_ranges = False  # answer 200 with the whole file, as some CDNs do
        self.paused = threading.Event()  # set: downloads wait
        self._cuts: dict[str, list[int]] = {}  # sha256 → byte offsets to stop at, one per GET
        self._by_sha: dict[str, HubFile] = {}
        self.port = 0
        self.app = Starlette(
            routes=[
                Route("/api/models/{org}/{name}/revision/{revision:path}", self._revision),
                Route("/api/models/{org}/{name}/tree/{revision:path}", self._tree),
                Route("/{org}/{name}/resolve/{revision}/{path:path}", self._resolve, methods=["GET", "HEAD"]),
                Route("/cdn/{sha}", self._cdn, methods=["GET", "HEAD"]),
            ]
        )

    # -- content ------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], revisions: tuple[str, ...] = ()) -> HubRepo:
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        repo = HubRepo(repo_id, commit, {})
        repo.revisions.update(revisions)
        for path, data in files.items():
            hub_file = HubFile(path, data, is_lfs(path, data), data)
            repo.files[path] = hub_file
            if hub_file.lfs:
                self._by_sha[hub_file.sha256] = hub_file
        self.repos[repo_id] = repo
        return repo

    def add_model_dir(self, repo_id: str, model_dir: Path, extra: dict[str, bytes] | None = None) -> HubRepo:
        files = {
            path.relative_to(model_dir).as_posix(): path.read_bytes()
            for path in sorted(model_dir.rglob("*"))
            if path.is_file()
        }
        return self.add_repo(repo_id, {**files, **(extra or {})})

    def corrupt(self, repo_id: str, path: str) -> None:
        """Serve different bytes (same size) than the sha256 the tree publishes."""
        hub_file = self.repos[repo_id].files[path]
        hub_file.served = bytes(b ^ 0xFF for b in hub_file.data[:16]) + hub_file.data[16:]

    def cut(self, repo_id: str, path: str, *offsets: int) -> None:
        """The next downloads of ``path`` (one per offset) drop the connection at that byte."""
        self._cuts.setdefault(self.repos[repo_id].files[path].sha256, []).extend(offsets)

    def downloads(self, sha256: str) -> list[Seen]:
        return [r for r in self.requests if r.method == "GET" and r.path == f"/cdn/{sha256}"]

    # -- serving ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.requests.append(
                Seen(
                    scope["method"],
                    scope["path"],
                    headers.get("range"),
                    headers.get("authorization"),
                    headers.get("host", ""),
                )
            )
        await self.app(scope, receive, send)

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run on a free loopback port (in a thread); yields the endpoint URL."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="fakehub", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the fake hub did not start")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{self.port}"
        finally:
            self.paused.clear()
            server.should_exit = True
            thread.join(10)

    # -- endpoints ----------------------------------------------------------------------

    def _repo(self, request: Request) -> HubRepo | Response:
        repo = self.repos.get(f"{request.path_params['org']}/{request.path_params['name']}")
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        revision = request.path_params["revision"]
        if revision != repo.commit and revision not in repo.revisions:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    async def _revision(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        siblings = [{"rfilename": path} for path in repo.files]
        return JSONResponse(
            {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.commit, "siblings": siblings}
        )

    async def _tree(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        entries: list[dict[str, Any]] = []
        folders = sorted({path.rsplit("/", 1)[0] for path in repo.files if "/" in path})
        entries += [{"type": "directory", "oid": git_oid(f.encode()), "size": 0, "path": f} for f in folders]
        for hub_file in repo.files.values():
            entry: dict[str, Any] = {
                "type": "file",
                "oid": git_oid(hub_file.data),
                "size": len(hub_file.data),
                "path": hub_file.path,
            }
            if hub_file.lfs:
                entry["lfs"] = {"oid": hub_file.sha256, "size": len(hub_file.data), "pointerSize": 134}
            entries.append(entry)
        return JSONResponse(entries)

    async def _resolve(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        hub_file = repo.files.get(request.path_params["path"])
        if hub_file is None:
            return _error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.commit})
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if hub_file.lfs:
            location = f"http://localhost:{self.port}/cdn/{hub_file.sha256}"
            headers |= {
                "Location": location,
                "X-Linked-Etag": f'"{hub_file.sha256}"',
                "X-Linked-Size": str(len(hub_file.data)),
                "ETag": f'"{git_oid(hub_file.data)}"',
            }
            return Response(status_code=302, headers=headers)
        headers["ETag"] = f'"{git_oid(hub_file.data)}"'
        return self._content(request, hub_file, headers)

    async def _cdn(self, request: Request) -> Response:
        hub_file = self._by_sha.get(request.path_params["sha"])
        if hub_file is None:
            return Response("not found", 404)
        return self._content(request, hub_file, {"ETag": f'"{hub_file.sha256}"', "Accept-Ranges": "bytes"})

    def _content(self, request: Request, hub_file: HubFile, headers: dict[str, str]) -> Response:
        data = hub_file.served
        start, status = 0, 200
        ranged = request.headers.get("range", "")
        if ranged.startswith("bytes=") and not self.ignore_ranges:
            start = int(ranged[6:].split("-")[0])
            if start >= len(data) and data:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(data) - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        stop = len(data)
        cuts = self._cuts.get(hub_file.sha256) if hub_file.lfs else None
        dropped = bool(cuts)
        if cuts:
            stop = max(start, cuts.pop(0))
        return StreamingResponse(
            self._body(data, start, stop, dropped, hub_file.lfs), status, headers=headers
        )

    async def _body(self, data: bytes, start: int, stop: int, drop: bool, lfs: bool) -> AsyncIterator[bytes]:
        position = start
        while position < stop:
            while lfs and self.paused.is_set():
                await asyncio.sleep(0.01)
            if self.delay:
                await asyncio.sleep(self.delay)
            chunk = data[position : min(position + CHUNK, stop)]
            position += len(chunk)
            yield chunk
        if drop:
            raise _DropConnection


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status, headers={"X-Error-Code": code, **(headers or {})})


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.01)
