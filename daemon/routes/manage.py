"""``POST /api/copy``, ``DELETE /api/delete`` and ``HEAD|POST /api/blobs/:digest``
(reference §4.13–§4.15).

Copy and delete answer an empty 200 on success (ollama-python maps exactly 200 to
``success``). Delete unloads the model first, unless another name still uses the same
files (a copy), and keeps the blobs other manifests share. Blobs are uploads for
``/api/create``'s ``files``; they are verified against their digest before they are kept.
"""

from __future__ import annotations

import logging
import re

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from daemon.durations import go_quote
from daemon.errors import ApiError
from daemon.routes import model_handle, services
from daemon.schemas import read_json
from registry.names import InvalidName, ModelName, parse_name
from registry.store import Store
from registry.uploads import DigestMismatch, Uploads

log = logging.getLogger("mlxd.http")

DIGEST_RE = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
INVALID_DIGEST = "invalid digest format"
_WRITE_BATCH = 4 << 20  # bytes of an upload gathered before one write on a worker thread


async def copy(request: Request) -> Response:
    fields = await read_json(request, "CopyRequest")
    source, destination = fields.string("source"), fields.string("destination")
    try:
        src = parse_name(source)
    except InvalidName:
        raise ApiError(f"source {go_quote(source)} is invalid") from None
    try:
        dst = parse_name(destination)
    except InvalidName:
        raise ApiError(f"destination {go_quote(destination)} is invalid") from None
    copied = await run_in_threadpool(services(request).store.copy, src, dst)
    if copied is None:
        raise ApiError(f"model {go_quote(source)} not found", 404)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    fields = await read_json(request, "DeleteRequest")
    raw = fields.model_name()
    if not raw.strip():
        raise ApiError("model is required")
    try:
        name = parse_name(raw.strip())
    except InvalidName:
        raise ApiError(f"name {go_quote(raw)} is invalid") from None
    svc = services(request)
    model = await run_in_threadpool(svc.store.resolve, name)
    if model is None:
        raise ApiError(f"model '{raw}' not found", 404)
    if not await run_in_threadpool(_shared, svc.store, model.name, model.digest):
        await svc.engine.unload(model_handle(model))
    if not await run_in_threadpool(svc.store.delete, model.name):
        raise ApiError(f"model '{raw}' not found", 404)
    return Response(status_code=200)


def _shared(store: Store, name: ModelName, digest: str) -> bool:
    """Whether a name other than ``name`` refers to the same model (digest)."""
    return any(m.digest == digest and not m.name.equal_fold(name) for m in store.list())


def _digest(request: Request) -> str:
    digest: str = request.path_params["digest"]
    if not DIGEST_RE.fullmatch(digest):
        raise ApiError(INVALID_DIGEST)
    return digest


async def head_blob(request: Request) -> Response:
    digest = _digest(request)
    found = await run_in_threadpool(Uploads(services(request).store).exists, digest)
    return Response(status_code=200 if found else 404)


async def post_blob(request: Request) -> Response:
    """Store the body as the blob ``digest``: 200 if it is already here, 201 once received
    and verified, 400 when its sha256 is another."""
    digest = _digest(request)
    uploads = Uploads(services(request).store)
    if await run_in_threadpool(uploads.exists, digest):
        return Response(status_code=200)
    writer = await run_in_threadpool(uploads.receive, digest)
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= _WRITE_BATCH:
                await anyio.to_thread.run_sync(writer.write, b"".join(pending))
                pending, size = [], 0
        await anyio.to_thread.run_sync(writer.write, b"".join(pending))
        await anyio.to_thread.run_sync(writer.commit)
    except DigestMismatch as exc:
        raise ApiError(str(exc)) from None
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.discard)
    log.info("received blob %s (%d bytes)", digest, writer.size)
    return Response(status_code=201)
