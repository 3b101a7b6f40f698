"""Hugging Face access for pulls, through ``huggingface_hub`` (so ``HF_ENDPOINT`` and
``HF_TOKEN`` apply as everywhere else).

* :meth:`Hub.snapshot`: a revision resolved to its commit (``GET /api/models/{repo}/revision/{rev}``)
  and the files at that commit with their sizes and, for LFS files, their sha256
  (``GET /api/models/{repo}/tree/{commit}?recursive=true``), as ``HfApi`` asks for them.
* :meth:`Hub.download`: one file at that commit (``HEAD`` then ``GET /{repo}/resolve/{commit}/{path}``,
  as ``hf_hub_download`` does) into a partial file the caller owns. A partial file that
  already holds bytes is continued with a ``Range`` request, so a pull that was interrupted
  (connection lost, client gone, daemon restarted) picks up where it stopped.
  ``hf_hub_download`` itself cannot do that since huggingface_hub 1.x: it downloads into a
  fresh temporary file each time and deletes it on failure; its ``http_get`` (used here)
  resumes within one call, after a dropped connection, and is what makes both work.

Failures raise :class:`HubError` with a message for the client; ``not_found`` marks a
repository, revision or file that does not exist.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, cast
from urllib.parse import urlsplit

from registry.catalog import MANIFEST_NOT_FOUND, HubSource

log = logging.getLogger(__name__)

_HASH_CHUNK = 8 << 20


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative, "/"-separated
    size: int
    sha256: str | None = None  # known for LFS files; the others are hashed after download


@dataclass(frozen=True)
class Snapshot:
    repo_id: str
    commit: str  # 40 hex
    files: list[RemoteFile]


class HubError(Exception):
    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.not_found = not_found


class _QuietBar:
    """A progress bar that shows nothing (the daemon reports progress itself)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _QuietBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _ReportingFile:
    """The file ``http_get`` writes to: reports the size after every write (the callback may
    raise to stop the download), hashes what is written (so the file need not be read again
    to check it), and forwards the few other calls ``http_get`` makes."""

    def __init__(self, file: IO[bytes], report: Callable[[int], None]) -> None:
        self._file = file
        self._report = report
        self.sha256: Any = hashlib.sha256()  # None once the bytes were rewritten out of order
        file.seek(0)
        while chunk := file.read(_HASH_CHUNK):  # the bytes an earlier download left
            self.sha256.update(chunk)

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        self._report(self._file.tell())
        return written

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        if position != self._file.seek(0, os.SEEK_END):
            self._file.seek(position)
            self.sha256 = None  # http_get only does this to start over: then it truncates
        return position

    def truncate(self, size: int | None = None) -> int:
        result = self._file.truncate(size)
        if self._file.tell() == 0:  # started over (the server ignored the Range)
            self.sha256 = hashlib.sha256()
        self._report(self._file.tell())
        return result


class Hub:
    """``endpoint`` and ``token`` default to huggingface_hub's own (``HF_ENDPOINT``,
    ``HF_TOKEN`` or the saved login)."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        endpoint = endpoint or os.environ.get("HF_ENDPOINT", "").strip()  # as set now, not at import
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.token = token

    def endpoint_url(self) -> str:
        from huggingface_hub import constants

        return self.endpoint or constants.ENDPOINT

    def snapshot(self, source: HubSource) -> Snapshot:
        """The commit ``source.revision`` points at, and every file at that commit."""
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi(endpoint=self.endpoint, token=self.token)
        with self._errors("pull model manifest", source, missing=MANIFEST_NOT_FOUND):
            info = api.model_info(source.repo_id, revision=source.revision)
            commit = info.sha
            if not commit:
                raise HubError(f"pull model manifest: {self.endpoint_url()} did not name a commit")
            files = [
                RemoteFile(entry.path, int(entry.size), entry.lfs.sha256.lower() if entry.lfs else None)
                for entry in api.list_repo_tree(source.repo_id, revision=commit, recursive=True)
                if isinstance(entry, RepoFile)
            ]
        return Snapshot(source.repo_id, commit, files)

    def download(
        self,
        snapshot: Snapshot,
        file: RemoteFile,
        dest: Path,
        report: Callable[[int], None],
    ) -> str | None:
        """Download ``file`` into ``dest``, continuing after the bytes ``dest`` already holds;
        return the sha256 hex of the whole file (None if it could not be followed).

        ``report(bytes_in_dest)`` is called as data arrives; an exception it raises stops the
        download (the bytes so far stay in ``dest``)."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        source = HubSource(snapshot.repo_id, snapshot.commit)
        url = hf_hub_url(snapshot.repo_id, file.path, revision=snapshot.commit, endpoint=self.endpoint)
        with self._errors(f"downloading {file.path}", source):
            metadata = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
            headers = build_hf_headers(token=self.token)
            location = metadata.location or url
            if urlsplit(location).netloc != urlsplit(url).netloc:
                headers.pop("authorization", None)  # a signed CDN address: no token there
            with _open_partial(dest, file.size) as f:
                resume = f.tell()
                report(resume)
                writer = _ReportingFile(f, report)
                http_get(
                    location,
                    cast(BinaryIO, writer),
                    resume_size=resume,
                    headers=headers,
                    expected_size=file.size,
                    displayed_filename=file.path,
                    tqdm_class=cast(Any, _QuietBar),
                )
                f.flush()
                os.fsync(f.fileno())
        return writer.sha256.hexdigest() if writer.sha256 is not None else None

    @contextmanager
    def _errors(self, context: str, source: HubSource, missing: str = "") -> Iterator[None]:
        """Translate huggingface_hub's and httpx2's exceptions into :class:`HubError`:
        ``<context>: <what happened>``, or ``<missing>: …`` for what does not exist."""
        import httpx2
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f'Hugging Face repository "{source.repo_id}"'
        missing = missing or context
        try:
            yield
        except GatedRepoError:
            raise HubError(
                f"{context}: {where} is gated: accept its terms on huggingface.co and set HF_TOKEN"
            ) from None
        except RepositoryNotFoundError:
            raise HubError(f"{missing}: {where} not found (or private: set HF_TOKEN)", True) from None
        except RevisionNotFoundError:
            raise HubError(f'{missing}: {where} has no revision "{source.revision}"', True) from None
        except RemoteEntryNotFoundError:
            raise HubError(f"{missing}: not found in {where}", True) from None
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else "error"
            detail = e.server_message or str(e).splitlines()[0]
            raise HubError(f"{context}: {status}: {detail}") from None
        except httpx2.HTTPError as e:
            reason = str(e) or type(e).__name__
            raise HubError(f"{context}: cannot reach {self.endpoint_url()}: {reason}") from None
        except ValueError as e:  # an invalid repository id, a malformed answer
            raise HubError(f"{context}: {e}") from None
        except OSError as e:  # size mismatch after a download, disk errors
            raise HubError(f"{context}: {e}") from None


@contextmanager
def _open_partial(path: Path, size: int) -> Iterator[IO[bytes]]:
    """``path`` opened for writing at its end; emptied first if it is already longer than ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+b") as f:
        if f.seek(0, os.SEEK_END) > size:
            f.seek(0)
            f.truncate()
        yield f
