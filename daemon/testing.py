"""A scripted :class:`~daemon.engine.Engine` for HTTP tests, in the spirit of httpx's MockTransport.

A script is a list of steps replayed for each generation: :class:`~daemon.engine.TextChunk`
and :class:`~daemon.engine.Finished` are yielded, an :class:`~daemon.engine.EngineError` is
raised, a :class:`Delay` sleeps. The script may also be a function of the model and request.
The engine records what it was asked: ``loads`` (and their ``keep_alives``), ``unloads``,
and one :class:`GenerationRecord` per generation (the request, what was sent, how it ended).
Keep-alive is kept simply: a model whose keep-alive is 0 is unloaded when a generation
ends, and ``loaded()`` reports the expiry that the keep-alive gives::

    engine = ScriptedEngine([TextChunk("Hi"), Delay(0.01), Finished("stop", 3, 10, 1, 10)])
    app = create_app(settings, engine, store)
    ...
    assert engine.generations[0].request.messages[-1]["content"] == "hello"
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from daemon.durations import DEFAULT_KEEP_ALIVE
from daemon.engine import (
    Embeddings,
    EngineError,
    Finished,
    GenerationEvent,
    GenerationRequest,
    LoadedModel,
    LogprobsChunk,
    ModelHandle,
    TextChunk,
    ThinkingChunk,
    ToolCallsChunk,
)
from registry.names import parse_name
from registry.store import InstalledModel, ModelConfig, Store

FAKE_CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"


@dataclass(frozen=True)
class Delay:
    seconds: float


Step = TextChunk | ThinkingChunk | ToolCallsChunk | LogprobsChunk | Finished | EngineError | Delay
Script = Sequence[Step] | Callable[[ModelHandle, GenerationRequest], Sequence[Step]]


def default_script(model: ModelHandle, request: GenerationRequest) -> list[Step]:
    """Two chunks, then a finish with metrics (and token ids when the request wants them)."""
    return [
        TextChunk("Hello"),
        TextChunk(" world"),
        Finished(
            done_reason="stop",
            prompt_eval_count=5,
            prompt_eval_duration_ns=1_000_000,
            eval_count=2,
            eval_duration_ns=2_000_000,
            context=[1, 2, 3] if request.return_context else None,
        ),
    ]


@dataclass
class GenerationRecord:
    model: ModelHandle
    request: GenerationRequest
    events_sent: int = 0  # events handed to the consumer
    completed: bool = False  # the Finished event (or the whole script) was sent
    failed: bool = False  # the script raised an EngineError
    closed_early: bool = False  # the consumer closed or cancelled the stream before the end


@dataclass
class EmbedRecord:
    """One :meth:`ScriptedEngine.embed` call, as it was asked."""

    model: ModelHandle
    inputs: list[str]
    truncate: bool
    dimensions: int
    keep_alive: float | None
    normalize: bool
    num_ctx: int


def fake_vector(text: str, size: int = 8) -> np.ndarray:
    """A deterministic stand-in for a sentence vector (not normalized)."""
    seed = int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") ^ len(text)
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


class ScriptedEngine:
    def __init__(
        self,
        script: Script | None = None,
        *,
        load_seconds: float = 0.25,
        load_error: EngineError | None = None,
    ) -> None:
        self.script: Script = default_script if script is None else script
        self.load_seconds = load_seconds
        self.load_error = load_error
        self.loads: list[ModelHandle] = []
        self.keep_alives: list[float | None] = []  # as given to each load
        self.unloads: list[ModelHandle] = []
        self.generations: list[GenerationRecord] = []
        self.embeds: list[EmbedRecord] = []
        self.embed_error: EngineError | None = None  # raised by every embed call when set
        self.closed = False
        self._loaded: dict[str, ModelHandle] = {}
        self._keep_alive: dict[str, float] = {}

    @property
    def requests(self) -> list[GenerationRequest]:
        return [record.request for record in self.generations]

    async def load(self, model: ModelHandle, keep_alive: float | None = None) -> float:
        self.loads.append(model)
        self.keep_alives.append(keep_alive)
        if self.load_error is not None:
            raise self.load_error
        self._loaded[model.digest] = model
        self._set_keep_alive(model, keep_alive)
        return self.load_seconds

    def _set_keep_alive(self, model: ModelHandle, keep_alive: float | None) -> None:
        if keep_alive is not None:
            self._keep_alive[model.digest] = keep_alive
        else:
            self._keep_alive.setdefault(model.digest, DEFAULT_KEEP_ALIVE)

    async def generate(
        self, model: ModelHandle, request: GenerationRequest
    ) -> AsyncIterator[GenerationEvent]:
        record = GenerationRecord(model, request)
        self.generations.append(record)
        self._set_keep_alive(model, request.keep_alive)
        steps = self.script(model, request) if callable(self.script) else self.script
        try:
            for step in steps:
                if isinstance(step, Delay):
                    await anyio.sleep(step.seconds)
                elif isinstance(step, EngineError):
                    record.failed = True
                    raise step
                else:
                    if isinstance(step, Finished):
                        record.completed = True
                    record.events_sent += 1
                    yield step
            record.completed = True
        except (GeneratorExit, anyio.get_cancelled_exc_class()):
            record.closed_early = not record.completed
            raise
        finally:
            if self._keep_alive.get(model.digest) == 0:
                self._unload(model)

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
        """:func:`fake_vector` of each input, normalized and cut to ``dimensions`` as the
        worker does; one token per word plus two."""
        self.embeds.append(EmbedRecord(model, inputs, truncate, dimensions, keep_alive, normalize, num_ctx))
        self._set_keep_alive(model, keep_alive)
        try:
            if self.embed_error is not None:
                raise self.embed_error
            vectors = np.stack([fake_vector(text) for text in inputs])
            if normalize:
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                if 0 < dimensions < vectors.shape[1]:
                    vectors = vectors[:, :dimensions]
                    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            return Embeddings(vectors, sum(len(text.split()) + 2 for text in inputs))
        finally:
            if self._keep_alive.get(model.digest) == 0:
                self._unload(model)

    async def unload(self, model: ModelHandle) -> None:
        self._unload(model)

    def _unload(self, model: ModelHandle) -> None:
        self.unloads.append(model)
        self._loaded.pop(model.digest, None)
        self._keep_alive.pop(model.digest, None)

    def loaded(self) -> list[LoadedModel]:
        now = time.time()
        return [
            LoadedModel(
                m.name,
                m.digest,
                memory_bytes=1 << 20,
                context_length=4096,
                expires_at=now + self._keep_alive.get(m.digest, DEFAULT_KEEP_ALIVE),
            )
            for m in self._loaded.values()
        ]

    async def close(self) -> None:
        self.closed = True
        self._loaded.clear()


def install_fake_model(
    store: Store,
    name: str = "tiny",
    config: ModelConfig | None = None,
    chat_template: str = FAKE_CHAT_TEMPLATE,
) -> InstalledModel:
    """Install a model whose directory holds only small stand-in files (nothing can run it).

    Enough for everything the HTTP layer reads: the manifest, the config, the chat template.
    """
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp)
        (source / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
        (source / "tokenizer_config.json").write_text(json.dumps({"chat_template": chat_template}))
        (source / "model.safetensors").write_bytes(b"\0" * 64)
        return store.create(parse_name(name), source, config or ModelConfig())
