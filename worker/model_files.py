"""Cheap checks of a model folder before MLX loads it, so that a damaged install is reported
by file name (``config.json is not valid JSON: …``) instead of by a parser deep inside MLX.

Only what can be read without loading weights is checked: ``config.json`` parses to an
object, and every ``*.safetensors`` file has a well-formed header whose tensors lie inside
the file. Shape mismatches between the config and the weights are left to the loader,
whose own message names the parameter.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_MAX_HEADER = 100 * 2**20  # the safetensors format's own limit on the header


class DamagedModel(Exception):
    """A file of the model folder is missing or unreadable; the message names it."""


def check_model_files(model_dir: Path) -> None:
    """Raise :class:`DamagedModel` when ``config.json`` or a safetensors file is damaged."""
    config = model_dir / "config.json"
    try:
        parsed = json.loads(config.read_bytes())
    except FileNotFoundError:
        raise DamagedModel("config.json is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedModel(f"config.json is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise DamagedModel("config.json is not a JSON object")
    for path in sorted(model_dir.glob("*.safetensors")):
        check_safetensors(path)


def check_safetensors(path: Path) -> None:
    """The header of one safetensors file: its length, its JSON, and tensor offsets that fit."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise DamagedModel(f"{path.name} is damaged: too short for a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER, size - 8):
                raise DamagedModel(f"{path.name} is damaged: its header length is out of range")
            header = json.loads(file.read(length))
    except OSError as exc:
        raise DamagedModel(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedModel(f"{path.name} is damaged: its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise DamagedModel(f"{path.name} is damaged: its header is not a JSON object")
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not _fits(entry, data):
            raise DamagedModel(f"{path.name} is damaged: tensor {name!r} lies outside the file")


def _fits(entry: Any, data: int) -> bool:
    if not isinstance(entry, dict):
        return False
    offsets = entry.get("data_offsets")
    return (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data
    )
