"""The scheduling settings (reference §8) and what the daemon builds from them."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from daemon.config import Settings
from daemon.memory import physical_memory, weights_size
from daemon.pool import WorkerPool, limits_from


@pytest.mark.parametrize(
    ("env", "loaded", "queue", "parallel"),
    [
        ({}, 3, 512, 4),
        ({"OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_MAX_QUEUE": "10", "OLLAMA_NUM_PARALLEL": "1"}, 2, 10, 1),
        ({"OLLAMA_MAX_LOADED_MODELS": "0", "OLLAMA_MAX_QUEUE": "0", "OLLAMA_NUM_PARALLEL": "0"}, 3, 1, 4),
        ({"OLLAMA_MAX_LOADED_MODELS": " '5' ", "OLLAMA_MAX_QUEUE": '"7"'}, 5, 7, 4),
        (
            {"OLLAMA_MAX_LOADED_MODELS": "-1", "OLLAMA_MAX_QUEUE": "many", "OLLAMA_NUM_PARALLEL": "2.5"},
            3,
            512,
            4,
        ),
    ],
)
def test_limits(env: dict[str, str], loaded: int, queue: int, parallel: int) -> None:
    settings = Settings.from_env(env)
    assert (settings.max_loaded_models, settings.max_queue, settings.num_parallel) == (
        loaded,
        queue,
        parallel,
    )


def test_invalid_values_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    Settings.from_env({"OLLAMA_MAX_QUEUE": "lots"})
    assert "OLLAMA_MAX_QUEUE" in caplog.text


def test_the_pool_takes_its_limits_from_the_settings(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "OLLAMA_MAX_LOADED_MODELS": "2",
            "OLLAMA_MAX_QUEUE": "9",
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_LOAD_TIMEOUT": "20m",
            "MLXD_IPC": "stdio",
        }
    )
    limits = limits_from(settings)
    assert (limits.max_loaded, limits.max_queue, limits.keep_alive) == (2, 9, math.inf)
    assert limits.context_length == 4096 and limits.memory_bytes == physical_memory()
    assert limits.load_timeout == 1200.0
    pool = WorkerPool.from_settings(settings)
    assert pool.ipc == "stdio" and pool.limits == limits


def test_physical_memory() -> None:
    total = physical_memory()
    assert total > 2**27  # at least 128 MiB on any machine that runs the tests
    assert total <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_weights_size_follows_links(tmp_path: Path) -> None:
    blobs, model = tmp_path / "blobs", tmp_path / "model"
    blobs.mkdir()
    model.mkdir()
    (blobs / "a").write_bytes(b"\0" * 300)
    (blobs / "b").write_bytes(b"\0" * 200)
    (model / "model-00001-of-00002.safetensors").symlink_to(blobs / "a")
    (model / "model-00002-of-00002.safetensors").symlink_to(blobs / "b")
    (model / "config.json").write_text("{}")
    assert weights_size(model) == 500
    assert weights_size(tmp_path / "missing") == 0
