"""``create_app(settings)``: the FastAPI application, its lifespan and its routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from aipc_chat import __version__
from aipc_chat.api import metrics as metrics_routes
from aipc_chat.api.deps import no_lone_surrogates
from aipc_chat.api.errors import install_error_handlers
from aipc_chat.api.metrics import Metrics, MetricsMiddleware
from aipc_chat.api.ratelimit import RateLimiter
from aipc_chat.api.routes import chat, embeddings, health, images, ollama, openai_chat, sdapi, web
from aipc_chat.api.security import ALLOWED_ORIGIN, GuardMiddleware
from aipc_chat.errors import NotFound
from aipc_chat.runtime import Runtime
from aipc_chat.settings import Settings
from aipc_chat.team import SharedRateLimiter
from aipc_chat.users import UserKeys

log = logging.getLogger(__name__)

# Swagger UI and ReDoc, shipped with the package (docs_assets/README.md: versions, sources, licenses) so that /docs
# and /redoc work with no internet; FastAPI's defaults fetch them from a CDN and ReDoc's fonts from Google.
DOCS_ASSETS_URL = "/docs/assets"  # under /docs: open without a key, as the pages are (security.OPEN_PATHS)
DOCS_ASSETS_DIR = Path(str(resources.files("aipc_chat") / "api" / "docs_assets"))
# The docs pages may load nothing from elsewhere, so a page that tried (ReDoc's sidebar logo comes from its CDN; it
# hides itself when refused) sends nothing off the machine; their scripts and styles are inline or ours.
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'self'")
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
               "redoc.standalone.js": "text/javascript", "favicon-32x32.png": "image/png"}


def create_app(settings: Settings, runtime: Runtime | None = None) -> FastAPI:
    """Build the application; the models load in the background once it starts."""
    rt = runtime if runtime is not None else Runtime(settings)
    users = UserKeys(settings.users_file) if settings.users_file is not None else None  # read now: a bad file stops

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt.start_loading()
        yield
        await asyncio.to_thread(rt.close)

    app = FastAPI(title="aipc-chat", version=__version__, lifespan=lifespan,
                  description="Local chat + image server for Intel AI PCs.",
                  dependencies=[Depends(no_lone_surrogates)], docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.runtime = rt
    # in a team, every front end takes from the same buckets (in the shared database)
    app.state.chat_limiter = (SharedRateLimiter(rt.database, settings.chat_rate_per_minute) if rt.team is not None
                              else RateLimiter(settings.chat_rate_per_minute))
    app.state.metrics = metrics = Metrics(rt)
    install_error_handlers(app)
    _add_docs(app)
    for module in (health, chat, openai_chat, images, embeddings, sdapi, ollama, metrics_routes, web):
        app.include_router(module.router)
    # Last added runs first: metrics see every request, the guard refuses before CORS or a route runs.
    app.add_middleware(CORSMiddleware, allow_origin_regex=ALLOWED_ORIGIN.pattern, allow_origins=settings.extra_origins,
                       allow_methods=["*"], allow_headers=["*"], expose_headers=["x-request-id", "retry-after"])
    app.add_middleware(GuardMiddleware, settings=settings, users=users)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` over the package's own copies of their scripts: no CDN, no fonts."""

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '').rstrip('/')}{DOCS_ASSETS_URL}/{name}"

    def openapi_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '').rstrip('/')}{app.openapi_url}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        # validatorUrl None: Swagger UI would otherwise send the schema to validator.swagger.io for a badge
        page = get_swagger_ui_html(openapi_url=openapi_url(request), title=f"{app.title} - Swagger UI",
                                   swagger_js_url=asset(request, "swagger-ui-bundle.js"),
                                   swagger_css_url=asset(request, "swagger-ui.css"),
                                   swagger_favicon_url=asset(request, "favicon-32x32.png"),
                                   swagger_ui_parameters={"validatorUrl": None})
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(openapi_url=openapi_url(request), title=f"{app.title} - ReDoc",
                              redoc_js_url=asset(request, "redoc.standalone.js"),
                              redoc_favicon_url=asset(request, "favicon-32x32.png"), with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(DOCS_ASSETS_URL + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        """One of the docs pages' files (a fixed list: nothing else on disk is reachable)."""
        if name not in DOCS_ASSETS or not (DOCS_ASSETS_DIR / name).is_file():
            raise NotFound("No such file.")
        return FileResponse(DOCS_ASSETS_DIR / name, media_type=DOCS_ASSETS[name],
                            headers={"Cache-Control": "no-cache"})
