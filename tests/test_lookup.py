"""ModelLookup: a remembered answer while the manifest stands, a fresh one when it changes."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from daemon.lookup import ModelLookup
from daemon.testing import install_fake_model
from registry.names import InvalidName
from registry.store import InstalledModel, ModelConfig, Store


class CountingStore(Store):
    """A store that counts the resolutions it is asked for."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.resolved = 0

    def resolve(self, text: Any) -> InstalledModel | None:
        self.resolved += 1
        return super().resolve(text)


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "home")


def find(lookup: ModelLookup, text: str) -> InstalledModel | None:
    return asyncio.run(lookup.find(text))


def test_an_unchanged_manifest_is_not_read_again(store: CountingStore) -> None:
    install_fake_model(store, "tiny")
    lookup = ModelLookup(store)
    first = find(lookup, "tiny")
    assert first is not None and store.resolved == 1
    for _ in range(3):
        assert find(lookup, "tiny") is first
    assert store.resolved == 1
    # Another spelling of the same name is its own entry, resolved once.
    assert find(lookup, "TINY:latest") == first
    assert store.resolved == 2


def test_a_replaced_manifest_is_read_again(store: CountingStore) -> None:
    install_fake_model(store, "tiny")
    lookup = ModelLookup(store)
    before = find(lookup, "tiny")
    assert before is not None
    install_fake_model(store, "tiny", config=ModelConfig(system="You are terse."))
    after = find(lookup, "tiny")
    assert after is not None and after.digest != before.digest
    assert after.config.system == "You are terse."
    assert store.resolved == 2


def test_a_deleted_model_is_gone_at_once_and_a_new_one_found(store: CountingStore) -> None:
    install_fake_model(store, "tiny")
    lookup = ModelLookup(store)
    assert find(lookup, "tiny") is not None
    assert store.delete("tiny")
    assert find(lookup, "tiny") is None
    assert find(lookup, "other") is None  # not installed: not remembered
    install_fake_model(store, "other")
    assert find(lookup, "other") is not None


def test_a_missing_model_directory_is_built_again(store: CountingStore) -> None:
    install_fake_model(store, "tiny")
    lookup = ModelLookup(store)
    model = find(lookup, "tiny")
    assert model is not None
    shutil.rmtree(model.path)
    again = find(lookup, "tiny")
    assert again is not None and again.path.is_dir()
    assert store.resolved == 2


def test_an_invalid_name_raises(store: CountingStore) -> None:
    with pytest.raises(InvalidName):
        find(ModelLookup(store), "bad name!")
