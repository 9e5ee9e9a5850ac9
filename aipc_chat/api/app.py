"""``create_app(settings)``: the FastAPI application, its lifespan and its routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from aipc_chat import __version__
from aipc_chat.api import metrics as metrics_routes
from aipc_chat.api.deps import no_lone_surrogates
from aipc_chat.api.errors import install_error_handlers
from aipc_chat.api.metrics import Metrics, MetricsMiddleware
from aipc_chat.api.ratelimit import RateLimiter
from aipc_chat.api.routes import chat, embeddings, health, images, ollama, openai_chat, sdapi, web
from aipc_chat.api.security import ALLOWED_ORIGIN, GuardMiddleware
from aipc_chat.runtime import Runtime
from aipc_chat.settings import Settings
from aipc_chat.users import UserKeys

log = logging.getLogger(__name__)


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
                  dependencies=[Depends(no_lone_surrogates)])
    app.state.settings = settings
    app.state.runtime = rt
    app.state.chat_limiter = RateLimiter(settings.chat_rate_per_minute)
    app.state.metrics = metrics = Metrics(rt)
    install_error_handlers(app)
    for module in (health, chat, openai_chat, images, embeddings, sdapi, ollama, metrics_routes, web):
        app.include_router(module.router)
    # Last added runs first: metrics see every request, the guard refuses before CORS or a route runs.
    app.add_middleware(CORSMiddleware, allow_origin_regex=ALLOWED_ORIGIN.pattern, allow_origins=settings.extra_origins,
                       allow_methods=["*"], allow_headers=["*"], expose_headers=["x-request-id", "retry-after"])
    app.add_middleware(GuardMiddleware, settings=settings, users=users)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
