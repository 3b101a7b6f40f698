"""End to end on a real instruct model: SmolLM2-135M-Instruct imported from its GGUF file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from daemon.quickstart import DEFAULT_MODEL, QUESTION, embedded_gguf
from tests.conftest import (
    ROOT,
    Daemon,
    free_port,
    processes_mentioning,
    processes_with_environment,
    shm_entries,
    start_daemon,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    before = shm_entries()
    home: Path = tmp_path_factory.mktemp("home-smollm2")
    daemon = start_daemon(home)
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.logs()
        assert "Traceback" not in daemon.logs()
        assert processes_mentioning(str(home)) == []
        assert shm_entries() - before == set()


def test_import_and_chat(daemon: Daemon) -> None:
    client = ollama.Client(host=daemon.url)
    statuses = [p.status for p in client.create(model=DEFAULT_MODEL, from_=str(embedded_gguf()), stream=True)]
    assert statuses[0] == "parsing GGUF"
    assert statuses[-1] == "success"
    show = client.show(DEFAULT_MODEL)
    assert show.details and show.details.family == "llama"
    answer = client.chat(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        options={"temperature": 0, "num_predict": 32},
    )
    assert "Paris" in answer.message.content
    assert answer.done_reason in ("stop", "length")
    client._client.close()  # otherwise its pooled connection is reported as unclosed later


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_quickstart_stopped_by_a_signal_stops_its_daemon(tmp_path: Path, stop: signal.Signals) -> None:
    """``kill`` or a closed terminal (SIGHUP) ends ``mlxd quickstart`` the way Ctrl-C does:
    the daemon it started, and that daemon's worker, stop with it (the signal reaches the
    quickstart process alone here, as ``kill PID`` sends it)."""
    before = shm_entries()
    home = tmp_path / "home"
    port = free_port()
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "MLXD_HOME": str(home)}
    log = tmp_path / "quickstart.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "quickstart"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while b"Ctrl-C stops it" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        assert processes_mentioning(str(home)), "the daemon's worker runs while the model is loaded"
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in processes_with_environment("MLXD_HOME", str(home)):  # what a failure left serving
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert "Paris" in text and "Application shutdown complete" in text and "Traceback" not in text
    assert processes_with_environment("MLXD_HOME", str(home)) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    assert shm_entries() - before == set()
