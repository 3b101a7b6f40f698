"""Ollama model names: parsing, validation, normalization and display (reference §3).

STUB: signatures agreed between modules; the registry owner fills in the bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


class InvalidName(ValueError):
    """The text is not a valid model name (the API answers 400 ``invalid model name``)."""


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    def display(self) -> str:
        """Ollama's DisplayShortest: ``llama3.2:latest``, ``user/m:latest``, ``example.com/ns/m:tag``."""
        raise NotImplementedError

    def full(self) -> str:
        """``registry.ollama.ai/library/llama3.2:latest``."""
        raise NotImplementedError


def parse_name(text: str) -> ModelName:
    """Parse and validate, filling Ollama's defaults; raise :class:`InvalidName`."""
    raise NotImplementedError
