"""The messages that cross the daemon↔worker boundary, and nothing else.

Both sides import this module; it must never import MLX. Commands travel daemon → worker
as one JSON object per line on the worker's stdin. Events travel worker → daemon through
the event transport (shared-memory ring or stdout), one encoded event per frame.

Events are small JSON objects with a one-letter ``t`` key so that the per-token encoding
stays cheap (one ``orjson.dumps`` of a three-key dict).
"""

from __future__ import annotations

import base64
from typing import Any, Literal, TypedDict, cast

import orjson

# ---------------------------------------------------------------------------- commands


class SamplingOptions(TypedDict, total=False):
    """Generation options the worker understands (already validated by the daemon)."""

    num_predict: int  # -1: until EOS or the context is full
    temperature: float
    top_p: float
    top_k: int
    seed: int  # -1: random
    stop: list[str]
    num_ctx: int
    min_p: float
    typical_p: float  # 1.0: off
    repeat_penalty: float  # 1.0: off
    repeat_last_n: int  # 0: off, -1: num_ctx
    presence_penalty: float
    frequency_penalty: float
    num_keep: int  # tokens kept at the start when the context shifts


class ChatMessage(TypedDict, total=False):
    role: str
    content: str
    thinking: str
    tool_calls: list[dict[str, Any]]  # Ollama's shape: {"function": {"name", "arguments": {...}}}
    tool_name: str
    tool_call_id: str


class GenerateCommand(TypedDict, total=False):
    """Start one generation. ``messages`` are rendered with the model's chat template;
    with ``raw`` the ``prompt`` is tokenized as is. ``context`` holds token ids that are
    prepended to the rendered prompt (the deprecated ``/api/generate`` ``context``)."""

    op: Literal["generate"]
    id: int
    messages: list[ChatMessage]
    prompt: str
    raw: bool
    context: list[int]
    options: SamplingOptions
    return_context: bool
    template: str  # an Ollama (Go) template used instead of the tokenizer's chat template
    suffix: str  # fill-in-the-middle: the text after the insertion point
    format: Any  # "json" or a JSON Schema object: the output is constrained to it
    tools: list[dict[str, Any]]  # Ollama tool definitions, handed to the chat template
    think: bool | str  # absent: the model's default; a level string counts as true
    truncate: bool  # False: a prompt over num_ctx is an error instead of dropping old messages
    shift: bool  # False: no context shift; generation stops when the context is full
    logprobs: bool  # send each generated token's log-probability (LOGPROBS events)
    top_logprobs: int  # with logprobs: also the n most likely tokens at each step (0–20)
    render_only: bool  # one TEXT event with the prompt as the model would see it, then DONE
    stream: bool  # False: only the whole answer is wanted; events are flushed less often


class EmbedCommand(TypedDict, total=False):
    """Embed a batch of texts with an encoder model; one ``VECTORS`` event answers.

    Each vector is the model's sentence embedding (its pooling, and its ``Normalize`` module
    when it has one); with ``normalize`` (the default) it is then L2-normalized, cut to
    ``dimensions`` when 0 < ``dimensions`` < its length, and normalized again, as Ollama's
    ``/api/embed`` does. Without ``truncate`` an input longer than the model's limit (or
    ``num_ctx`` when smaller) fails the whole command with a 400."""

    op: Literal["embed"]
    id: int
    inputs: list[str]
    truncate: bool  # default True
    dimensions: int  # default 0: all of them
    normalize: bool  # default True; False: the model's own output (legacy /api/embeddings)
    num_ctx: int  # default 0: the model's own limit


class CancelCommand(TypedDict):
    op: Literal["cancel"]
    id: int


class ShutdownCommand(TypedDict):
    op: Literal["shutdown"]


Command = GenerateCommand | CancelCommand | ShutdownCommand | EmbedCommand


def encode_command(command: Command) -> bytes:
    """One command as a JSON line."""
    return orjson.dumps(command) + b"\n"


def decode_command(line: bytes) -> Command:
    obj = orjson.loads(line)
    if not isinstance(obj, dict) or obj.get("op") not in ("generate", "cancel", "shutdown", "embed"):
        raise ValueError(f"not a worker command: {line[:80]!r}")
    return obj  # type: ignore[return-value]


# ---------------------------------------------------------------------------- events

# Event tags (the ``t`` key).
READY = "r"  # model loaded and warmed up: {"t","info"}
LOADING = "p"  # a step of the load finished (weights read, a warm-up done): {"t"}
TEXT = "x"  # a text delta of one request: {"t","id","s"}
THINKING = "h"  # a delta of the model's reasoning: {"t","id","s"}
TOOL_CALLS = "c"  # parsed tool calls: {"t","id","calls"}
DONE = "d"  # a request finished: {"t","id","stats"}
ERROR = "e"  # a request (id >= 0) or the worker (id == -1) failed: {"t","id","msg","status"}
VECTORS = "v"  # the answer to an embed command: {"t","id","n","dim","data"}
LOGPROBS = "l"  # log-probabilities of tokens, sent before the text they belong to: {"t","id","lp"}


class ModelInfo(TypedDict, total=False):
    """What the worker reports once the model is loaded."""

    load_seconds: float
    context_length: int
    vocab_size: int
    eos_token_ids: list[int]
    memory_bytes: int  # resident size of the weights
    device: str
    kind: str  # "encoder" for an embedding model; absent for a generative one
    embedding_length: int  # an encoder's vector size


class DoneStats(TypedDict, total=False):
    done_reason: str  # "stop" | "length" | "cancel"
    prompt_eval_count: int
    prompt_eval_duration_ns: int
    eval_count: int
    eval_duration_ns: int
    context: list[int]


class ReadyEvent(TypedDict):
    t: Literal["r"]
    info: ModelInfo


class LoadingEvent(TypedDict):
    t: Literal["p"]


class TextEvent(TypedDict):
    t: Literal["x"]
    id: int
    s: str


class ThinkingEvent(TypedDict):
    t: Literal["h"]
    id: int
    s: str


class ToolCallsEvent(TypedDict):
    t: Literal["c"]
    id: int
    calls: list[dict[str, Any]]  # Ollama's ToolCall shape


class Logprob(TypedDict, total=False):
    """Ollama's shape (and OpenAI's): the token's text, its log-probability, its UTF-8
    bytes and, when asked for, the most likely alternatives in the same shape."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[Logprob]


class LogprobsEvent(TypedDict):
    t: Literal["l"]
    id: int
    lp: list[Logprob]


class DoneEvent(TypedDict):
    t: Literal["d"]
    id: int
    stats: DoneStats


class ErrorEvent(TypedDict):
    t: Literal["e"]
    id: int
    msg: str
    status: int


class VectorsEvent(TypedDict):
    t: Literal["v"]
    id: int
    n: int  # tokens embedded, all inputs together (prompt_eval_count)
    dim: int  # values per vector
    data: str  # base64 of the little-endian float32 values, one vector after another


Event = (
    ReadyEvent
    | LoadingEvent
    | TextEvent
    | ThinkingEvent
    | ToolCallsEvent
    | LogprobsEvent
    | DoneEvent
    | ErrorEvent
    | VectorsEvent
)

WORKER_ID = -1  # the ``id`` of an error that concerns the whole worker, not one request


def ready(info: ModelInfo) -> bytes:
    return orjson.dumps({"t": READY, "info": info})


def loading() -> bytes:
    return orjson.dumps({"t": LOADING})


def text(request_id: int, delta: str) -> bytes:
    return orjson.dumps({"t": TEXT, "id": request_id, "s": delta})


def thinking(request_id: int, delta: str) -> bytes:
    return orjson.dumps({"t": THINKING, "id": request_id, "s": delta})


def tool_calls(request_id: int, calls: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"t": TOOL_CALLS, "id": request_id, "calls": calls})


def logprobs(request_id: int, entries: list[Logprob]) -> bytes:
    return orjson.dumps({"t": LOGPROBS, "id": request_id, "lp": entries})


def done(request_id: int, stats: DoneStats) -> bytes:
    return orjson.dumps({"t": DONE, "id": request_id, "stats": stats})


def error(request_id: int, message: str, status: int = 500) -> bytes:
    return orjson.dumps({"t": ERROR, "id": request_id, "msg": message, "status": status})


def vectors(request_id: int, values: bytes, dim: int, tokens: int) -> bytes:
    """``values``: little-endian float32, ``dim`` per vector."""
    data = base64.b64encode(values).decode("ascii")
    return orjson.dumps({"t": VECTORS, "id": request_id, "n": tokens, "dim": dim, "data": data})


def decode_event(payload: bytes) -> Event:
    obj: Any = orjson.loads(payload)
    tags = (READY, LOADING, TEXT, THINKING, TOOL_CALLS, LOGPROBS, DONE, ERROR, VECTORS)
    if not isinstance(obj, dict) or obj.get("t") not in tags:
        raise ValueError(f"not a worker event: {payload[:80]!r}")
    return cast(Event, obj)
