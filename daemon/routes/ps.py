"""``GET /api/ps``: the loaded models (reference §4.4).

The engine knows what is loaded (name, digest, size, expiry); the details come from the
store, by digest. A model deleted while loaded keeps its entry, with empty details.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from daemon.engine import LoadedModel
from daemon.ndjson import JSONResponse
from daemon.routes import services
from daemon.routes.models import details, local_time
from registry.store import InstalledModel, ModelConfig, Store

# Ollama's "forever": now + math.MaxInt64 nanoseconds, a date around the year 2318.
FOREVER = timedelta(microseconds=((1 << 63) - 1) // 1000)


async def ps(request: Request) -> Response:
    svc = services(request)
    loaded = svc.engine.loaded()
    models = await run_in_threadpool(_installed_by_digest, svc.store, loaded) if loaded else {}
    now = datetime.now()
    entries = sorted(
        (entry(model, models.get(model.digest), now) for model in loaded),
        key=lambda item: item[0],
        reverse=True,
    )
    return JSONResponse({"models": [body for _, body in entries]})


def entry(
    model: LoadedModel, installed: InstalledModel | None, now: datetime
) -> tuple[datetime, dict[str, Any]]:
    """The sort key (the expiry) and the ``api.ProcessModelResponse`` of one model."""
    finite = math.isfinite(model.expires_at)
    expires = datetime.fromtimestamp(model.expires_at) if finite else now + FOREVER
    info = details(installed.config if installed else ModelConfig(format=""), with_lengths=False)
    info["parent_model"] = ""
    return expires, {
        "name": model.name,
        "model": model.name,
        "size": model.memory_bytes,
        "digest": model.digest,
        "details": info,
        "expires_at": local_time(expires),
        # The resident size: on a Mac, unified memory the GPU works from; 0 on MLX's CPU
        # backend, so that clients show "100% CPU" as Ollama does for a CPU-only model.
        "size_vram": model.memory_bytes if model.on_gpu else 0,
        "context_length": model.context_length,
    }


def _installed_by_digest(store: Store, loaded: list[LoadedModel]) -> dict[str, InstalledModel]:
    """The installed model of each loaded digest, preferring the tag it was loaded as."""
    wanted = {model.digest: model.name for model in loaded}
    found: dict[str, InstalledModel] = {}
    for installed in store.list():
        name = wanted.get(installed.digest)
        if name is None:
            continue
        if installed.digest not in found or installed.display == name:
            found[installed.digest] = installed
    return found
