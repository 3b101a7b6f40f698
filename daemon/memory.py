"""How much memory the machine has, and how much a model will take.

The scheduler's memory guard compares the two before it starts a worker, so a model that
cannot fit is refused with a clear error instead of swapping the machine to death. Both
numbers are read without MLX (the daemon never imports it): the machine's physical memory
from ``sysconf`` (Linux and macOS), lowered to a cgroup limit when the daemon runs in a
container; a model's size from its weight files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("mlxd.memory")

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

# cgroup v2 (unified hierarchy) and v1 limits; "max" or a huge number means "no limit".
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def physical_memory() -> int:
    """Bytes of memory this process may use: physical RAM, or a smaller cgroup limit.

    0 when it cannot be read (the memory guard is then off)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    total = max(total, 0)
    limit = _cgroup_limit()
    if limit and (total == 0 or limit < total):
        return limit
    return total


def _cgroup_limit() -> int:
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            value = int(text)
            # v1 reports "no limit" as a page-aligned number near 2**63.
            return value if 0 < value < (1 << 62) else 0
        return 0
    return 0


def weights_size(model_dir: Path) -> int:
    """The bytes of a model directory's weights: its ``*.safetensors`` files (links followed).

    MLX maps them into memory as they are, so this is close to the resident size of the
    loaded model (the KV cache and activations come on top)."""
    total = 0
    try:
        entries = list(model_dir.glob("*.safetensors"))
    except OSError:
        return 0
    for entry in entries:
        try:
            total += entry.stat().st_size
        except OSError:
            log.warning("cannot read the size of %s", entry)
    return total


def human_bytes(count: int) -> str:
    """Ollama's ``format.HumanBytes2``: ``"12.3 GiB"``, ``"512.0 MiB"``, ``"17 B"``."""
    if count >= GIB:
        return f"{count / GIB:.1f} GiB"
    if count >= MIB:
        return f"{count / MIB:.1f} MiB"
    if count >= KIB:
        return f"{count / KIB:.1f} KiB"
    return f"{count} B"


def too_big_message(needed: int, available: int) -> str:
    """Ollama's error for a model that cannot fit even with every other model unloaded."""
    return (
        f"model requires more system memory ({human_bytes(needed)}) "
        f"than is available ({human_bytes(available)})"
    )
