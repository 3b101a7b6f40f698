"""The local model store under MLXD_HOME: manifests, content-addressed blobs, model dirs.

STUB: signatures agreed between modules; the registry owner fills in the bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from registry.names import ModelName


@dataclass
class ModelConfig:
    """Everything about a model besides its weights (Modelfile settings and details)."""

    template: str = ""  # Modelfile TEMPLATE; "" = the tokenizer's own chat template
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # PARAMETER values (stop is a list)
    messages: list[dict[str, str]] = field(default_factory=list)  # MESSAGE history
    license: list[str] = field(default_factory=list)
    parent_model: str = ""
    # ModelDetails
    format: str = "safetensors"
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    context_length: int = 0
    embedding_length: int = 0
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    model_info: dict[str, Any] = field(default_factory=dict)  # general.architecture, <arch>.context_length…


@dataclass
class InstalledModel:
    name: ModelName
    digest: str  # sha256 hex of the manifest bytes (64 chars, no prefix)
    size: int  # bytes: sum of the layers + config
    modified_at: datetime  # manifest mtime, timezone-aware (local)
    path: Path  # an MLX model directory the worker can load
    config: ModelConfig

    @property
    def display(self) -> str:
        return self.name.display()


class Store:
    def __init__(self, home: Path) -> None:
        self.home = home

    def resolve(self, text: str) -> InstalledModel | None:
        """The installed model this name refers to (case-insensitive per part), or None.
        Raises InvalidName."""
        raise NotImplementedError

    def list(self) -> list[InstalledModel]:
        """All installed models, newest ``modified_at`` first."""
        raise NotImplementedError

    def create(self, name: ModelName, source_dir: Path, config: ModelConfig) -> InstalledModel:
        """Register an MLX model directory under ``name``: files are copied into the blob store
        (never moved), the manifest is written last and atomically. Replaces an existing tag."""
        raise NotImplementedError
