"""End to end on a real instruct model: SmolLM2-135M-Instruct imported from its GGUF file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from daemon.quickstart import DEFAULT_MODEL, QUESTION, embedded_gguf
from tests.conftest import Daemon, processes_mentioning, shm_entries, start_daemon

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
