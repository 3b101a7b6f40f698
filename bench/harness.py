"""What the benchmarks share: resolving ``--model``, a daemon on a free port, output."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MLXD_BENCH_CACHE", Path(tempfile.gettempdir()) / "mlxd-bench"))


def resolve_model(spec: str) -> Path:
    """``random:<shape>`` (built on the spot), an MLX model directory, or an installed tag."""
    if spec.startswith("random:"):
        from bench.random_model import build_random_model

        name = spec.removeprefix("random:")
        return build_random_model(name, CACHE / name)
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return path
    from daemon.config import Settings
    from registry.store import Store

    installed = Store(Settings.from_env().home).resolve(spec)
    if installed is None:
        raise SystemExit(f"model {spec!r} is neither random:<shape>, a model directory, nor installed")
    return installed.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def daemon(model_dir: Path, ipc: str = "shm", env: dict[str, str] | None = None) -> Iterator[str]:
    """A real ``mlxd serve`` on a free loopback port with ``model_dir`` installed as ``bench``.

    Each call starts a new daemon in a new home; the model is installed through
    ``/api/create`` the first time, and later homes get hard links to that installation
    (kept under ``MLXD_BENCH_CACHE``), so a run of new processes starts in seconds."""
    home = Path(tempfile.mkdtemp(prefix="mlxd-bench-home-"))
    seed = CACHE / "homes" / _model_key(model_dir)
    linked = _link_tree(seed, home)
    port = free_port()
    environ = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{port}", "MLXD_HOME": str(home), "MLXD_IPC": ipc}
    environ.update(env or {})
    log = open(home / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "serve"], cwd=ROOT, env=environ, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start:\n" + (home / "daemon.log").read_text())
            try:
                if httpx.head(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        if not linked:
            body = {"model": "bench", "from": str(model_dir), "stream": False}
            response = httpx.post(url + "/api/create", json=body, timeout=600)
            response.raise_for_status()
            _keep_seed(home, seed)
        yield url
    except BaseException:
        log.flush()
        tail = (home / "daemon.log").read_text(errors="replace").splitlines()[-40:]
        print("daemon log (last lines):\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for line in (home / "daemon.log").read_text(errors="replace").splitlines():
            if "batched decode" in line:  # the worker's routing choice: part of the result
                print(line, file=sys.stderr)
        shutil.rmtree(home, ignore_errors=True)


def _model_key(model_dir: Path) -> str:
    """Names the installed copy of ``model_dir``: ``<its path>-<its files' sizes and times>``."""
    where = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:12]
    files = hashlib.sha256()
    for path in sorted(model_dir.iterdir()):
        if path.is_file():
            stat = path.stat()
            files.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return f"{where}-{files.hexdigest()[:12]}"


def _link_tree(source: Path, target: Path) -> bool:
    """Fill ``target`` with hard links to ``source``'s files (symlinks copied as they are);
    False, leaving ``target`` empty, when there is no complete ``source`` or links fail."""
    if not (source / ".complete").is_file():
        return False
    try:
        _link_copy(source, target)
    except OSError:  # another filesystem: install the model the slow way
        shutil.rmtree(target)
        target.mkdir(mode=0o700)
        return False
    return True


def _link_copy(source: Path, target: Path, ignore: Callable[..., Any] | None = None) -> None:
    """``source``'s tree into ``target`` (which may exist) as hard links, symlinks as they are."""
    shutil.copytree(source, target, symlinks=True, copy_function=os.link, ignore=ignore, dirs_exist_ok=True)


def _keep_seed(home: Path, seed: Path) -> None:
    """Keep hard links to the model just installed in ``home`` (blobs, manifest, its view)
    for the next daemon of this model: installing hashes the weights twice and copies them
    (~1 s for the 0.5B's 270 MB on a 2-core machine, so ~15 s for a 7B's 4.3 GB), and each
    run would pay it again. Best effort."""
    # Not the store's lock file: daemons sharing its inode would wait on each other.
    ignore = shutil.ignore_patterns("daemon.log", "tmp", ".lock")
    try:
        seed.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix="partial-", dir=seed.parent))
    except OSError:
        return
    try:
        _link_copy(home, partial, ignore)
        (partial / ".complete").touch()
        if not (seed / ".complete").is_file():
            shutil.rmtree(seed, ignore_errors=True)  # what an interrupted run left
        partial.rename(seed)  # fails if another run kept one meanwhile: that one serves
        where = seed.name.split("-")[0]
        for older in seed.parent.glob(f"{where}-*"):  # the same directory before it changed
            if older != seed:
                shutil.rmtree(older, ignore_errors=True)
    except OSError:
        pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def device_name() -> str:
    import mlx.core as mx

    device = mx.default_device()
    name = str(device)
    try:
        info = mx.device_info()
        name = f"{name} {info.get('device_name', info.get('architecture', ''))}".strip()
    except Exception:
        pass
    return name


def host_id() -> str:
    """A short name for this machine as it is booted now (host name and Linux's boot id,
    hashed): runs of one host share its speed, so ``bench.pool`` can tell hosts apart."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    try:
        booted = boot.read_text().strip()
    except OSError:  # not Linux: the host name alone
        booted = ""
    return hashlib.sha256(f"{socket.gethostname()} {booted}".encode()).hexdigest()[:12]


def prompt_text(tokens: int) -> str:
    """A prompt of about ``tokens`` tokens for the random models (one per character)."""
    return ("The quick brown fox jumps over the lazy dog. " * (tokens // 45 + 1))[:tokens]


# Candidate first characters of round prompts: ASCII letters and digits, then letters of
# other scripts (Latin-1, Greek, Cyrillic, CJK), most of them one token in a large vocabulary.
MARKS = (
    string.ascii_letters
    + string.digits
    + "".join(
        ch
        for first, last in ((0xC0, 0xFF), (0x391, 0x3C9), (0x410, 0x44F), (0x4E00, 0x4FFF))
        for ch in map(chr, range(first, last + 1))
        if ch.isalpha()
    )
)


def distinct_prompts(
    encode: Callable[[str], list[int]], text: str, count: int, window: int | None = None
) -> list[str]:
    """``count`` variants of ``text`` of one token length, where any ``window`` consecutive
    ones (all of them by default) start with different tokens.

    For TTFT rounds: one length means one set of kernel shapes (on CUDA the first prompt of a
    new length compiles kernels, tens of milliseconds), and distinct first tokens mean no
    round can reuse another's prefix from the server's prompt cache, which keeps the last
    few prompts only: a window longer than it is enough for any number of rounds.
    ``encode`` must not add special tokens."""
    need = count if window is None else min(count, window)
    by_length: dict[int, dict[int, str]] = {}  # token length → first token → prompt
    for mark in MARKS:
        prompt = f"{mark}. {text}"
        ids = encode(prompt)
        group = by_length.setdefault(len(ids), {})
        group.setdefault(ids[0], prompt)
        if len(group) == need:
            break
    found = list(max(by_length.values(), key=len).values())
    if len(found) < need:
        raise ValueError(f"only {len(found)} distinct prompts of one length: use fewer rounds")
    return [found[i % need] for i in range(count)]


def emit(result: dict[str, Any], table: bool) -> None:
    print(json.dumps(result))
    if table:
        width = max(len(k) for k in result)
        for key, value in result.items():
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            print(f"{key.ljust(width)}  {shown}", file=sys.stderr)


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="installed tag, model dir, or random:<shape>")
    parser.add_argument("--tokens", type=int, default=128, help="tokens to generate per run")
    parser.add_argument("--table", action="store_true", help="also print a readable table (stderr)")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
