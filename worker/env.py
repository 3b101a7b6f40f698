"""The worker's on/off switches from the environment (``MLXD_PROMPT_CACHE``,
``MLXD_BATCHED_QMV``, ``MLXD_BATCHED_ATTENTION``, and ``MLXD_TOKEN_THREAD`` when it is
set; unset, that one is on where there is a second core): on unless set to 0, false, no or off."""

from __future__ import annotations

import os

_OFF = ("0", "false", "no", "off")


def switch(name: str) -> bool:
    """Whether the switch ``name`` is on (unset counts as on; any letter case)."""
    return os.environ.get(name, "1").strip().lower() not in _OFF
