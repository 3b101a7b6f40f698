"""Remembered batch routes: what ``batched_qmv.tune`` measured, kept across loads.

The tune times a decode step per batch size and route at every load (tens of seconds for
a 7B on CUDA). Its answer depends only on the model, the GPU, MLX and mlxd's kernels, so
a later load of the same model on the same machine reuses it and skips the measurement
(a model unloaded after ``keep_alive`` comes back in seconds). The file is
``$MLXD_HOME/batch-routes.json`` (``~/.mlxd`` by default, the daemon's home); deleting
it makes the next load measure again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx

from worker.batched_qmv import ROUTES

log = logging.getLogger("mlxd.worker")

FILE_NAME = "batch-routes.json"
MAX_ENTRIES = 64  # models × machines remembered; the oldest go first


def default_path() -> Path:
    home = os.environ.get("MLXD_HOME", "").strip()
    return (Path(home).expanduser() if home else Path("~/.mlxd").expanduser()) / FILE_NAME


def key(model_dir: Path, max_rows: int, kernels: str) -> str:
    """What a tune's answer depends on: the model (its resolved path, which in mlxd's store
    names its content), the device and MLX, the kernels' text, and the largest batch."""
    parts: list[Any] = [
        str(Path(model_dir).resolve()),
        sorted((str(k), str(v)) for k, v in mx.device_info().items()),
        getattr(mx, "__version__", ""),
        hashlib.sha256(kernels.encode()).hexdigest(),
        max_rows,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def recall(entry: str, path: Path | None = None) -> dict[int, str] | None:
    """The routes stored under ``entry``; None when absent or unreadable."""
    stored = _read(path or default_path()).get(entry)
    if not isinstance(stored, dict):
        return None
    try:
        routes = {int(bucket): str(route) for bucket, route in stored.items()}
    except (TypeError, ValueError):
        return None
    if not routes or any(route not in ROUTES for route in routes.values()):
        return None
    return routes


def remember(entry: str, routes: dict[int, str], path: Path | None = None) -> None:
    """Store ``routes`` under ``entry`` (best effort: a read-only home, or two workers
    storing at the same moment and one keeping the other's entry out, only costs a later
    load a measurement)."""
    target = path or default_path()
    table = _read(target)
    table.pop(entry, None)
    table[entry] = {str(bucket): route for bucket, route in sorted(routes.items())}
    while len(table) > MAX_ENTRIES:
        table.pop(next(iter(table)))  # insertion order: the oldest entry
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: two workers loading at once never leave half a file.
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".batch-routes-")
        tmp = Path(name)
        with os.fdopen(fd, "w") as out:
            json.dump(table, out)
        os.replace(tmp, target)
    except OSError as exc:
        log.warning("could not remember the batch routes in %s: %s", target, exc)
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any]:
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}
