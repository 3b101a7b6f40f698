"""``POST /api/create`` (reference §4.12): validate, then stream ``registry.create``'s progress.

``create_model`` does disk work, so it runs in worker threads; its progress objects are
streamed as NDJSON (``stream: false``: only the last one, as ``application/json``). A
``from`` that is not installed is pulled first (its progress is part of the stream).

A ``from`` that is a path on the server (it starts with ``/``, ``.`` or ``~``) is accepted
only from a client on this machine (a loopback address): a daemon listening on every
interface must not let remote callers import arbitrary server files. Remote clients upload
the files with ``POST /api/blobs`` and name them in ``files``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from daemon.errors import ApiError
from daemon.ndjson import JSONResponse, NDJSONResponse, dumps_line, error_line, error_response
from daemon.routes import services
from daemon.routes.pull import create_pull_hook, puller
from daemon.schemas import Fields, read_json
from registry.create import CreateError, CreateRequest, PullFunction, create_model
from registry.store import Store

NOT_SUPPORTED_YET = "{} is not supported yet; create from an installed model with 'from'"
LOCAL_PATH_ONLY = (
    "creating from a file path on the server is only allowed for clients on the same machine; "
    "upload the files with POST /api/blobs/sha256:<hex> and name them in 'files'"
)
_DONE = object()
_PATH_PREFIXES = ("/", ".", "~")


def parse_create(fields: Fields) -> CreateRequest:
    """The request as ``registry.create`` takes it; the name and the source are checked there."""
    if fields.mapping("adapters"):
        raise ApiError(NOT_SUPPORTED_YET.format("'adapters'"))
    if fields.string("quantize") or fields.string("quantization"):
        raise ApiError(NOT_SUPPORTED_YET.format("quantization"))
    files = fields.mapping("files") or {}
    for value in files.values():
        if not isinstance(value, str):
            raise fields.mismatch("files", value, "string")
    license_value = fields.raw("license")
    return CreateRequest(
        model=fields.model_name().strip(),
        from_=fields.string("from"),
        template=fields.string("template"),
        system=fields.string("system"),
        parameters=fields.mapping("parameters") or {},
        messages=[{"role": m.role, "content": m.content} for m in fields.messages()],
        license=[license_value] if isinstance(license_value, str) else fields.string_list("license"),
        files=files,
    )


def is_loopback(request: Request) -> bool:
    """Whether the client connects from this machine (127.0.0.0/8 or ::1)."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


async def create(request: Request) -> Response:
    fields = await read_json(request, "CreateRequest")
    req = parse_create(fields)
    stream = fields.boolean("stream", default=True)
    if req.from_.strip().startswith(_PATH_PREFIXES) and not is_loopback(request):
        raise ApiError(LOCAL_PATH_ONLY)
    store = services(request).store
    pull = create_pull_hook(puller(request))

    if not stream:
        try:
            last = await run_in_threadpool(_last, store, req, pull)
        except CreateError as exc:
            return error_response(exc.message, exc.status)
        return JSONResponse(last, media_type="application/json")

    progress = create_model(store, req, pull=pull)
    try:
        first = await run_in_threadpool(next, progress, _DONE)
    except CreateError as exc:
        await _close(progress)
        return error_response(exc.message, exc.status)
    except BaseException:
        await _close(progress)
        raise
    return NDJSONResponse(_lines(first, progress))


def _last(store: Store, req: CreateRequest, pull: PullFunction) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for item in create_model(store, req, pull=pull):
        last = item
    return last


async def _lines(first: Any, progress: Iterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    item = first
    try:
        while item is not _DONE:
            yield dumps_line(item)
            item = await run_in_threadpool(next, progress, _DONE)
    except CreateError as exc:
        yield error_line(exc.message)
    finally:
        await _close(progress)


async def _close(progress: Iterator[dict[str, Any]]) -> None:
    """Close the generator (its cleanup runs) even while the request is being cancelled."""
    close = getattr(progress, "close", None)
    if close is not None:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(close)
