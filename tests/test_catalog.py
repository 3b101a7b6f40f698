"""The catalog (Ollama library tags → MLX repositories) and where each kind of name is pulled from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.catalog import (
    CATALOG_PATH,
    MANIFEST_NOT_FOUND,
    Catalog,
    CatalogError,
    HubSource,
    SourceError,
    default_catalog,
    resolve_source,
)
from registry.names import parse_name

# The families the catalog must cover, with the size tags Ollama's library has for them.
REQUIRED = {
    "qwen2.5": ["0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b"],
    "qwen2.5-coder": ["0.5b", "1.5b", "3b", "7b", "14b", "32b"],
    "qwen3": ["0.6b", "1.7b", "4b", "8b", "14b", "30b", "32b"],
    "llama3.2": ["1b", "3b"],
    "llama3.1": ["8b"],
    "gemma3": ["1b", "4b", "12b", "27b"],
    "mistral": ["7b"],
    "phi4": ["14b"],
    "deepseek-r1": ["1.5b", "7b", "8b", "14b", "32b", "70b"],
    "smollm2": ["135m", "360m", "1.7b"],
}
LATEST = {
    "qwen2.5": "7b",
    "qwen2.5-coder": "7b",
    "qwen3": "8b",
    "llama3.2": "3b",
    "llama3.1": "8b",
    "gemma3": "4b",
    "mistral": "7b",
    "phi4": "14b",
    "deepseek-r1": "8b",
    "smollm2": "1.7b",
}


def source(text: str) -> HubSource:
    return resolve_source(parse_name(text))


@pytest.mark.parametrize("family", sorted(REQUIRED))
def test_required_families(family: str) -> None:
    catalog = default_catalog()
    for tag in REQUIRED[family]:
        found = catalog.lookup(family, tag)
        assert found is not None, f"{family}:{tag}"
        assert found.repo_id.startswith("mlx-community/") and found.repo_id.endswith("-4bit")
        assert found.revision == "main"
    latest = catalog.lookup(family, "latest")
    assert latest == catalog.lookup(family, LATEST[family])


def test_every_name_resolves_to_a_distinct_repo_per_tag() -> None:
    catalog = default_catalog()
    names = catalog.names()
    assert "qwen2.5:latest" in names and "qwen2.5:7b-instruct" in names
    for name in names:
        assert isinstance(source(name), HubSource), name
    data = json.loads(CATALOG_PATH.read_text())
    for family, body in data["families"].items():
        repos = list(body["tags"].values())
        assert len(repos) == len(set(repos)), family


def test_library_lookup_rules() -> None:
    assert source("qwen2.5") == source("qwen2.5:7b") == source("registry.ollama.ai/library/qwen2.5:7b")
    assert source("QWEN2.5:7B").repo_id == "mlx-community/Qwen2.5-7B-Instruct-4bit"
    assert source("ollama.com/library/llama3.2:1b").repo_id == "mlx-community/Llama-3.2-1B-Instruct-4bit"
    assert source("qwen3:30b-a3b") == source("qwen3:30b")
    coder = source("qwen2.5-coder:1.5b")
    assert coder.capabilities == ("insert",) and coder.catalog_name == "qwen2.5-coder:1.5b"


def test_hugging_face_forms() -> None:
    repo = "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    assert source(repo) == HubSource(repo, "main")
    assert source(f"{repo}:latest") == HubSource(repo, "main")
    assert source(f"hf.co/{repo}") == HubSource(repo, "main")
    assert source(f"HF.CO/{repo}:v1.2") == HubSource(repo, "v1.2")
    assert source(f"huggingface.co/{repo}:0123abc") == HubSource(repo, "0123abc")
    assert str(HubSource(repo, "v1")) == f"{repo}@v1"


def test_unknown_names() -> None:
    with pytest.raises(SourceError) as exc:
        source("qwen2.5:8b")
    message = str(exc.value)
    assert message.startswith(MANIFEST_NOT_FOUND)  # the CLI matches this text
    assert "did you mean qwen2.5:7b" in message
    with pytest.raises(SourceError) as exc:
        source("qwen2.6")
    assert "qwen2.5:latest" in str(exc.value)
    with pytest.raises(SourceError) as exc:
        source("zzzzzz")
    assert "did you mean" not in str(exc.value) and "org/repo" in str(exc.value)
    with pytest.raises(SourceError) as exc:
        source("example.com/team/model:1")
    assert 'unsupported registry "example.com"' in str(exc.value)


def test_catalog_validation(tmp_path: Path) -> None:
    def load(families: object) -> Catalog:
        path = tmp_path / "catalog.json"
        path.write_text(json.dumps({"families": families}))
        return Catalog.load(path)

    good = load({"m": {"latest": "1b", "tags": {"1b": "org/m-1b@v2"}}})
    assert good.lookup("m", "latest") == HubSource("org/m-1b", "v2", (), "m:1b")
    for bad in (
        {"m": {"tags": {}}},
        {"m": {"tags": {"1b": "not a repo"}}},
        {"m": {"latest": "2b", "tags": {"1b": "org/m"}}},
        {"m": {"tags": {"1b": "org/m"}, "aliases": {"1b": "1b"}}},
        {"m": {"tags": {"1b": "org/m"}, "capabilities": ["flying"]}},
        [],
    ):
        with pytest.raises(CatalogError):
            load(bad)
    with pytest.raises(CatalogError):
        Catalog.load(tmp_path / "missing.json")
