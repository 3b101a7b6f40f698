"""The ``mlxd`` command line, run as a user would, against a real daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, Daemon, daemon_with_tiny, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with daemon_with_tiny(tmp_path_factory.mktemp("home-cli"), tiny_model_dir) as daemon:
        yield daemon


def mlxd(*args: str, url: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OLLAMA_HOST": url.removeprefix("http://")}
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_list_shows_ollama_columns(daemon: Daemon) -> None:
    out = mlxd("list", url=daemon.url)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.startswith(f"{TINY}:latest")
    assert len(row.split()[1]) == 12


def test_run_with_prompt_and_piped_stdin(daemon: Daemon) -> None:
    out = mlxd("run", TINY, "Hello", "there", url=daemon.url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n")
    piped = mlxd("run", TINY, url=daemon.url, stdin="Hello there")
    assert piped.returncode == 0, piped.stderr


def test_errors_are_one_line_and_nonzero(daemon: Daemon) -> None:
    out = mlxd("run", "nope", "hi", url=daemon.url)
    assert out.returncode == 1
    assert out.stderr.strip() == "Error: model 'nope' not found"
    down = mlxd("list", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert len(down.stderr.strip().splitlines()) == 1 and "could not connect" in down.stderr


def test_create_from_modelfile(daemon: Daemon, tiny_model_dir: Path, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        f'FROM {tiny_model_dir}\nPARAMETER temperature 0\nPARAMETER stop "</s>"\nSYSTEM """Be brief."""\n'
    )
    out = mlxd("create", "brief", "-f", str(modelfile), url=daemon.url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "success"
    listed = mlxd("list", url=daemon.url).stdout
    assert "brief:latest" in listed


def test_dev_tiny_model_writes_a_loadable_dir(tmp_path: Path) -> None:
    out = mlxd("dev", "tiny-model", str(tmp_path / "m"), "--seed", "3", url="127.0.0.1:1")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "m" / "config.json").is_file()
