"""The Starlette application: routes, error handling, and the engine's lifetime."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from daemon.config import Settings
from daemon.engine import Engine, EngineError
from daemon.errors import ApiError, CatchAllMiddleware, api_error_handler, http_exception_handler
from daemon.lookup import ModelLookup
from daemon.middleware import hygiene_middleware
from daemon.openai import routes as openai_routes
from daemon.routes import Services, routes
from daemon.shutdown import Drain, ShutdownMiddleware
from registry.pull import Puller
from registry.store import Store


def create_app(settings: Settings, engine: Engine, store: Store, drain: Drain | None = None) -> Starlette:
    """The Ollama-compatible HTTP API over ``engine`` and ``store``.

    The engine is closed (every worker stopped) when the application shuts down. ``drain``
    (kept in ``app.state.drain``) refuses new work and bounds running requests once the
    server begins to shut down.
    """
    drain = Drain() if drain is None else drain

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(app.state.puller.close)
            await engine.close()

    app = Starlette(
        routes=[*routes(), *openai_routes()],
        middleware=[
            Middleware(ShutdownMiddleware, drain=drain),
            Middleware(CatchAllMiddleware),
            *hygiene_middleware(settings),
        ],
        exception_handlers={
            ApiError: api_error_handler,
            EngineError: api_error_handler,
            HTTPException: http_exception_handler,
        },
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # TrailingSlashMiddleware redirects as gin does
    app.state.services = Services(settings=settings, engine=engine, store=store, models=ModelLookup(store))
    app.state.drain = drain
    app.state.puller = Puller(store)  # replaceable (tests point it at a fake hub)
    return app
