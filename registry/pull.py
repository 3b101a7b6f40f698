"""``POST /api/pull``'s engine: fetch a model from Hugging Face into the store, reporting
Ollama's progress objects (reference §4.10)::

    {"status": "pulling manifest"}
    {"status": "pulling 6a0746a1ec1a", "digest": "sha256:6a07…", "total": N, "completed": M}   per file
    {"status": "verifying sha256 digest"}
    {"status": "writing manifest"}
    {"status": "success"}

How it goes: the name is resolved to a repository (``registry.catalog``), the revision to a
commit and its file list (``registry.hub``). Files without a published sha256 (the small,
non-LFS ones: config, tokenizer) are fetched first, while "pulling manifest" shows, to learn
their digests; then every LFS file is downloaded into ``<home>/partial/sha256-<hex>``, which
survives an interruption and is continued by the next pull. Every file's sha256 is checked
before it enters the blob store, and the manifest is written last, so an unfinished pull
never shows up in ``/api/tags``.

Sharing: each pull runs on its own thread. A second pull of the same name joins the running
one and receives the same progress (:class:`Subscription`); pulls of different names that
need the same file take turns on it (one downloads, the others show its progress and then
find it done). A pull whose every subscriber has gone is cancelled; its partial files stay.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.catalog import Catalog, HubSource, SourceError, resolve_source
from registry.create import config_from_dir
from registry.hub import Hub, HubError, RemoteFile, Snapshot
from registry.names import InvalidName, ModelName, parse_name
from registry.store import Layer, Store, StoreError, safe_relpath

log = logging.getLogger(__name__)

INVALID_MODEL_NAME = "invalid model name"
DIGEST_MISMATCH = "digest mismatch, file must be downloaded again"
PROGRESS_INTERVAL = 0.1  # seconds between two progress objects of one file
PARTIAL_MAX_AGE = 7 * 24 * 3600.0  # seconds an untouched partial download is kept for a resume

# Weights in formats MLX does not load, and pictures for the model card: not pulled.
_SKIPPED_SUFFIXES = (
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".gguf",
    ".ot",
    ".tflite",
    ".npz",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
)
_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt")
_CARD_LICENSE_RE = re.compile(r"^license:\s*['\"]?([^\s'\"]+)", re.MULTILINE)
_HASH_CHUNK = 8 << 20


class PullError(Exception):
    """A pull that failed; ``status`` is the HTTP status for an answer not yet started."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class PullCancelled(Exception):
    """Raised inside a pull whose subscribers have all gone."""


def select_files(files: list[RemoteFile]) -> list[RemoteFile]:
    """The files of a repository that make up an MLX model directory.

    Hidden files, weights in other formats and images are left out. Raises
    :class:`PullError` when what is left is not a model MLX can load."""
    chosen: list[RemoteFile] = []
    for file in files:
        parts = file.path.split("/")
        if any(part.startswith(".") for part in parts) or file.path.lower().endswith(_SKIPPED_SUFFIXES):
            continue
        try:
            safe_relpath(file.path)
        except StoreError:
            raise PullError(
                f"pull model manifest: unsafe file name {file.path!r} in the repository"
            ) from None
        chosen.append(file)
    names = {file.path for file in chosen}
    if "config.json" not in names:
        raise PullError("pull model manifest: not an MLX model: the repository has no config.json")
    if not any(name.endswith(".safetensors") for name in names):
        raise PullError("pull model manifest: not an MLX model: the repository has no .safetensors weights")
    return sorted(chosen, key=lambda file: file.path)


def sha256_file(path: Path, check: Any = None) -> str:
    """The sha256 hex of a file; ``check()`` runs between chunks (it may raise to stop)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            if check is not None:
                check()
    return h.hexdigest()


class Subscription:
    """One listener's view of a pull: the progress so far (a compact replay: the latest
    object per status), then every new object, then the end.

    :meth:`get` returns the next object, ``None`` when none came within ``timeout``, and
    raises :class:`PullError` when the pull failed; :attr:`ended` is true once the last
    object was returned. Iterating blocks until the end. :meth:`close` when done listening."""

    def __init__(self, job: _Job, backlog: list[dict[str, Any]]) -> None:
        self._job = job
        self._queue: collections.deque[tuple[dict[str, Any] | PullError, bool]] = collections.deque(
            (event, False) for event in backlog
        )
        self.ended = False
        self._closed = False

    def _put(self, item: dict[str, Any] | PullError, last: bool) -> None:
        self._queue.append((item, last))

    def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        cond = self._job.cond
        with cond:
            if not self._queue and not self.ended:
                cond.wait_for(lambda: bool(self._queue), timeout)
            if not self._queue:
                return None
            item, last = self._queue.popleft()
            if last:
                self.ended = True
        if isinstance(item, PullError):
            raise item
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            while not self.ended:
                event = self.get()
                if event is not None:
                    yield event
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._job.unsubscribe(self)


@dataclass
class _Item:
    file: RemoteFile
    hex: str
    local: Path | None = None  # already downloaded (a small file hashed while "pulling manifest")
    downloaded: str | None = None  # the sha256 of the bytes this pull wrote, hashed as they came

    @property
    def digest(self) -> str:
        return f"sha256:{self.hex}"


class Puller:
    """Pulls into ``store``; one per daemon. ``hub`` defaults to huggingface_hub's endpoint
    and token (``HF_ENDPOINT``, ``HF_TOKEN``); ``catalog`` to ``registry/catalog.json``."""

    def __init__(
        self,
        store: Store,
        hub: Hub | None = None,
        catalog: Catalog | None = None,
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.store = store
        self.hub = hub or Hub()
        self.catalog = catalog
        self.interval = interval
        self.partial_dir = store.home / "partial"
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str, str, str], _Job] = {}
        self._file_locks: dict[str, threading.Lock] = {}

    def pull(self, name: str | ModelName) -> Subscription:
        """Start pulling ``name``, or join the pull of it already running. An invalid name
        raises :class:`PullError` (400) at once; everything else comes through the
        subscription, which starts with ``pulling manifest``."""
        try:
            model_name = parse_name(name) if isinstance(name, str) else name
        except InvalidName:
            raise PullError(INVALID_MODEL_NAME, 400) from None
        model_name = self.store.canonical(model_name)
        with self._lock:
            job = self._jobs.get(model_name.key())
            if job is None or job.cancelled:
                job = _Job(self, model_name)
                self._jobs[model_name.key()] = job
                job.thread.start()
            return job.subscribe()

    def active(self) -> list[str]:
        """Display names of the pulls running now."""
        with self._lock:
            return [job.name.display() for job in self._jobs.values()]

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every pull and wait (up to ``timeout`` seconds in all) for them to stop."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        deadline = time.monotonic() + timeout
        for job in jobs:
            job.thread.join(max(0.0, deadline - time.monotonic()))

    def prune_partials(self, max_age: float = PARTIAL_MAX_AGE) -> int:
        """Remove partial downloads nobody touched for ``max_age`` seconds (none is in use:
        a download in progress writes to its file). Returns how many were removed."""
        removed = 0
        cutoff = time.time() - max_age
        for path in self.partial_dir.glob("sha256-*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def _file_lock(self, hex_: str) -> threading.Lock:
        with self._lock:
            return self._file_locks.setdefault(hex_, threading.Lock())

    def _forget(self, job: _Job) -> None:
        with self._lock:
            if self._jobs.get(job.name.key()) is job:
                del self._jobs[job.name.key()]


class _Job:
    """One pull of one name, on its own thread, broadcasting to its subscribers."""

    def __init__(self, puller: Puller, name: ModelName) -> None:
        self.puller = puller
        self.store = puller.store
        self.name = name
        self.cond = threading.Condition()
        self.history: dict[str, dict[str, Any]] = {}
        self.subscribers: list[Subscription] = []
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, name=f"pull {name.display()}", daemon=True)

    # -- subscribers --------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        with self.cond:
            subscription = Subscription(self, list(self.history.values()))
            self.subscribers.append(subscription)
            return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self.cond:
            if subscription in self.subscribers:
                self.subscribers.remove(subscription)
            abandoned = not self.subscribers
        if abandoned:
            self.cancel()

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
        self.puller._forget(self)  # a new pull of this name starts afresh

    def check(self) -> None:
        if self.cancelled:
            raise PullCancelled

    def emit(self, event: dict[str, Any]) -> None:
        with self.cond:
            self.history[event["status"]] = event
            for subscription in self.subscribers:
                subscription._put(event, False)
            self.cond.notify_all()

    def _finish(self, last: dict[str, Any] | PullError) -> None:
        self.puller._forget(self)
        with self.cond:
            for subscription in self.subscribers:
                subscription._put(last, True)
            self.cond.notify_all()

    # -- the pull -----------------------------------------------------------------------

    def _run(self) -> None:
        last: dict[str, Any] | PullError
        try:
            self._pull()
            last = {"status": "success"}
        except PullCancelled:
            log.info("pull of %s cancelled", self.name.display())
            last = PullError("pull cancelled")
        except PullError as e:
            last = e
        except (SourceError, HubError) as e:
            last = PullError(str(e))
        except (OSError, StoreError) as e:
            log.warning("pull of %s failed: %s", self.name.display(), e)
            last = PullError(f"pull failed: {e}")
        except Exception as e:
            log.exception("pull of %s failed", self.name.display())
            last = PullError(f"internal server error: {e}")
        if isinstance(last, PullError):
            log.info("pull of %s: %s", self.name.display(), last.message)
        self._finish(last)

    def _pull(self) -> None:
        puller, store = self.puller, self.store
        self.emit({"status": "pulling manifest"})
        puller.prune_partials()
        source = resolve_source(self.name, puller.catalog)
        snapshot = puller.hub.snapshot(source)
        self.check()
        files = select_files(snapshot.files)
        log.info("pulling %s from %s (commit %s)", self.name.display(), source, snapshot.commit[:12])
        with store.writing(), store.temp_dir() as work:
            items = self._plan(snapshot, files, work)
            for item in items:
                self._fetch(snapshot, item)
            self.emit({"status": "verifying sha256 digest"})
            layers = [self._store_blob(item) for item in items]
            config = self._config(source, layers, work)
            self.check()
            self.emit({"status": "writing manifest"})
            store.write_manifest(self.name, layers, config)
        store.gc()  # the files of the version this pull replaced

    def _plan(self, snapshot: Snapshot, files: list[RemoteFile], work: Path) -> list[_Item]:
        """Fetch the files the hub publishes no sha256 for (small ones) to learn their digests."""
        items: list[_Item] = []
        for index, file in enumerate(files):
            self.check()
            if file.sha256 is not None:
                items.append(_Item(file, file.sha256))
                continue
            dest = work / "small" / str(index)
            hex_ = self.puller.hub.download(snapshot, file, dest, lambda _: self.check())
            items.append(_Item(file, hex_ or sha256_file(dest), dest))
        return items

    def _tick(self, item: _Item, completed: int) -> None:
        event: dict[str, Any] = {
            "status": f"pulling {item.hex[:12]}",
            "digest": item.digest,
            "total": item.file.size,
        }
        if completed:
            event["completed"] = completed
        self.emit(event)

    def _fetch(self, snapshot: Snapshot, item: _Item) -> None:
        """Make the file's bytes available: in the store already, fetched while planning, or
        downloaded now into its partial file (by this pull, or by another that holds it)."""
        total = item.file.size
        if item.local is not None or self.store.has_blob(item.digest):
            self._tick(item, total)
            return
        partial = self.puller.partial_dir / f"sha256-{item.hex}"
        lock = self.puller._file_lock(item.hex)
        shown = _size(partial)
        self._tick(item, shown)
        while True:
            self.check()
            if not lock.acquire(timeout=self.puller.interval):
                size = _size(partial)  # another pull is downloading it: show its progress
                if size != shown:
                    shown = size
                    self._tick(item, size)
                continue
            try:
                if self.store.has_blob(item.digest) or _size(partial) == total:
                    self._tick(item, total)
                    return
                last = time.monotonic()

                def report(size: int) -> None:
                    nonlocal last, shown
                    self.check()
                    now = time.monotonic()
                    if size != shown and (now - last >= self.puller.interval or size == total):
                        last, shown = now, size
                        self._tick(item, size)

                item.downloaded = self.puller.hub.download(snapshot, item.file, partial, report)
                if shown != total:
                    self._tick(item, total)
                return
            finally:
                lock.release()

    def _store_blob(self, item: _Item) -> Layer:
        """Check the file's sha256 (hashed while it was downloaded, or now) and move it into
        the blob store (which hashes it once more as it takes it)."""
        store = self.store
        if item.local is not None:
            digest, size, _ = store.add_blob(item.local, move=True)
            return Layer(digest=digest, size=size, filename=item.file.path)
        with self.puller._file_lock(item.hex):
            if not store.has_blob(item.digest):
                partial = self.puller.partial_dir / f"sha256-{item.hex}"
                if not partial.is_file():
                    raise PullError(f"{item.file.path}: the downloaded file is gone; pull again")
                actual = item.downloaded or sha256_file(partial, self.check)
                if actual != item.hex:
                    partial.unlink(missing_ok=True)
                    raise PullError(
                        f"{DIGEST_MISMATCH}: want {item.digest}, got sha256:{actual} ({item.file.path})"
                    )
                store.add_blob(partial, move=True)
            size = store.blob_path(item.digest).stat().st_size
        return Layer(digest=item.digest, size=size, filename=item.file.path)

    def _config(self, source: HubSource, layers: list[Layer], work: Path) -> Any:
        """The model's config (details, capabilities, model_info, license) from its files,
        read through a directory of links to the blobs."""
        view = work / "model"
        for layer in layers:
            link = view / safe_relpath(layer.filename)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.store.blob_path(layer.digest))
        return config_from_dir(view, license=_license(view), extra_capabilities=source.capabilities)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _license(model_dir: Path) -> list[str]:
    """The license text of a LICENSE file, else the ``license:`` of the model card's header."""
    for name in _LICENSE_FILES:
        path = model_dir / name
        if path.is_file() and path.stat().st_size <= 1 << 20:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return [text]
    try:
        card = (model_dir / "README.md").read_text(encoding="utf-8", errors="replace")[:8192]
    except OSError:
        return []
    if not card.startswith("---"):
        return []
    end = card.find("\n---", 3)
    match = _CARD_LICENSE_RE.search(card[3 : end if end > 0 else len(card)])
    return [match.group(1)] if match else []
