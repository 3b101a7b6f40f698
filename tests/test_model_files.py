"""The checks a worker runs on a model folder before loading it, and the stall bound's setting."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from daemon.worker_client import DEFAULT_STALL_TIMEOUT, stall_timeout
from worker.model_files import DamagedModel, check_model_files


def safetensors(header: object, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    (tmp_path / "model.safetensors").write_bytes(safetensors({"w": tensor, "__metadata__": {}}, b"\0" * 8))
    return tmp_path


def test_a_sound_folder_passes(folder: Path) -> None:
    check_model_files(folder)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("config.json", b"{nope", "config.json is not valid JSON"),
        ("config.json", b"[1]", "config.json is not a JSON object"),
        ("config.json", b"\xff\xfe", "config.json is not valid JSON"),
        ("model.safetensors", b"\x01", "model.safetensors is damaged: too short"),
        ("model.safetensors", struct.pack("<Q", 2**40) + b"{}", "header length is out of range"),
        ("model.safetensors", struct.pack("<Q", 4) + b"{}gx", "header is not valid JSON"),
        ("model.safetensors", safetensors([1]), "header is not a JSON object"),
        ("model.safetensors", safetensors({"w": {"data_offsets": [0, 99]}}), "tensor 'w' lies outside"),
        ("model.safetensors", safetensors({"w": "x"}), "tensor 'w' lies outside"),
    ],
)
def test_damage_is_named(folder: Path, name: str, content: bytes, message: str) -> None:
    (folder / name).write_bytes(content)
    with pytest.raises(DamagedModel, match=re.escape(message)):
        check_model_files(folder)


def test_a_missing_config_is_named(folder: Path) -> None:
    (folder / "config.json").unlink()
    with pytest.raises(DamagedModel, match=r"config\.json is missing"):
        check_model_files(folder)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("", DEFAULT_STALL_TIMEOUT),
        ("2.5", 2.5),
        ("0", 0.0),
        ("-1", DEFAULT_STALL_TIMEOUT),
        ("soon", DEFAULT_STALL_TIMEOUT),
        ("inf", DEFAULT_STALL_TIMEOUT),
        ("nan", DEFAULT_STALL_TIMEOUT),
    ],
)
def test_stall_timeout_setting(text: str, seconds: float) -> None:
    assert stall_timeout({"MLXD_WORKER_STALL_TIMEOUT": text}) == seconds
