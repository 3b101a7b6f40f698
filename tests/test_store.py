"""The local store: manifests, blobs, model directories, resolve/list/copy/delete/gc."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from datetime import timezone
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from registry.names import InvalidName, parse_name
from registry.store import (
    CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    ModelConfig,
    Store,
    StoreError,
    blob_hex,
    iter_source_files,
    safe_relpath,
)


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """A fake MLX model directory: config, weights and tokenizer files, no MLX needed."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "hidden_size": 8, "max_position_embeddings": 64})
    )
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((4, 4)).astype(np.float32)}, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "src")


def test_create_layout(store: Store, src: Path) -> None:
    (src / "sub").mkdir()
    (src / "sub" / "extra.json").write_text("{}")
    (src / ".hidden").write_text("x")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("x")
    model = store.create(parse_name("tiny"), src, ModelConfig(family="qwen2"))

    manifest = store.home / "manifests/registry.ollama.ai/library/tiny/latest"
    raw = manifest.read_bytes()
    doc = json.loads(raw)
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == MANIFEST_MEDIA_TYPE
    assert doc["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in doc["layers"]]
    assert titles == [
        "config.json",
        "model.safetensors",
        "sub/extra.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for layer in doc["layers"]:
        assert layer["mediaType"] == LAYER_MEDIA_TYPE
        data = (src / layer["annotations"]["org.opencontainers.image.title"]).read_bytes()
        assert layer["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert layer["size"] == len(data)
        assert (store.home / "blobs" / layer["digest"].replace(":", "-")).read_bytes() == data
    config_blob = store.blob_path(doc["config"]["digest"]).read_bytes()
    assert json.loads(config_blob)["family"] == "qwen2"

    assert model.digest == hashlib.sha256(raw).hexdigest()
    assert model.size == doc["config"]["size"] + sum(layer["size"] for layer in doc["layers"])
    assert model.modified_at.tzinfo is not None
    assert model.modified_at.timestamp() == pytest.approx(manifest.stat().st_mtime)
    assert model.display == "tiny:latest"
    assert model.path == store.home / "models" / model.digest
    assert (model.path / "sub" / "extra.json").read_text() == "{}"
    assert (model.path / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert not (model.path / ".hidden").exists()
    # The source is copied, never moved.
    assert (src / "model.safetensors").is_file()


def test_create_progress_and_dedupe(store: Store, src: Path) -> None:
    seen: list[tuple[str, bool]] = []
    store.create(parse_name("a"), src, ModelConfig(), progress=lambda d, e: seen.append((d, e)))
    assert len(seen) == 4 and not any(existed for _, existed in seen)
    seen.clear()
    b = store.create(parse_name("b"), src, ModelConfig(), progress=lambda d, e: seen.append((d, e)))
    assert all(existed for _, existed in seen)
    a = store.resolve("a")
    assert a is not None
    # Same content and config give the same manifest, hence the same digest and directory.
    assert a.digest == b.digest and a.path == b.path


def test_resolve_case_insensitive(store: Store, src: Path) -> None:
    store.create(parse_name("MyUser/Tiny:V1"), src, ModelConfig())
    m = store.resolve("myuser/TINY:v1")
    assert m is not None
    assert m.display == "MyUser/Tiny:V1"
    assert store.resolve("REGISTRY.OLLAMA.AI/myuser/tiny:v1") is not None
    assert store.resolve("myuser/tiny") is None  # :latest is another tag
    assert store.resolve("other") is None
    with pytest.raises(InvalidName):
        store.resolve("bad:")


def test_create_keeps_existing_spelling(store: Store, src: Path) -> None:
    store.create(parse_name("Tiny:one"), src, ModelConfig())
    store.create(parse_name("TINY:two"), src, ModelConfig())
    assert sorted(m.display for m in store.list()) == ["Tiny:one", "Tiny:two"]


def test_resolve_rebuilds_model_dir(store: Store, src: Path) -> None:
    model = store.create(parse_name("tiny"), src, ModelConfig())
    for p in sorted(model.path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    model.path.rmdir()
    again = store.resolve("tiny")
    assert again is not None
    assert (again.path / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert os.path.islink(again.path / "config.json")
    assert not os.path.isabs(os.readlink(again.path / "config.json"))


def test_list_newest_first_and_skips_broken(
    store: Store, src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert store.list() == []
    store.create(parse_name("old"), src, ModelConfig())
    store.create(parse_name("new"), src, ModelConfig(system="hi"))
    old = store.home / "manifests/registry.ollama.ai/library/old/latest"
    os.utime(old, (1_000_000, 1_000_000))
    broken = store.home / "manifests/registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    missing_cfg = store.home / "manifests/registry.ollama.ai/library/nocfg/latest"
    missing_cfg.parent.mkdir(parents=True)
    missing_cfg.write_text(json.dumps({"config": {"digest": "sha256:" + "0" * 64, "size": 1}, "layers": []}))
    escaping = store.home / "manifests/registry.ollama.ai/library/evil/latest"
    escaping.parent.mkdir(parents=True)
    good = json.loads((store.home / "manifests/registry.ollama.ai/library/new/latest").read_text())
    good["layers"][0]["annotations"]["org.opencontainers.image.title"] = "../../../escape"
    escaping.write_text(json.dumps(good))
    badname = store.home / "manifests/registry.ollama.ai/library/bad!name/latest"
    badname.parent.mkdir(parents=True)
    badname.write_text("{}")
    with caplog.at_level(logging.WARNING):
        models = store.list()
    assert [m.display for m in models] == ["new:latest", "old:latest"]
    assert models[1].modified_at.tzinfo is not None
    assert models[1].modified_at.astimezone(timezone.utc).timestamp() == 1_000_000
    assert "broken" in caplog.text and "evil" in caplog.text
    assert store.resolve("broken") is None
    assert store.resolve("evil") is None
    assert not (store.home / "escape").exists()


def test_config_round_trip(store: Store, src: Path) -> None:
    cfg = ModelConfig(
        template="{{ .Prompt }}",
        system="be brief",
        parameters={"temperature": 0.5, "stop": ["a", "b"], "num_ctx": 128},
        messages=[{"role": "user", "content": "hi"}],
        license=["MIT", "Apache"],
        parent_model="base:latest",
        family="qwen2",
        families=["qwen2"],
        parameter_size="1.0M",
        quantization_level="F32",
        context_length=64,
        embedding_length=8,
        model_info={"general.architecture": "qwen2"},
    )
    store.create(parse_name("tiny"), src, cfg)
    m = store.resolve("tiny")
    assert m is not None and m.config == cfg


def test_config_ignores_unknown_keys() -> None:
    assert ModelConfig.from_json({"system": "s", "future_field": 1}) == ModelConfig(system="s")


def test_replace_tag_collects_old_blobs(store: Store, tmp_path: Path) -> None:
    a = make_model_dir(tmp_path / "a", seed=1)
    b = make_model_dir(tmp_path / "b", seed=2)
    first = store.create(parse_name("tiny"), a, ModelConfig())
    old_weights = next(layer for layer in first.layers if layer.filename == "model.safetensors")
    second = store.create(parse_name("tiny"), b, ModelConfig())
    assert first.digest != second.digest
    assert not store.has_blob(old_weights.digest)
    assert not first.path.exists()
    assert second.path.is_dir()
    assert [m.digest for m in store.list()] == [second.digest]


def test_copy_and_delete(store: Store, src: Path) -> None:
    orig = store.create(parse_name("tiny"), src, ModelConfig())
    assert store.copy("nope", "x") is None
    copied = store.copy("TINY", "user/copy:v2")
    assert copied is not None
    assert copied.display == "user/copy:v2"
    assert copied.digest == orig.digest
    with pytest.raises(InvalidName):
        store.copy("tiny", "bad:")

    assert store.delete("tiny") is True
    assert store.delete("tiny") is False
    # Blobs still used by the copy survive.
    assert all(store.has_blob(layer.digest) for layer in copied.layers)
    assert store.resolve("user/copy:v2") is not None
    assert not (store.home / "manifests/registry.ollama.ai/library").exists()

    assert store.delete(parse_name("USER/COPY:V2")) is True
    assert store.list() == []
    assert list((store.home / "blobs").iterdir()) == []
    assert list((store.home / "models").iterdir()) == []


def test_gc_waits_for_writers(store: Store, src: Path) -> None:
    store.create(parse_name("tiny"), src, ModelConfig())
    with store.writing():
        digest, _, _ = store.add_blob(src / "config.json")
        store.delete("tiny")  # gc is skipped: a writer is active
        assert store.has_blob(digest)
    assert store.gc() > 0
    assert not store.has_blob(digest)


def test_gc_keeps_blobs_when_a_manifest_is_unreadable(store: Store, src: Path) -> None:
    model = store.create(parse_name("tiny"), src, ModelConfig())
    manifest = store.manifest_path(parse_name("tiny"))
    manifest.write_text("garbage")
    store.gc()
    assert all(store.has_blob(layer.digest) for layer in model.layers)


def test_concurrent_creates(store: Store, tmp_path: Path) -> None:
    dirs = [make_model_dir(tmp_path / f"s{i}", seed=i) for i in range(4)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            store.create(parse_name(f"m{i}"), dirs[i], ModelConfig())
            store.delete(f"m{(i + 1) % 4}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for m in store.list():
        again = store.resolve(m.name)
        assert again is not None
        assert all(store.has_blob(layer.digest) for layer in again.layers)


def test_create_empty_dir_fails(store: Store, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError):
        store.create(parse_name("x"), tmp_path / "empty", ModelConfig())
    assert store.list() == []


def test_follows_file_symlinks(store: Store, tmp_path: Path) -> None:
    real = make_model_dir(tmp_path / "real")
    snap = tmp_path / "snap"
    snap.mkdir()
    for f in real.iterdir():
        (snap / f.name).symlink_to(f)
    (snap / "loop").symlink_to(snap)  # directory links are not followed
    names = [rel for rel, _ in iter_source_files(snap)]
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    m = store.create(parse_name("snap"), snap, ModelConfig())
    assert not (store.blob_path(m.layers[0].digest)).is_symlink()


def test_digest_helpers(store: Store) -> None:
    h = "ab" * 32
    assert blob_hex(f"sha256:{h}") == h
    assert blob_hex(f"sha256-{h.upper()}") == h
    for bad in ("sha256:xyz", "md5:" + h, "sha256:" + h + "/..", h, f"sha256:{h}\n"):
        with pytest.raises(ValueError):
            store.blob_path(bad)


@pytest.mark.parametrize("bad", ["", "/abs", "../x", "a/../b", "a//b", "./a", "a\\b", "a\x00b", "a/"])
def test_safe_relpath_rejects(bad: str) -> None:
    with pytest.raises(StoreError):
        safe_relpath(bad)
