"""The model verbs: ``list``/``ls``, ``ps``, ``pull``, ``rm``, ``cp``, ``stop`` and ``create``,
with the columns and messages of Ollama's CLI (reference §9). ``create`` sends a local model's
files with ``/api/blobs`` when the server runs on another machine."""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from daemon.cli.client import Client, CLIError
from daemon.cli.formatting import human_bytes, human_time, parse_time, table
from daemon.cli.progress import progress_view, show_progress
from daemon.cli.run import pull_model, unload_model

LIST_COLUMNS = ["NAME", "ID", "SIZE", "MODIFIED"]
PS_COLUMNS = ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
NO_MODELFILE = "specified Modelfile wasn't found"
NO_QUANTIZE = (
    "quantization is not supported: mlxd runs MLX weights as they are "
    "(pull an MLX repository that is already quantized, e.g. one ending in -4bit)"
)


def list_models(client: Client, prefix: str = "") -> int:
    """``list [PREFIX]``: installed models, newest first (the server's order)."""
    models = (client.get("/api/tags") or {}).get("models") or []
    rows = [
        [
            m.get("name", ""),
            str(m.get("digest", ""))[:12],
            "-" if m.get("remote_model") else human_bytes(int(m.get("size") or 0)),
            human_time(str(m.get("modified_at") or ""), "Never"),
        ]
        for m in models
        if not prefix or str(m.get("name", "")).lower().startswith(prefix.lower())
    ]
    print(table(rows, LIST_COLUMNS), end="")
    return 0


def processor(size: int, size_vram: int) -> str:
    """Where the model's weights are: ``100% GPU``, ``100% CPU``, ``48%/52% CPU/GPU``."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = math.floor((size - size_vram) / size * 100 + 0.5)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def until(stamp: str, now: datetime | None = None) -> str:
    """``Stopping...`` once the expiry has passed, else ``4 minutes from now`` or ``Forever``."""
    expires = parse_time(stamp)
    now = now or datetime.now(timezone.utc)
    if expires is not None and expires < now:
        return "Stopping..."
    return human_time(expires, "Never", now)


def list_running(client: Client, prefix: str = "") -> int:
    """``ps [PREFIX]``: the loaded models."""
    models = (client.get("/api/ps") or {}).get("models") or []
    rows = []
    for m in models:
        if prefix and not str(m.get("name", "")).startswith(prefix):
            continue
        size = int(m.get("size") or 0)
        rows.append(
            [
                m.get("name", ""),
                str(m.get("digest", ""))[:12],
                human_bytes(size),
                processor(size, int(m.get("size_vram") or 0)),
                str(int(m.get("context_length") or 0)),
                until(str(m.get("expires_at") or "")),
            ]
        )
    print(table(rows, PS_COLUMNS), end="")
    return 0


def pull(client: Client, args: argparse.Namespace) -> int:
    pull_model(client, args.model, args.insecure)
    return 0


def stop(client: Client, name: str) -> int:
    try:
        unload_model(client, name)
    except CLIError as exc:
        if "not found" in str(exc):
            raise CLIError(f'couldn\'t find model "{name}" to stop') from None
        raise
    return 0


def remove(client: Client, names: list[str]) -> int:
    """``rm MODEL...``: unload each model (a warning if that fails), then delete it."""
    import sys

    for name in names:
        try:
            unload_model(client, name)
        except CLIError as exc:
            if "not found" not in str(exc).lower():
                print(f"Warning: unable to stop model '{name}'", file=sys.stderr)
        client.delete("/api/delete", {"name": name})
        print(f"deleted '{name}'")
    return 0


def copy(client: Client, source: str, destination: str) -> int:
    client.post("/api/copy", {"source": source, "destination": destination})
    print(f"copied '{source}' to '{destination}'")
    return 0


def _modelfile(path: str | None) -> tuple[str, Path]:
    """The Modelfile's text and its folder; without ``-f`` and without ``./Modelfile`` the
    current folder itself is the model (``FROM .``), as Ollama does."""
    if path is None:
        default = Path("Modelfile")
        if not default.is_file():
            return "FROM .", Path.cwd()
        path = str(default)
    file = Path(os.path.expanduser(path))
    try:
        return file.read_text(encoding="utf-8"), file.resolve().parent
    except FileNotFoundError:
        raise CLIError(NO_MODELFILE) from None
    except OSError as exc:
        raise CLIError(f"cannot read {file}: {exc.strerror}") from None


def server_is_local(base_url: str) -> bool:
    """Whether the server runs on this machine (a loopback address), so it can read our files."""
    host = httpx.URL(base_url).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def upload_files(client: Client, source: Path) -> dict[str, str]:
    """Send a model directory's files (or one GGUF file) with ``/api/blobs``, skipping those
    the server has; the ``files`` map of ``/api/create`` (relative name → digest)."""
    from registry.store import iter_source_files

    named = iter_source_files(source) if source.is_dir() else [(source.name, source)]
    if not named:
        raise CLIError(f"no files to create a model from in {source}")
    view = progress_view()
    files: dict[str, str] = {}
    try:
        for name, path in named:
            digest = "sha256:" + _sha256(path)
            view.update({"status": f"copying file {name}"})
            if not client.has_blob(digest):
                client.upload_blob(digest, path)
            files[name] = digest
    finally:
        view.close()
    return files


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def create(client: Client, args: argparse.Namespace) -> int:
    """``create MODEL [-f Modelfile] [-q LEVEL]``: the Modelfile is parsed here, its ``FROM``
    path made absolute; the server builds the model and streams its progress."""
    from registry.create import create_request_from_modelfile

    text, folder = _modelfile(args.file)
    request = create_request_from_modelfile(args.model, text, folder)
    body: dict[str, Any] = {"model": request.model, "from": request.from_, "stream": True}
    source = Path(request.from_)
    if source.is_absolute() and source.exists() and not server_is_local(client.base_url):
        # A server elsewhere cannot read our paths: send the files, as Ollama's CLI does.
        del body["from"]
        body["files"] = upload_files(client, source)
    for key in ("template", "system", "parameters", "messages", "license"):
        value = getattr(request, key)
        if value:
            body[key] = value
    if args.quantize:
        body["quantize"] = args.quantize
    try:
        show_progress(client.stream("/api/create", body))
    except CLIError as exc:
        if args.quantize and "quantiz" in str(exc):
            raise CLIError(NO_QUANTIZE) from None
        raise
    return 0
