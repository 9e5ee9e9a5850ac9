"""Announce LLM-bound requests to the engine's admission the moment their headers arrive (pure ASGI)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from aipc_chat.engines import admission

LLM_ROUTES = frozenset({"/v1/chat/completions", "/chat"})  # the POSTs that submit to the LLM


class AnnounceMiddleware:
    """Count a generation request as on its way to the LLM from its first byte until it submits (or ends).

    The count lets the LLM owner, woken by one request, wait for others sent at the same moment (so they prefill
    together) without making a lone request wait. ``submit`` settles the request through a context variable, which
    ``asyncio.to_thread`` carries into the worker thread; the response's end settles it otherwise.
    """

    def __init__(self, app: ASGIApp, arrivals: admission.Arrivals) -> None:
        self.app, self.arrivals = app, arrivals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in LLM_ROUTES:
            await self.app(scope, receive, send)
            return
        arrival = self.arrivals.arrive()
        token = admission.CURRENT.set(arrival)
        try:
            await self.app(scope, receive, send)
        finally:
            arrival.settle()
            admission.CURRENT.reset(token)
