"""Where a model name is pulled from: Ollama library tags through the catalog, Hugging Face
repositories by their id.

The rule, applied to the parsed name (``registry.names``):

1. Host ``hf.co`` or ``huggingface.co``: ``hf.co/org/repo[:rev]`` is the Hugging Face
   repository ``org/repo`` at revision ``rev`` (``latest``, the default tag, means ``main``).
2. The default host (or ``ollama.com``) and the ``library`` namespace, i.e. a plain
   ``qwen2.5:7b``: looked up in ``catalog.json`` (case-insensitively). A name the catalog
   does not have is not found, with the closest catalog names suggested.
3. The default host and any other namespace, i.e. a bare ``org/repo[:rev]``: the Hugging
   Face repository ``org/repo`` at revision ``rev``, as in rule 1. Ollama would look for
   ``org/repo`` on its own registry; there is none here, and on Hugging Face ``org/repo`` is
   how every model is named.
4. Any other host: not supported (mlxd pulls from Hugging Face only).

The model is stored under the name that was asked for (``qwen2.5:latest``,
``mlx-community/Qwen2.5-0.5B-Instruct-4bit:latest``, ``hf.co/org/repo:main``…).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.names import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG, ModelName

CATALOG_PATH = Path(__file__).with_name("catalog.json")
HF_HOSTS = frozenset({"hf.co", "huggingface.co"})
OLLAMA_HOSTS = frozenset({DEFAULT_HOST, "ollama.com"})
DEFAULT_REVISION = "main"

# Ollama's text for a model its registry does not have; the CLI matches it.
MANIFEST_NOT_FOUND = "pull model manifest: file does not exist"

_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
KNOWN_CAPABILITIES = frozenset({"completion", "tools", "insert", "vision", "embedding", "thinking"})


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face repository at a revision (a branch, a tag or a commit)."""

    repo_id: str
    revision: str = DEFAULT_REVISION
    # Capabilities the catalog adds to what the model's own files say.
    capabilities: tuple[str, ...] = ()
    # ``family:tag`` when the name came from the catalog.
    catalog_name: str = ""

    def __str__(self) -> str:
        return self.repo_id if self.revision == DEFAULT_REVISION else f"{self.repo_id}@{self.revision}"


class SourceError(Exception):
    """The name cannot be pulled; ``str()`` is the message for the client."""


class CatalogError(ValueError):
    """``catalog.json`` is malformed."""


def _split_repo(value: str) -> tuple[str, str]:
    repo, _, revision = value.partition("@")
    if not _REPO_ID_RE.fullmatch(repo) or (revision == "" and "@" in value):
        raise CatalogError(f"not a Hugging Face repository id: {value!r}")
    return repo, revision or DEFAULT_REVISION


@dataclass(frozen=True)
class _Family:
    tags: dict[str, str]  # lower-case tag → "org/repo[@rev]"
    aliases: dict[str, str]  # lower-case alias (and "latest") → a key of tags
    capabilities: tuple[str, ...]


class Catalog:
    """The Ollama library names mlxd knows, from ``catalog.json`` (see its ``about``)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        families = data.get("families")
        if not isinstance(families, dict):
            raise CatalogError("catalog: 'families' must be an object")
        self._families: dict[str, _Family] = {}
        for name, body in families.items():
            self._families[name.lower()] = self._family(name, body)

    @staticmethod
    def _family(name: str, body: Any) -> _Family:
        if not isinstance(body, dict) or not isinstance(body.get("tags"), dict) or not body["tags"]:
            raise CatalogError(f"catalog: {name}: 'tags' must be a non-empty object")
        tags = {str(tag).lower(): str(repo) for tag, repo in body["tags"].items()}
        for repo in tags.values():
            _split_repo(repo)
        aliases = {str(alias).lower(): str(tag).lower() for alias, tag in (body.get("aliases") or {}).items()}
        if "latest" in body:
            aliases[DEFAULT_TAG] = str(body["latest"]).lower()
        for alias, tag in aliases.items():
            if tag not in tags:
                raise CatalogError(f"catalog: {name}:{alias} points at {tag!r}, which has no repository")
            if alias in tags:
                raise CatalogError(f"catalog: {name}:{alias} is both a tag and an alias")
        capabilities = tuple(str(c) for c in body.get("capabilities") or ())
        unknown = set(capabilities) - KNOWN_CAPABILITIES
        if unknown:
            raise CatalogError(f"catalog: {name}: unknown capabilities {sorted(unknown)}")
        return _Family(tags, aliases, capabilities)

    @classmethod
    def load(cls, path: Path = CATALOG_PATH) -> Catalog:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CatalogError(f"cannot read the catalog {path}: {e}") from e
        if not isinstance(data, dict):
            raise CatalogError("catalog: not a JSON object")
        return cls(data)

    def names(self) -> list[str]:
        """Every ``family:tag`` the catalog answers, aliases and ``latest`` included."""
        return sorted(
            f"{name}:{tag}"
            for name, family in self._families.items()
            for tag in (*family.tags, *family.aliases)
        )

    def lookup(self, model: str, tag: str) -> HubSource | None:
        """The repository for ``model:tag`` (case-insensitive), or None."""
        family = self._families.get(model.lower())
        if family is None:
            return None
        key = family.aliases.get(tag.lower(), tag.lower())
        value = family.tags.get(key)
        if value is None:
            return None
        repo, revision = _split_repo(value)
        return HubSource(repo, revision, family.capabilities, f"{model.lower()}:{key}")

    def close_matches(self, model: str, tag: str, limit: int = 3) -> list[str]:
        """Catalog names that look like ``model:tag``: other tags of the same family first."""
        wanted = f"{model.lower()}:{tag.lower()}"
        family = self._families.get(model.lower())
        if family is not None:
            tags = [f"{model.lower()}:{t}" for t in family.tags]
            return difflib.get_close_matches(wanted, tags, n=limit, cutoff=0.0)
        # Compare family names (the tag rarely helps when the family is unknown).
        families = difflib.get_close_matches(model.lower(), list(self._families), n=limit, cutoff=0.6)
        return [f"{name}:{DEFAULT_TAG}" for name in families]


@functools.cache
def default_catalog() -> Catalog:
    return Catalog.load()


def hub_revision(tag: str) -> str:
    """The Hugging Face revision a tag stands for: ``latest`` (the default tag) is ``main``."""
    return DEFAULT_REVISION if tag.lower() == DEFAULT_TAG else tag


def resolve_source(name: ModelName, catalog: Catalog | None = None) -> HubSource:
    """Where ``name`` is pulled from (the rule is in the module docstring); raises
    :class:`SourceError` with the message for the client."""
    host = name.host.lower()
    if host in HF_HOSTS:
        return HubSource(f"{name.namespace}/{name.model}", hub_revision(name.tag))
    if host not in OLLAMA_HOSTS:
        raise SourceError(
            f'pull model manifest: unsupported registry "{name.host}": mlxd pulls from Hugging Face '
            "(hf.co/org/repo) and knows Ollama library names from its catalog"
        )
    if name.namespace.lower() != DEFAULT_NAMESPACE:
        return HubSource(f"{name.namespace}/{name.model}", hub_revision(name.tag))
    catalog = catalog or default_catalog()
    source = catalog.lookup(name.model, name.tag)
    if source is not None:
        return source
    matches = catalog.close_matches(name.model, name.tag)
    hint = f" (did you mean {', '.join(matches)}?)" if matches else ""
    raise SourceError(
        f'{MANIFEST_NOT_FOUND}: "{name.display()}" is not in the catalog{hint}. '
        "Any Hugging Face MLX repository can be pulled as org/repo or hf.co/org/repo"
    )
