"""The seam between the HTTP layer and whatever runs models.

The routes only ever talk to an :class:`Engine`. The worker pool (``daemon.pool``) is the
real implementation; ``daemon.testing.ScriptedEngine`` is a scripted one for HTTP tests.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from worker.protocol import ChatMessage, SamplingOptions

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


@dataclass(frozen=True)
class ModelHandle:
    """What an engine needs to know about an installed model to run it."""

    name: str  # display name, e.g. "smollm2:135m"
    digest: str  # manifest digest (64 hex), identifies the exact model version
    path: Path  # an MLX model directory (config.json, *.safetensors, tokenizer files)


@dataclass
class GenerationRequest:
    """One generation, already validated and with the model's defaults merged in."""

    messages: list[ChatMessage] = field(default_factory=list)  # rendered with the chat template
    prompt: str = ""  # used as-is when ``raw``
    raw: bool = False
    context: list[int] = field(default_factory=list)
    options: SamplingOptions = field(default_factory=lambda: SamplingOptions())
    return_context: bool = False
    template: str = ""  # an Ollama (Go) template replacing the tokenizer's chat template
    suffix: str = ""  # fill-in-the-middle
    format: Any = None  # "json" or a JSON Schema object: constrained output
    tools: list[dict[str, Any]] = field(default_factory=list)
    think: bool | str | None = None  # None: the model's default
    truncate: bool = True  # drop the oldest messages when the prompt exceeds num_ctx
    shift: bool = True  # shift the context when the generation reaches num_ctx
    logprobs: bool = False  # return each generated token's log-probability
    top_logprobs: int = 0  # with logprobs: the n most likely tokens at each step too
    render_only: bool = False  # answer the rendered prompt as text; generate nothing
    stream: bool = True  # False: the caller keeps only the whole answer (no chunk is sent early)
    # How long the model stays loaded once idle (seconds; math.inf = forever, 0 = unload as
    # soon as the request is done); None keeps the model's current setting.
    keep_alive: float | None = None


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class ThinkingChunk:
    """A piece of the model's reasoning (``thinking`` in the response)."""

    text: str


@dataclass(frozen=True)
class ToolCallsChunk:
    """Complete tool calls in Ollama's shape (``id``, ``function.index/name/arguments``)."""

    calls: list[dict[str, Any]]


@dataclass(frozen=True)
class Finished:
    done_reason: Literal["stop", "length", "cancel"]
    prompt_eval_count: int
    prompt_eval_duration_ns: int
    eval_count: int
    eval_duration_ns: int
    context: list[int] | None = None


@dataclass(frozen=True)
class LogprobsChunk:
    """Log-probabilities of generated tokens (Ollama's ``logprobs`` entries), sent before
    the chunk that carries their text."""

    entries: list[dict[str, Any]]


GenerationEvent = TextChunk | ThinkingChunk | ToolCallsChunk | LogprobsChunk | Finished


class EngineError(Exception):
    """A failure with the HTTP status Ollama would answer (500 unless stated)."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# Ollama's text for a runner that died mid-request.
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal "
    "error, check ollama server logs for details"
)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    digest: str
    memory_bytes: int  # resident size of the model
    context_length: int  # the context size requests run with
    expires_at: float = math.inf  # when it unloads, in seconds since the epoch; inf = never
    on_gpu: bool = True  # the worker runs on a GPU (Metal or CUDA), not MLX's CPU backend


@dataclass(frozen=True)
class Embeddings:
    """The answer to :meth:`Engine.embed`: one float32 row per input, in input order."""

    vectors: npt.NDArray[np.float32]  # [inputs, dimensions]
    prompt_eval_count: int  # tokens embedded, all inputs together


class Engine(Protocol):
    """Keep-alive (reference §2.4, §6) is the engine's policy: a model stays loaded for its
    ``keep_alive`` after its last request ends, and a request that gives one replaces it.
    ``None`` means "not given": a model loaded without one gets the server default."""

    async def load(self, model: ModelHandle, keep_alive: float | None = None) -> float:
        """Make sure the model is loaded; return the seconds this call spent loading it.

        A generation of the same model is expected to follow soon (or none, for the load
        idiom): the model is kept for it even with ``keep_alive`` 0. Raises
        :class:`EngineError` (503 when too many requests already wait for a load)."""
        ...

    def generate(self, model: ModelHandle, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream text chunks, then exactly one :class:`Finished`; raise :class:`EngineError`.

        Loads the model first if needed. Closing the iterator early (client gone) cancels
        the generation. ``request.keep_alive`` applies once the request ends."""
        ...

    async def unload(self, model: ModelHandle) -> None:
        """Unload the model now, or as soon as its running requests end if it has any;
        a no-op if it is not loaded (the unload idiom)."""
        ...

    def loaded(self) -> list[LoadedModel]: ...

    async def close(self) -> None:
        """Stop every worker and release their resources."""
        ...

    async def embed(
        self,
        model: ModelHandle,
        inputs: list[str],
        truncate: bool = True,
        dimensions: int = 0,
        keep_alive: float | None = None,
        *,
        normalize: bool = True,
        num_ctx: int = 0,
    ) -> Embeddings:
        """Sentence vectors of ``inputs`` from an embedding model (loaded first if needed).

        As Ollama's ``/api/embed``: L2-normalized, cut to ``dimensions`` (0 < d < size) and
        normalized again; an input over the model's limit (or ``num_ctx``, when smaller) is
        truncated, or without ``truncate`` a 400 :class:`EngineError`. ``normalize=False``
        gives the model's own vectors (legacy ``/api/embeddings``). A generative model
        answers Ollama's 501. ``keep_alive`` applies as for :meth:`generate`."""
        ...
