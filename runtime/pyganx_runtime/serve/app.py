"""The ASGI application behind ``pyganx serve`` (Starlette; uvicorn runs it).

Endpoints (../shared/contracts.md): ``POST /v1/translate/{model}[?domain=NAME]``,
``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus text format), the
web page at ``GET /``, the Open Inference Protocol's ``/v2`` endpoints (v2.py) and
their OpenAPI description at ``GET /openapi.json`` (openapi.py).
Every error is JSON ``{"error": "..."}`` with its status code; no traceback ever
reaches a client (unexpected errors are logged on the server and answered 500).
Decisions are written down in docs/serve.md.

The pieces: ``routes`` (the handlers), ``limits`` (token, upload size, pixels, queue),
``models`` (loading, the ``/v1/models`` entries), ``metrics``, ``v2`` and ``v2_codec``
(the Open Inference Protocol); this module puts them together.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .config import ServeConfig
from .limits import ServeError
from .models import Model
from .openapi import describe
from .routes import STATIC, Routes
from .v2 import V2Routes

log = logging.getLogger("pyganx.serve")


async def _serve_error(_request: Request, e: Exception) -> Response:
    assert isinstance(e, ServeError)
    return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)


async def _http_error(_request: Request, e: Exception) -> Response:
    assert isinstance(e, HTTPException)
    return JSONResponse({"error": e.detail}, status_code=e.status_code, headers=e.headers)


async def _internal_error(request: Request, e: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=e)
    return JSONResponse({"error": "internal error (the server's log has the details)"}, status_code=500)


def create_app(models: dict[str, Model], config: ServeConfig) -> Starlette:
    """The service for models loaded by ``load_models``."""
    routes = Routes(models, config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        for m in models.values():
            m.batcher.start()
        routes.ready = True
        try:
            yield
        finally:
            routes.ready = False
            for m in models.values():
                await m.batcher.stop()

    v2 = V2Routes(routes)
    description = describe(list(models))

    async def openapi(_request: Request) -> Response:
        return JSONResponse(description)

    table = [
        Route("/", routes.index),
        Route("/healthz", routes.healthz),
        Route("/metrics", routes.metrics_page),
        Route("/v1/models", routes.list_models),
        Route("/v1/translate/{model}", routes.translate, methods=["POST"]),
        Route("/openapi.json", openapi),
        Route("/v2", v2.server_metadata),
        Route("/v2/health/live", v2.live),
        Route("/v2/health/ready", v2.ready),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        table += [Route(model, v2.model_metadata), Route(model + "/ready", v2.model_ready),
                  Route(model + "/infer", v2.infer, methods=["POST"])]
    handlers = {ServeError: _serve_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=table, exception_handlers=handlers, lifespan=lifespan)
    app.state.models = models
    return app


__all__ = ["create_app"]
