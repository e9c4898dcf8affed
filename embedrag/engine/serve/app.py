"""The ASGI application: the API routes, the web pages, auth, limits and error shapes."""

from __future__ import annotations

import contextlib
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedrag.engine.serve.guards import (
    APIError,
    BodyLimit,
    bearer_token_matches,
    error_body,
    logger,
    validation_message,
)

if TYPE_CHECKING:
    from embedrag.engine.serve.state import ServerState

# The page's own files, read once; nothing else on disk is ever served.
PAGES = {"/": "index.html", "/report": "report.html"}
ASSETS = {"app.js": "text/javascript", "report.js": "text/javascript", "style.css": "text/css",
          "common.js": "text/javascript"}
SECURITY_HEADERS = {
    # Everything the page needs ships with it: no CDN, no inline script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(state: ServerState) -> FastAPI:
    """The app over a loaded :class:`ServerState`; its lifespan starts and stops the batcher."""
    from embedrag._version import __version__
    from embedrag.engine.serve.api import router

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(title="embedrag", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.embedrag = state
    app.include_router(router, dependencies=[Depends(_authorized)])
    _add_error_handlers(app)
    _add_pages(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        retriever = state.retriever
        return {"status": "ok", "model": state.model_name, "dimension": state.encoder.dimension,
                "table": state.config.table if retriever else None,
                "rows": await _rows(retriever),
                "search": None if retriever is None else "memory" if retriever.memory is not None else "lancedb",
                "generator": state.generator.name if state.generator else "none",
                "auth": state.config.auth_required, "uptime_s": round(time.time() - state.started, 1),
                "batching": {"enabled": state.config.batching.enabled,
                             **(state.batcher.stats.to_dict() if state.batcher else {})}}

    app.add_middleware(BodyLimit, max_bytes=state.config.limits.max_body_bytes)
    return app


async def _rows(retriever) -> int | None:
    if retriever is None:
        return None
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(retriever.table.count_rows)


async def _authorized(request: Request) -> None:
    config = request.app.state.embedrag.config
    if config.auth_required and not bearer_token_matches(request.headers.get("authorization"), config.api_key):
        raise APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                       code="invalid_api_key")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(error_body(message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        from embedrag.engine.core.errors import EmbedragError, machine_error_message

        if isinstance(exc, EmbedragError):
            return JSONResponse(error_body(str(exc)), status_code=400)
        message = machine_error_message(exc) or f"internal error: {type(exc).__name__}"
        logger.exception("request to %s failed", request.url.path)
        return JSONResponse(error_body(message, kind="server_error"), status_code=500)


def _asset(name: str) -> bytes:
    return resources.files("embedrag.engine.serve").joinpath("static", name).read_bytes()


def _add_pages(app: FastAPI) -> None:
    files = {name: _asset(name) for name in (*PAGES.values(), *ASSETS)}

    for path, name in PAGES.items():
        app.add_api_route(path, _page(files[name]), methods=["GET"], include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            raise APIError(404, f"no such file: /static/{name}", code="not_found")
        return Response(files[name], media_type=ASSETS[name],
                        headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})


def _page(content: bytes):
    def page() -> Response:
        return Response(content, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    return page
