"""``POST /api/embed`` and the legacy ``POST /api/embeddings`` (reference §4.8, §4.9).

Both follow Ollama's handlers step by step: decode the body, check the name, the ``input``,
find the model, merge the options, load (an empty input only loads), then embed. There is
no capability check, as in Ollama: a generative model is loaded and answers Ollama's 501
from its worker. Vectors are float32; ``/api/embed`` prints them as Go prints a float32
(shortest form), the legacy route as float64 of the same values, as Ollama does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.durations import go_quote
from daemon.engine import EngineError, ModelHandle
from daemon.errors import ApiError
from daemon.ndjson import JSON_MEDIA_TYPE
from daemon.options import OptionError, resolve_options
from daemon.routes import Services, find_model, model_handle, services
from daemon.schemas import Fields, read_json
from registry.store import InstalledModel

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

INVALID_INPUT = "invalid input type"
MODEL_REQUIRED = "model is required"


def not_found(name: str) -> ApiError:
    """The embed routes' own wording for a model that is not installed."""
    return ApiError(f"model {go_quote(name)} not found, try pulling it first", 404)


def inputs_of(value: Any) -> list[str]:
    """``input``: a string (``""`` is no input) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise ApiError(INVALID_INPUT)


def json_response(content: dict[str, Any]) -> Response:
    """Like ``daemon.ndjson.JSONResponse``; numpy arrays print as their own dtype does."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON_MEDIA_TYPE)


def as_json(vectors: npt.NDArray[np.float32], dtype: str = "float32") -> npt.NDArray[Any]:
    """Vectors that orjson prints: C-contiguous, float32 (shortest float32 text) or float64."""
    import numpy as np  # the daemon imports numpy only once embeddings are asked for

    return np.ascontiguousarray(vectors, dtype=dtype)


async def _model(svc: Services, name: str) -> InstalledModel:
    model = await find_model(svc, name)
    if model is None:
        raise not_found(name)
    return model


def _num_ctx(svc: Services, model: InstalledModel, fields: Fields) -> int:
    """``num_ctx`` after the usual merge (defaults, Modelfile, request); a bad option is
    Ollama's 500."""
    requested = fields.mapping("options")
    try:
        options = resolve_options(svc.settings.context_length, model.config.parameters, requested)
    except OptionError as exc:
        raise ApiError(str(exc), 500) from None
    return options.num_ctx


async def _load(svc: Services, handle: ModelHandle, keep_alive: float | None, started_ns: int) -> int:
    """Load the model; ``load_duration`` in nanoseconds, never less than the wait for it."""
    seconds = await svc.engine.load(handle, keep_alive)
    return max(int(seconds * 1_000_000_000), time.perf_counter_ns() - started_ns)


async def embed(request: Request) -> Response:
    started = time.perf_counter_ns()
    fields = await read_json(request, "EmbedRequest")
    name = fields.string("model")
    truncate = fields.boolean("truncate", default=True)
    dimensions = fields.integer("dimensions")
    keep_alive = fields.keep_alive()
    fields.mapping("options")  # its type is checked with the rest of the body
    if not name.strip():
        raise ApiError(f"model '{name}' not found", 404)
    inputs = inputs_of(fields.raw("input"))
    svc = services(request)
    model = await _model(svc, name)
    num_ctx = _num_ctx(svc, model, fields)
    handle = model_handle(model)
    load_ns = await _load(svc, handle, keep_alive, started)
    if not inputs:
        return json_response({"model": name, "embeddings": []})
    result = await svc.engine.embed(handle, inputs, truncate, dimensions, keep_alive, num_ctx=num_ctx)
    body: dict[str, Any] = {"model": name, "embeddings": as_json(result.vectors)}
    metrics = (
        ("total_duration", time.perf_counter_ns() - started),
        ("load_duration", load_ns),
        ("prompt_eval_count", result.prompt_eval_count),
    )
    body.update((key, value) for key, value in metrics if value)
    return json_response(body)


async def embeddings(request: Request) -> Response:
    """The legacy route: one ``prompt``, the model's own vector (not normalized again),
    runner errors as 500s."""
    fields = await read_json(request, "EmbeddingRequest")
    started = time.perf_counter_ns()
    name = fields.string("model")
    prompt = fields.string("prompt")
    keep_alive = fields.keep_alive()
    fields.mapping("options")
    if not name.strip():
        raise ApiError(MODEL_REQUIRED)
    svc = services(request)
    model = await _model(svc, name)
    num_ctx = _num_ctx(svc, model, fields)
    handle = model_handle(model)
    await _load(svc, handle, keep_alive, started)
    if not prompt:
        return json_response({"embedding": []})
    try:
        result = await svc.engine.embed(
            handle, [prompt], truncate=False, keep_alive=keep_alive, normalize=False, num_ctx=num_ctx
        )
    except EngineError as exc:
        raise EngineError(exc.message, 500) from None
    return json_response({"embedding": as_json(result.vectors[0], "float64")})


ROUTES = [
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
