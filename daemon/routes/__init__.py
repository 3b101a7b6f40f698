"""The native Ollama API routes, and what every handler shares: the services and name lookup."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from daemon.config import Settings
from daemon.engine import Engine, ModelHandle
from daemon.errors import ApiError
from daemon.lookup import ModelLookup
from registry.names import InvalidName
from registry.store import InstalledModel, Store

INVALID_MODEL_NAME = "invalid model name"


@dataclass(frozen=True)
class Services:
    """What the handlers work with; one per app, kept in ``app.state.services``."""

    settings: Settings
    engine: Engine
    store: Store
    models: ModelLookup  # name → installed model, over ``store``


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def find_model(svc: Services, text: str) -> InstalledModel | None:
    """The installed model a request names, or None; an invalid name is a 400."""
    try:
        return await svc.models.find(text.strip())
    except InvalidName:
        raise ApiError(INVALID_MODEL_NAME) from None


def model_handle(model: InstalledModel) -> ModelHandle:
    return ModelHandle(name=model.display, digest=model.digest, path=model.path)


def _get_only(route: Route) -> Route:
    # Starlette answers HEAD wherever it answers GET; gin (Ollama) only where a route says so.
    route.methods = {"GET"}
    return route


def routes() -> list[BaseRoute]:
    from daemon.routes import chat, create, generate, manage, models, ps, pull
    from daemon.routes.embed import ROUTES as EMBED_ROUTES

    return [
        Route("/", models.root, methods=["GET", "HEAD"]),
        Route("/api/version", models.version, methods=["GET", "HEAD"]),
        Route("/api/tags", models.tags, methods=["GET", "HEAD"]),
        Route("/api/show", models.show, methods=["POST"]),
        _get_only(Route("/api/status", models.status, methods=["GET"])),
        _get_only(Route("/api/ps", ps.ps, methods=["GET"])),
        Route("/api/generate", generate.generate, methods=["POST"]),
        Route("/api/chat", chat.chat, methods=["POST"]),
        *EMBED_ROUTES,
        Route("/api/create", create.create, methods=["POST"]),
        Route("/api/pull", pull.pull, methods=["POST"]),
        Route("/api/push", pull.push, methods=["POST"]),
        Route("/api/copy", manage.copy, methods=["POST"]),
        Route("/api/delete", manage.delete, methods=["DELETE"]),
        Route("/api/blobs/{digest}", manage.head_blob, methods=["HEAD"]),
        Route("/api/blobs/{digest}", manage.post_blob, methods=["POST"]),
    ]
