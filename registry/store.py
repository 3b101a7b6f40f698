"""The local model store under MLXD_HOME: manifests, content-addressed blobs, model dirs.

Layout::

    <home>/manifests/<host>/<namespace>/<model>/<tag>   one JSON manifest per tag
    <home>/blobs/sha256-<hex>                            file contents, by sha256
    <home>/models/<manifest digest>/<relative filename>  symlinks to the blobs: the MLX
                                                         model directory a worker loads
    <home>/tmp/                                          partial files (same filesystem)
    <home>/.lock                                         flock: writers shared, GC exclusive

A manifest is Docker-v2 shaped::

    {"schemaVersion": 2,
     "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
     "config": {"mediaType": "application/vnd.mlxd.config.v1+json",
                "digest": "sha256:<hex>", "size": N},          # ModelConfig as JSON
     "layers": [{"mediaType": "application/vnd.mlxd.file", "digest": "sha256:<hex>",
                 "size": N, "annotations": {"org.opencontainers.image.title": "config.json"}}]}

The model **digest** is the sha256 hex of the manifest bytes, so two tags with the same
content share one digest and one model directory. **size** is the sum of the layer sizes
plus the config size; ``modified_at`` is the manifest's mtime.

Blobs and manifests are written to a temporary file, fsynced and renamed; the manifest
comes last, so a tag never points at missing blobs. Model directories are a derived view,
rebuilt by :meth:`Store.resolve` when missing. Garbage collection needs the exclusive lock
and is skipped, not waited for, while a writer holds the shared one.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from registry.names import ModelName, name_from_parts, parse_name

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.mlxd.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.mlxd.file"
TITLE_ANNOTATION = "org.opencontainers.image.title"

_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")  # used with fullmatch
_CHUNK = 1 << 20


class StoreError(Exception):
    """The store is inconsistent (a broken manifest, a missing blob) or an input is unusable."""


@dataclass
class ModelConfig:
    """Everything about a model besides its weights (Modelfile settings and details)."""

    template: str = ""  # Modelfile TEMPLATE; "" = the tokenizer's own chat template
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # PARAMETER values (stop is a list)
    messages: list[dict[str, str]] = field(default_factory=list)  # MESSAGE history
    license: list[str] = field(default_factory=list)
    parent_model: str = ""
    # ModelDetails
    format: str = "mlx"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int = 0
    embedding_length: int = 0
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    model_info: dict[str, Any] = field(default_factory=dict)  # general.architecture, <arch>.context_length…

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a config blob; unknown keys (written by a newer version) are ignored."""
        if not isinstance(data, dict):
            raise StoreError("config blob is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Layer:
    """One file of a model: its content digest (``sha256:<hex>``), size and relative name."""

    digest: str
    size: int
    filename: str
    media_type: str = LAYER_MEDIA_TYPE

    def to_json(self) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
            "annotations": {TITLE_ANNOTATION: self.filename},
        }


@dataclass
class InstalledModel:
    name: ModelName
    digest: str  # sha256 hex of the manifest bytes (64 chars, no prefix)
    size: int  # bytes: sum of the layers + config
    modified_at: datetime  # manifest mtime, timezone-aware (local)
    path: Path  # an MLX model directory the worker can load (see Store.resolve)
    config: ModelConfig
    layers: list[Layer] = field(default_factory=list)

    @property
    def display(self) -> str:
        return self.name.display()


def blob_hex(digest: str) -> str:
    """The lower-case hex of ``sha256:<hex>`` or ``sha256-<hex>``; ValueError otherwise."""
    m = _DIGEST_RE.fullmatch(digest)
    if m is None:
        raise ValueError("invalid digest format")
    return m.group(1).lower()


def safe_relpath(name: str) -> PurePosixPath:
    """A manifest filename as a relative path that stays inside its directory."""
    # An empty component also rules out absolute paths ("/x") and "a//b".
    if "\x00" in name or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise StoreError(f"unsafe file name in manifest: {name!r}")
    return PurePosixPath(name)


def iter_source_files(source_dir: Path) -> list[tuple[str, Path]]:
    """``(relative posix name, path)`` of every regular file below ``source_dir``, sorted.

    Hidden files and directories (``.git``, ``.cache``, ``.DS_Store``) are skipped. File
    symlinks are followed (a Hugging Face snapshot is all symlinks); directory symlinks
    are not, so a cycle cannot trap the walk."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(source_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for path in (Path(dirpath) / f for f in filenames if not f.startswith(".")):
            if path.is_file():  # follows symlinks; skips sockets and dangling links
                out.append((path.relative_to(source_dir).as_posix(), path))
    return sorted(out)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
            os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Store:
    def __init__(self, home: Path) -> None:
        self.home = Path(home).expanduser()
        self.manifests_dir = self.home / "manifests"
        self.blobs_dir = self.home / "blobs"
        self.models_dir = self.home / "models"
        self.tmp_dir = self.home / "tmp"

    # -- locking -----------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold while adding blobs and until their manifest is written, so that garbage
        collection cannot remove blobs that are about to be referenced."""
        with self._flock(fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[bool]:
        self.home.mkdir(parents=True, exist_ok=True)
        # A fresh open file per use: flock then excludes threads of this process too.
        fd = os.open(self.home / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                yield False
                return
            yield True  # closing the descriptor releases the lock
        finally:
            os.close(fd)

    # -- paths -------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """``blobs/sha256-<hex>`` for ``sha256:<hex>`` (or ``sha256-<hex>``); ValueError if malformed."""
        return self.blobs_dir / f"sha256-{blob_hex(digest)}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def manifest_path(self, name: ModelName) -> Path:
        path = self.manifests_dir.joinpath(*name.filepath_parts())
        # Valid names cannot escape; checked anyway because this guards deletes.
        if self.manifests_dir not in path.parents:
            raise StoreError(f"manifest path escapes the store: {path}")
        return path

    # -- names -------------------------------------------------------------------------

    def canonical(self, name: ModelName) -> ModelName:
        """Replace each part by its on-disk spelling when one matches case-insensitively
        (Ollama's ``getExistingName``), walking host → namespace → model → tag. Parts
        with no match keep the given spelling."""
        parts = list(name.filepath_parts())
        base = self.manifests_dir
        for i, part in enumerate(parts):
            try:
                entries = [e.name for e in os.scandir(base)]
            except OSError:
                break
            if part not in entries:
                match = next((e for e in sorted(entries) if e.isascii() and e.lower() == part.lower()), None)
                if match is None:
                    break
                parts[i] = match
            base = base / parts[i]
        return ModelName(parts[0], parts[1], parts[2], parts[3], scheme=name.scheme)

    # -- reading -----------------------------------------------------------------------

    def resolve(self, text: str | ModelName) -> InstalledModel | None:
        """The installed model this name refers to (case-insensitive per part), or None.
        Raises InvalidName. Builds the model directory if it is missing; a broken
        installation (unreadable manifest, missing blob) logs a warning and gives None."""
        name = parse_name(text) if isinstance(text, str) else text
        name = self.canonical(name)
        if not self.manifest_path(name).is_file():
            return None
        try:
            model = self._load(name)
            with self.writing():  # keeps gc away from a half-built model directory
                self._ensure_model_dir(model)
        except FileNotFoundError:
            return None  # deleted meanwhile (a missing blob is a StoreError)
        except (OSError, ValueError, StoreError) as e:
            log.warning("model %s is broken: %s", name.display(), e)
            return None
        return model

    def list(self) -> builtins.list[InstalledModel]:
        """All installed models, newest ``modified_at`` first. Broken manifests are skipped
        with a warning. Model directories are not built here (see :meth:`resolve`)."""
        models: builtins.list[InstalledModel] = []
        for name in self._manifest_names():
            try:
                models.append(self._load(name))
            except FileNotFoundError:
                continue  # deleted meanwhile
            except (OSError, ValueError, StoreError) as e:
                log.warning("skipping broken manifest %s: %s", name.full(), e)
        models.sort(key=lambda m: m.modified_at, reverse=True)
        return models

    def _manifest_names(self, strict: bool = False) -> Iterator[ModelName]:
        # scandir, not glob: directories may vanish under a concurrent delete.
        for host in _scandir(self.manifests_dir, strict):
            for ns in _scandir(Path(host.path), strict):
                for model in _scandir(Path(ns.path), strict):
                    for tag in _scandir(Path(model.path), strict):
                        if tag.name.startswith(".") or not tag.is_file():
                            continue  # a manifest being written
                        name = name_from_parts(host.name, ns.name, model.name, tag.name)
                        if name is None:
                            log.warning("ignoring manifest with an invalid name: %s", tag.path)
                            continue
                        yield name

    def _load(self, name: ModelName) -> InstalledModel:
        path = self.manifest_path(name)
        with open(path, "rb") as f:
            raw = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
        return self._model_from_manifest(name, raw, mtime)

    def _model_from_manifest(self, name: ModelName, raw: bytes, mtime: float) -> InstalledModel:
        config, layers, config_size = self._parse_manifest(raw)
        digest = hashlib.sha256(raw).hexdigest()
        return InstalledModel(
            name=name,
            digest=digest,
            size=config_size + sum(layer.size for layer in layers),
            modified_at=datetime.fromtimestamp(mtime).astimezone(),
            path=self.models_dir / digest,
            config=config,
            layers=layers,
        )

    def _parse_manifest(self, raw: bytes) -> tuple[ModelConfig, builtins.list[Layer], int]:
        try:
            doc = json.loads(raw)
            cfg = doc["config"]
            try:
                config_blob = self.blob_path(cfg["digest"]).read_bytes()
            except FileNotFoundError:
                raise StoreError(f"missing config blob {cfg['digest']}") from None
            config = ModelConfig.from_json(json.loads(config_blob))
            layers: builtins.list[Layer] = []
            seen: set[str] = set()
            for item in doc["layers"]:
                filename = item["annotations"][TITLE_ANNOTATION]
                safe_relpath(filename)
                if filename in seen:
                    raise StoreError(f"duplicate file in manifest: {filename!r}")
                seen.add(filename)
                blob_hex(item["digest"])
                layers.append(
                    Layer(
                        digest=item["digest"],
                        size=int(item["size"]),
                        filename=filename,
                        media_type=item.get("mediaType", LAYER_MEDIA_TYPE),
                    )
                )
            return config, layers, int(cfg["size"])
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise StoreError(f"malformed manifest: {e!r}") from e

    def _ensure_model_dir(self, model: InstalledModel) -> None:
        if model.path.is_dir():
            return
        self.models_dir.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{model.digest[:12]}-", dir=self.models_dir))
        try:
            for layer in model.layers:
                blob = self.blob_path(layer.digest)
                if not blob.is_file():
                    raise StoreError(f"missing blob {layer.digest} for {layer.filename}")
                link = build / safe_relpath(layer.filename)
                link.parent.mkdir(parents=True, exist_ok=True)
                # Relative links keep the store relocatable.
                link.symlink_to(os.path.relpath(blob, link.parent))
            try:
                build.rename(model.path)
            except OSError:
                if not model.path.is_dir():  # another thread may have won the race
                    raise
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)

    # -- writing -----------------------------------------------------------------------

    def add_blob(self, source: Path, *, move: bool = False) -> tuple[str, int, bool]:
        """Store a file's contents as a blob: ``(sha256:<hex>, size, already_present)``.

        The file is copied (or, with ``move``, renamed: only for files already inside
        ``tmp/``) to a temporary file, fsynced and renamed into place. Call under
        :meth:`writing`."""
        hex_, size = _sha256_file(source)
        digest = f"sha256:{hex_}"
        target = self.blob_path(digest)
        if target.is_file():
            if move:
                source.unlink()
            return digest, size, True
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        if move:
            with open(source, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(source, 0o644)
            os.replace(source, target)
        else:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix="blob-", dir=self.tmp_dir)
            tmp = Path(tmp_name)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if h.hexdigest() != hex_:
                    raise StoreError(f"{source} changed while it was being copied")
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        _fsync_dir(self.blobs_dir)
        return digest, size, False

    def _add_bytes(self, data: bytes) -> tuple[str, int]:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix="blob-", dir=self.tmp_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        digest, size, _ = self.add_blob(Path(tmp_name), move=True)  # fsyncs before the rename
        return digest, size

    def write_manifest(self, name: ModelName, layers: Iterable[Layer], config: ModelConfig) -> InstalledModel:
        """Write the config blob, then the manifest (atomically); replaces an existing tag.
        Every layer's blob must already be in the store. Call under :meth:`writing`."""
        ordered = sorted(layers, key=lambda layer: layer.filename)
        seen: set[str] = set()
        for layer in ordered:
            safe_relpath(layer.filename)
            if layer.filename in seen:
                raise StoreError(f"duplicate file name {layer.filename!r}")
            seen.add(layer.filename)
            if not self.has_blob(layer.digest):
                raise StoreError(f"missing blob {layer.digest} for {layer.filename}")
        config_bytes = json.dumps(config.to_json(), sort_keys=True, separators=(",", ":")).encode()
        config_digest, config_size = self._add_bytes(config_bytes)
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
            "layers": [layer.to_json() for layer in ordered],
        }
        name = self.canonical(name)
        raw = json.dumps(doc, separators=(",", ":")).encode()
        mtime = self._write_manifest_bytes(name, raw)
        # Built from what was written: a concurrent delete must not fail this create.
        model = self._model_from_manifest(name, raw, mtime)
        self._ensure_model_dir(model)
        return model

    def _write_manifest_bytes(self, name: ModelName, raw: bytes) -> float:
        """Write atomically; returns the new file's mtime."""
        path = self.manifest_path(name)
        for attempt in range(3):  # a concurrent delete may prune the empty directory meanwhile
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, tmp_name = tempfile.mkstemp(prefix=".manifest-", dir=path.parent)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
                mtime = os.fstat(f.fileno()).st_mtime
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return mtime

    def create(
        self,
        name: ModelName,
        source_dir: Path,
        config: ModelConfig,
        progress: Callable[[str, bool], None] | None = None,
    ) -> InstalledModel:
        """Register an MLX model directory under ``name``: files are copied into the blob store
        (never moved), the manifest is written last and atomically. Replaces an existing tag.

        ``progress(digest, already_present)`` is called once per file."""
        files = iter_source_files(Path(source_dir))
        if not files:
            raise StoreError(f"no files to add in {source_dir}")
        with self.writing():
            layers: builtins.list[Layer] = []
            for rel, path in files:
                digest, size, existed = self.add_blob(path)
                if progress is not None:
                    progress(digest, existed)
                layers.append(Layer(digest=digest, size=size, filename=rel))
            model = self.write_manifest(name, layers, config)
        self.gc()
        return model

    def copy(self, src: str | ModelName, dst: str | ModelName) -> InstalledModel | None:
        """Give ``src`` a second name (same manifest bytes, so the same digest). None if
        ``src`` is not installed. Raises InvalidName (parse the names first to know which
        one is invalid)."""
        src_name = self.canonical(parse_name(src) if isinstance(src, str) else src)
        dst_name = self.canonical(parse_name(dst) if isinstance(dst, str) else dst)
        try:
            raw = self.manifest_path(src_name).read_bytes()
        except FileNotFoundError:
            return None
        with self.writing():
            self._write_manifest_bytes(dst_name, raw)
        return self.resolve(dst_name)

    def delete(self, name: str | ModelName) -> bool:
        """Remove a tag (matched case-insensitively); False if it was not installed. Blobs no
        other manifest uses are garbage-collected. Raises InvalidName."""
        model_name = self.canonical(parse_name(name) if isinstance(name, str) else name)
        path = self.manifest_path(model_name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Drop now-empty model/namespace/host directories (never manifests/ itself).
        parent = path.parent
        while parent != self.manifests_dir and self.manifests_dir in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        self.gc()
        return True

    def gc(self) -> int:
        """Remove blobs and model directories no manifest references, and leftovers in
        ``tmp/``. Skipped (returns 0) while a writer is active. Returns the number removed."""
        with self._flock(fcntl.LOCK_EX | fcntl.LOCK_NB) as acquired:
            if not acquired:
                return 0
            blobs: set[str] = set()
            models: set[str] = set()
            removed = 0
            for entry in _scandir(self.tmp_dir):
                _remove(Path(entry.path))
            # Anything unreadable could reference any blob: then nothing else is removed.
            try:
                for name in self._manifest_names(strict=True):
                    raw = self.manifest_path(name).read_bytes()
                    doc = json.loads(raw)
                    blobs.add(blob_hex(doc["config"]["digest"]))
                    blobs.update(blob_hex(item["digest"]) for item in doc["layers"])
                    models.add(hashlib.sha256(raw).hexdigest())
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("gc skipped, the manifests could not all be read: %r", e)
                return removed
            for entry in _scandir(self.blobs_dir):
                m = _DIGEST_RE.fullmatch(entry.name)
                if m is not None and m.group(1).lower() not in blobs:
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
            for entry in _scandir(self.models_dir):
                if entry.name not in models:
                    _remove(Path(entry.path))
                    removed += 1
            return removed

    @contextlib.contextmanager
    def temp_dir(self) -> Iterator[Path]:
        """A scratch directory inside the store (same filesystem as the blobs, so its files
        can be moved in with ``add_blob(move=True)``). Removed on exit."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix="work-", dir=self.tmp_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def _scandir(path: Path, strict: bool = False) -> list[os.DirEntry[str]]:
    """Sorted entries of a directory; none if it is missing or not a directory (or, unless
    ``strict``, unreadable)."""
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:  # e.g. permissions: report, but keep listing the rest
        if strict:
            raise
        log.warning("cannot read %s: %s", path, e)
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
