"""``/``, ``/api/version``, ``/api/tags`` and ``/api/show`` (reference §4.1–§4.3, §4.5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from daemon import OLLAMA_COMPAT_VERSION
from daemon.capabilities import capabilities
from daemon.errors import ApiError
from daemon.ndjson import JSONResponse
from daemon.routes import INVALID_MODEL_NAME, find_model, services
from daemon.schemas import ShowBody
from registry.model_dir import chat_template as tokenizer_chat_template
from registry.modelfile import render_modelfile, render_parameters
from registry.names import InvalidName, parse_name
from registry.store import InstalledModel, ModelConfig, Store

# Keys Ollama removes from model_info; arrays longer than this become [] unless verbose.
_HIDDEN_INFO_KEYS = ("general.name", "tokenizer.chat_template")
_MAX_INFO_ARRAY = 5


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    return JSONResponse({"version": OLLAMA_COMPAT_VERSION})


async def status(request: Request) -> Response:
    """``GET /api/status``: the cloud features (ollama.com models, web search, sign-in) are
    off here, as a server whose environment disabled them reports it."""
    return JSONResponse({"cloud": {"disabled": True, "source": "env"}})


def local_time(stamp: datetime) -> str:
    """RFC 3339 in local time with its offset, as Ollama writes ``modified_at``."""
    return stamp.astimezone().isoformat()


def details(config: ModelConfig, with_lengths: bool) -> dict[str, Any]:
    """ModelDetails: six keys always present; the lengths (``/api/tags`` only) when known."""
    out: dict[str, Any] = {
        "parent_model": config.parent_model,
        "format": config.format,
        "family": config.family,
        "families": config.families,
        "parameter_size": config.parameter_size,
        "quantization_level": config.quantization_level,
    }
    if with_lengths:
        if config.context_length:
            out["context_length"] = config.context_length
        if config.embedding_length:
            out["embedding_length"] = config.embedding_length
    return out


def tag_entry(model: InstalledModel) -> dict[str, Any]:
    """One model of ``/api/tags``; its capabilities are the ones requests are checked against."""
    entry: dict[str, Any] = {
        "name": model.display,
        "model": model.display,
        "modified_at": local_time(model.modified_at),
        "size": model.size,
        "digest": model.digest,
        "details": details(model.config, with_lengths=True),
    }
    found = capabilities(model)
    if found:
        entry["capabilities"] = found
    return entry


def _tag_entries(store: Store) -> list[dict[str, Any]]:
    return [tag_entry(model) for model in store.list()]


async def tags(request: Request) -> Response:
    # Capabilities may read a model's tokenizer files the first time: off the event loop.
    entries = await run_in_threadpool(_tag_entries, services(request).store)
    return JSONResponse({"models": entries})


async def show(request: Request) -> Response:
    body = await ShowBody.read(request)
    if not body.model:
        raise ApiError("model is required")
    try:
        name = parse_name(body.model.strip())
    except InvalidName:
        raise ApiError(INVALID_MODEL_NAME) from None
    model = await find_model(services(request), body.model)
    if model is None:
        raise ApiError(f"model '{name.display()}' not found", 404)
    return JSONResponse(await run_in_threadpool(show_response, model, body))


def show_response(model: InstalledModel, body: ShowBody) -> dict[str, Any]:
    """``api.ShowResponse``; empty strings and lists are omitted, ``model_info`` never is.

    The request's ``system`` replaces the model's; its ``options`` appear in the Modelfile
    but not in ``parameters`` (as in Ollama)."""
    config = model.config
    out: dict[str, Any] = {
        "license": "\n".join(config.license),
        "modelfile": render_modelfile(model, system=body.system, parameters=body.options),
        "parameters": render_parameters(config.parameters),
        "template": config.template or tokenizer_chat_template(model.path),
        "system": body.system or config.system,
    }
    out = {key: value for key, value in out.items() if value}
    out["details"] = details(config, with_lengths=False)
    if config.messages:
        out["messages"] = [
            {"role": m.get("role", ""), "content": m.get("content", "")} for m in config.messages
        ]
    out["model_info"] = {
        key: [] if isinstance(value, list) and len(value) > _MAX_INFO_ARRAY and not body.verbose else value
        for key, value in config.model_info.items()
        if key not in _HIDDEN_INFO_KEYS
    }
    found = capabilities(model)
    if found:
        out["capabilities"] = found
    out["modified_at"] = local_time(model.modified_at)
    return out
