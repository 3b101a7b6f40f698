"""Pulls from a fake Hugging Face hub on loopback: progress, store layout, sharing, resume,
corruption, cancellation and errors (``registry.pull`` + ``registry.hub``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import constants
from safetensors.numpy import save_file

from registry.catalog import MANIFEST_NOT_FOUND
from registry.hub import Hub
from registry.pull import DIGEST_MISMATCH, Puller, PullError, Subscription
from registry.store import Store
from tests.fakehub import FakeHub, wait_until

REPO = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"  # what the catalog maps qwen2.5:0.5b to
WEIGHTS = "model.safetensors"
CARD = b"---\nlicense: apache-2.0\ntags:\n- mlx\n---\n# A tiny model\n"
EXTRAS = {
    "README.md": CARD,
    ".gitattributes": b"*.safetensors filter=lfs\n",
    "assets/diagram.png": b"\x89PNG not really",
    "original/consolidated.pth": b"torch weights",
}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads write every 64 KiB instead of every 10 MiB: progress and resume show on small files."""
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)


@pytest.fixture
def hub(tiny_model_dir: Path) -> Iterator[tuple[FakeHub, str]]:
    fake = FakeHub()
    fake.add_model_dir(REPO, tiny_model_dir, EXTRAS)
    with fake.serve() as url:
        yield fake, url


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


@pytest.fixture
def puller(store: Store, hub: tuple[FakeHub, str]) -> Iterator[Puller]:
    service = Puller(store, Hub(endpoint=hub[1]), interval=0.01)
    yield service
    service.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(subscription: Subscription) -> list[dict[str, Any]]:
    return list(subscription)


def failure(subscription: Subscription) -> str:
    with pytest.raises(PullError) as exc:
        run(subscription)
    return exc.value.message


def test_progress_and_store_layout(
    puller: Puller, store: Store, hub: tuple[FakeHub, str], tiny_model_dir: Path
) -> None:
    fake, _ = hub
    fake.delay = 0.02  # nine 64 KiB chunks of weights, several progress objects
    events = run(puller.pull("qwen2.5:0.5b"))
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert all(set(e) <= {"status", "digest", "total", "completed"} for e in events)

    expected = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir()} | {"README.md": CARD}
    layers = [e for e in events if e["status"].startswith("pulling ") and e["status"] != "pulling manifest"]
    by_digest: dict[str, list[dict[str, Any]]] = {}
    for event in layers:
        assert re.fullmatch(r"pulling [0-9a-f]{12}", event["status"])
        assert event["status"][8:] == event["digest"][7:19]
        by_digest.setdefault(event["digest"], []).append(event)
    assert set(by_digest) == {f"sha256:{sha(data)}" for data in expected.values()}
    for ticks in by_digest.values():
        assert ticks[-1]["completed"] == ticks[-1]["total"] > 0
        assert [t.get("completed", 0) for t in ticks] == sorted(t.get("completed", 0) for t in ticks)
    weights = f"sha256:{sha(expected[WEIGHTS])}"
    assert "completed" not in by_digest[weights][0]  # the first tick of a download: 0 is omitted
    assert len(by_digest[weights]) > 2  # it grew

    model = store.resolve("qwen2.5:0.5b")
    assert model is not None and model.display == "qwen2.5:0.5b"
    assert {layer.filename for layer in model.layers} == set(expected)
    for layer in model.layers:
        assert store.blob_path(layer.digest).read_bytes() == expected[layer.filename]
        assert (model.path / layer.filename).read_bytes() == expected[layer.filename]
    config = model.config
    assert (config.format, config.family, config.families, config.license) == (
        "mlx",
        "qwen2",
        ["qwen2"],
        ["apache-2.0"],
    )
    assert config.capabilities == ["completion"] and config.parent_model == ""
    assert config.model_info["general.architecture"] == "qwen2"
    assert config.model_info["qwen2.block_count"] == 2
    assert list((store.home / "partial").iterdir()) == []
    assert list((store.home / "tmp").iterdir()) == []

    # One download of the weights, from the "CDN" host, without the token.
    downloads = fake.downloads(sha(expected[WEIGHTS]))
    assert len(downloads) == 1 and downloads[0].host.startswith("localhost:")
    assert not any("consolidated" in r.path or "diagram" in r.path for r in fake.requests)

    again = run(puller.pull("qwen2.5:0.5b"))  # everything is in the store now
    ticks = [e for e in again if e.get("digest")]
    assert len(ticks) == len(expected) and all(t["completed"] == t["total"] for t in ticks)
    assert len(fake.downloads(sha(expected[WEIGHTS]))) == 1


def test_token_goes_to_the_hub_only(store: Store, hub: tuple[FakeHub, str]) -> None:
    fake, url = hub
    service = Puller(store, Hub(endpoint=url, token="hf_secret"))
    run(service.pull(f"hf.co/{REPO}"))
    api = [r for r in fake.requests if r.host.startswith("127.0.0.1")]
    assert api and all(r.authorization == "Bearer hf_secret" for r in api)
    cdn = [r for r in fake.requests if r.host.startswith("localhost")]
    assert cdn and all(r.authorization is None for r in cdn)
    assert store.resolve(f"hf.co/{REPO}:latest") is not None


def test_resume_after_a_dropped_connection(puller: Puller, store: Store, hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    fake.cut(REPO, WEIGHTS, 200_000)
    events = run(puller.pull("qwen2.5:0.5b"))
    assert events[-1] == {"status": "success"}
    weights = fake.repos[REPO].files[WEIGHTS]
    downloads = fake.downloads(weights.sha256)
    assert len(downloads) == 2
    assert downloads[0].range is None
    assert downloads[1].range is not None and 0 < int(downloads[1].range[6:-1]) <= 200_000
    model = store.resolve("qwen2.5:0.5b")
    assert model is not None
    assert (model.path / WEIGHTS).read_bytes() == weights.data


def test_resume_what_an_earlier_pull_left(puller: Puller, store: Store, hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    weights = fake.repos[REPO].files[WEIGHTS]
    partial = store.home / "partial" / f"sha256-{weights.sha256}"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(weights.data[:123_456])
    events = run(puller.pull("qwen2.5:0.5b"))
    ticks = [e for e in events if e.get("digest") == f"sha256:{weights.sha256}"]
    assert ticks[0]["completed"] == 123_456  # where the earlier pull stopped
    assert [r.range for r in fake.downloads(weights.sha256)] == ["bytes=123456-"]
    model = store.resolve("qwen2.5:0.5b")
    assert model is not None and (model.path / WEIGHTS).read_bytes() == weights.data

    # A partial file longer than the file (from something else) is started over.
    run(puller.pull(f"{REPO}:latest"))  # shares the blob: nothing to download
    store.delete("qwen2.5:0.5b")
    store.delete(f"{REPO}:latest")
    partial.write_bytes(b"x" * (len(weights.data) + 10))
    run(puller.pull("qwen2.5:0.5b"))
    assert fake.downloads(weights.sha256)[-1].range is None


def test_what_an_earlier_pull_left_is_checked_too(
    puller: Puller, store: Store, hub: tuple[FakeHub, str]
) -> None:
    fake, _ = hub
    weights = fake.repos[REPO].files[WEIGHTS]
    partial = store.home / "partial" / f"sha256-{weights.sha256}"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 1000)  # not the file's first bytes
    assert failure(puller.pull("qwen2.5:0.5b")).startswith(DIGEST_MISMATCH)
    assert not partial.exists() and store.list() == []
    # A server that ignores the Range: the file starts over, and is right.
    partial.write_bytes(b"\0" * 1000)
    fake.ignore_ranges = True
    assert run(puller.pull("qwen2.5:0.5b"))[-1] == {"status": "success"}
    assert fake.downloads(weights.sha256)[-1].range == "bytes=1000-"
    model = store.resolve("qwen2.5:0.5b")
    assert model is not None and (model.path / WEIGHTS).read_bytes() == weights.data


def test_old_partial_downloads_are_removed(puller: Puller, store: Store) -> None:
    puller.partial_dir.mkdir(parents=True)
    old, recent = puller.partial_dir / f"sha256-{'a' * 64}", puller.partial_dir / f"sha256-{'b' * 64}"
    old.write_bytes(b"old")
    recent.write_bytes(b"recent")
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    assert puller.prune_partials() == 1
    assert not old.exists() and recent.exists()


def test_concurrent_pulls_share_one_download(puller: Puller, store: Store, hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    weights = fake.repos[REPO].files[WEIGHTS]
    fake.paused.set()
    first = puller.pull("qwen2.5:0.5b")
    wait_until(lambda: len(fake.downloads(weights.sha256)) == 1)
    second = puller.pull("QWEN2.5:0.5B")  # the same model: joins the running pull
    other = puller.pull(REPO)  # another name for the same repository: shares its files
    assert sorted(puller.active()) == sorted(["qwen2.5:0.5b", f"{REPO}:latest"])
    fake.paused.clear()
    a, b, c = run(first), run(second), run(other)
    assert a[-1] == b[-1] == c[-1] == {"status": "success"}
    assert b[0] == {"status": "pulling manifest"}  # the joiner got the progress so far
    assert {e["status"] for e in a} == {e["status"] for e in b}
    assert len(fake.downloads(weights.sha256)) == 1
    assert store.resolve("qwen2.5:0.5b") is not None and store.resolve(REPO) is not None
    assert puller.active() == []


def test_a_pull_nobody_listens_to_is_cancelled(
    puller: Puller, store: Store, hub: tuple[FakeHub, str]
) -> None:
    fake, _ = hub
    weights = fake.repos[REPO].files[WEIGHTS]
    fake.delay = 0.02
    subscription = puller.pull("qwen2.5:0.5b")
    while True:
        event = subscription.get(5)
        if event and event.get("digest") == f"sha256:{weights.sha256}" and event.get("completed"):
            break
    subscription.close()
    assert puller.active() == []
    wait_until(lambda: not any(t.name.startswith("pull ") for t in threading.enumerate()))
    assert store.list() == []
    partial = store.home / "partial" / f"sha256-{weights.sha256}"
    kept = partial.stat().st_size
    assert 0 < kept < len(weights.data)
    fake.delay = 0.0
    assert run(puller.pull("qwen2.5:0.5b"))[-1] == {"status": "success"}
    assert fake.downloads(weights.sha256)[-1].range == f"bytes={kept}-"


def test_corrupted_file(puller: Puller, store: Store, hub: tuple[FakeHub, str], tiny_model_dir: Path) -> None:
    fake, _ = hub
    fake.add_model_dir("bad/model", tiny_model_dir)
    fake.corrupt("bad/model", WEIGHTS)
    weights = fake.repos["bad/model"].files[WEIGHTS]
    message = failure(puller.pull("bad/model"))
    assert message.startswith(DIGEST_MISMATCH)
    assert f"want sha256:{weights.sha256}" in message and WEIGHTS in message
    assert store.list() == []
    assert not (store.home / "manifests").exists() or not any((store.home / "manifests").rglob("*"))
    assert not store.has_blob(f"sha256:{weights.sha256}")
    assert list((store.home / "partial").iterdir()) == []  # a corrupt download is not resumed


def test_not_found_and_other_errors(puller: Puller, store: Store, hub: tuple[FakeHub, str]) -> None:
    fake, _ = hub
    assert failure(puller.pull("nobody/nothing")).startswith(MANIFEST_NOT_FOUND)
    assert 'has no revision "v9"' in failure(puller.pull(f"{REPO}:v9"))
    before = len(fake.requests)
    message = failure(puller.pull("qwen2.5:8b"))  # not in the catalog: the hub is not asked
    assert message.startswith(MANIFEST_NOT_FOUND) and "qwen2.5:7b" in message
    assert len(fake.requests) == before
    fake.add_repo("org/pytorch-only", {"README.md": b"hi", "pytorch_model.bin": b"weights"})
    assert "no config.json" in failure(puller.pull("org/pytorch-only"))
    fake.add_repo("org/no-weights", {"config.json": b"{}", "model.bin": b"weights"})
    assert "no .safetensors weights" in failure(puller.pull("org/no-weights"))
    assert "unsupported registry" in failure(puller.pull("example.com/a/b"))
    with pytest.raises(PullError) as exc:
        puller.pull("../../etc/passwd")
    assert (exc.value.status, exc.value.message) == (400, "invalid model name")
    offline = Puller(store, Hub(endpoint="http://127.0.0.1:9"))
    assert "cannot reach http://127.0.0.1:9" in failure(offline.pull(REPO))
    assert store.list() == []


def test_a_new_commit_replaces_the_old_files(
    puller: Puller, store: Store, hub: tuple[FakeHub, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    fake, _ = hub
    run(puller.pull(REPO))
    old = store.resolve(REPO)
    assert old is not None
    changed = tmp_path / "changed"
    changed.mkdir()
    for path in tiny_model_dir.iterdir():
        (changed / path.name).write_bytes(path.read_bytes())
    config = json.loads((changed / "config.json").read_text())
    config["rope_theta"] = 10000.0
    (changed / "config.json").write_text(json.dumps(config))
    save_file({"model.norm.weight": np.ones(64, np.float32)}, str(changed / WEIGHTS))
    fake.add_model_dir(REPO, changed)
    run(puller.pull(REPO))
    new = store.resolve(REPO)
    assert new is not None and new.digest != old.digest
    assert new.config.model_info["qwen2.rope.freq_base"] == 10000.0
    gone = {layer.digest for layer in old.layers} - {layer.digest for layer in new.layers}
    assert gone and not any(store.has_blob(digest) for digest in gone)
