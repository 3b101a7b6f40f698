"""Files uploaded with ``POST /api/blobs/sha256:<hex>`` (reference §4.13), waiting for an
``/api/create`` whose ``files`` name them.

They live in ``<home>/uploads/sha256-<hex>``, outside the blob store, because the store's
garbage collection removes every blob no manifest references: an upload would not survive
until its create. A create moves the files it uses into the blob store
(:meth:`Uploads.claim`). Uploads no create claimed are removed after a day.

An upload is written to a temporary file while its sha256 is computed, and renamed into
place only when the digest matches the one in the URL.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from types import TracebackType

from registry.store import Store, StoreError, blob_hex

UPLOAD_MAX_AGE = 24 * 3600.0  # seconds an unclaimed upload is kept


class DigestMismatch(ValueError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f'digest mismatch, expected "{expected}", got "{actual}"')
        self.expected = expected
        self.actual = actual


class Uploads:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.home / "uploads"

    def path(self, digest: str) -> Path:
        """``uploads/sha256-<hex>``; ValueError for a malformed digest."""
        return self.dir / f"sha256-{blob_hex(digest)}"

    def locate(self, digest: str) -> Path | None:
        """Where the blob's bytes are: the blob store first, then the uploads; None if nowhere."""
        for path in (self.store.blob_path(digest), self.path(digest)):
            if path.is_file():
                return path
        return None

    def exists(self, digest: str) -> bool:
        return self.locate(digest) is not None

    def receive(self, digest: str) -> UploadWriter:
        """A writer for the upload of ``digest`` (a context manager; :meth:`UploadWriter.commit`
        verifies and keeps it, leaving without committing discards it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prune()
        return UploadWriter(self.path(digest), blob_hex(digest))

    def claim(self, digest: str) -> tuple[str, int, bool]:
        """Make sure the blob is in the store, moving it from the uploads if it is there:
        ``(sha256:<hex>, size, already_in_store)``. Call under ``Store.writing()``;
        raises :class:`~registry.store.StoreError` when the blob is nowhere."""
        target = self.store.blob_path(digest)
        if target.is_file():
            self.path(digest).unlink(missing_ok=True)  # uploaded again: the store has it already
            return f"sha256:{blob_hex(digest)}", target.stat().st_size, True
        try:
            found, size, existed = self.store.add_blob(self.path(digest), move=True)
        except FileNotFoundError:  # claimed by a concurrent create meanwhile
            if target.is_file():
                return f"sha256:{blob_hex(digest)}", target.stat().st_size, True
            raise StoreError(f'blob "{digest}" not found') from None
        if found != f"sha256:{blob_hex(digest)}":  # the file changed after its upload
            raise StoreError(f"uploaded blob {digest} is damaged (its content is {found})")
        return found, size, existed

    def prune(self, max_age: float = UPLOAD_MAX_AGE) -> int:
        """Remove uploads (and abandoned partial uploads) older than ``max_age`` seconds."""
        removed = 0
        cutoff = time.time() - max_age
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class UploadWriter:
    def __init__(self, target: Path, expected_hex: str) -> None:
        self.target = target
        self.expected_hex = expected_hex
        self._hash = hashlib.sha256()
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=target.parent)
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")
        self.size = 0

    def __enter__(self) -> UploadWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> None:
        """Keep the upload if its sha256 is the expected one; raise :class:`DigestMismatch` otherwise."""
        actual = self._hash.hexdigest()
        if actual != self.expected_hex:
            self.discard()
            raise DigestMismatch(f"sha256:{self.expected_hex}", f"sha256:{actual}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.target)

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)
