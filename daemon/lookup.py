"""Model names → installed models, remembered while their manifests stay as they are.

Every inference request starts by resolving its model name: parse it, match each part
case-insensitively against the store, read the manifest and the config blob, and make
sure the model directory exists, under the store's lock. That is file work, so it runs
in the thread pool; the trip costs a thread wake-up, and the work ~0.2 ms, on every
request's time to first token. :class:`ModelLookup` remembers each answer with the
manifest's identity (device, inode, size, modification time) as read *before* the
store read it; a later request for the same text stats the manifest in the event loop
(a few µs) and reuses the answer while nothing changed. A new, rewritten, moved or
deleted manifest changes the identity, and the next request resolves afresh, so a
``create``, ``pull``, ``cp`` or ``rm`` is seen at once. Names that resolve to nothing
are not remembered.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from registry.names import parse_name
from registry.store import InstalledModel, Store

Identity = tuple[int, int, int, int]

_MAX_ENTRIES = 256  # names remembered; the whole memory is dropped past this


def _identity(path: Path) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ModelLookup:
    """``find`` is ``Store.resolve`` with a memory; one per app."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[str, tuple[Path, Identity, InstalledModel]] = {}

    async def find(self, text: str) -> InstalledModel | None:
        """The installed model ``text`` names, or None; raises ``InvalidName``."""
        known = self._known.get(text)
        if known is not None:
            manifest, identity, model = known
            if _identity(manifest) == identity and model.path.is_dir():
                return model
            del self._known[text]
        found = await run_in_threadpool(self._resolve, text)
        if found is None:
            return None
        manifest, identity, model = found
        if len(self._known) >= _MAX_ENTRIES:
            self._known.clear()
        self._known[text] = (manifest, identity, model)
        return model

    def _resolve(self, text: str) -> tuple[Path, Identity, InstalledModel] | None:
        """In a worker thread: the manifest's identity first, then the model it holds."""
        name = self.store.canonical(parse_name(text))
        manifest = self.store.manifest_path(name)
        identity = _identity(manifest)
        model = self.store.resolve(name)
        if model is None or identity is None:
            return None
        return manifest, identity, model
