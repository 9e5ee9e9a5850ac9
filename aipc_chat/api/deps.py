"""Dependencies shared by the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from aipc_chat.engines.contract import Arrival
from aipc_chat.runtime import Runtime
from aipc_chat.settings import Settings


def get_runtime(request: Request) -> Runtime:
    """The process's engines."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def arrival(request: Request) -> AsyncIterator[Arrival]:
    """Announce a request bound for the LLM to its admission, from before its body is validated until it
    submits (``submit`` settles it) or the handler ends (settled here, e.g. after a 4xx).

    Declared first among a route's parameters, it resolves before the body is validated; the route hands it to
    ``submit`` explicitly.
    """
    handle = get_runtime(request).arrivals.arrive()
    try:
        yield handle
    finally:
        handle.settle()


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ArrivalDep = Annotated[Arrival, Depends(arrival, scope="function")]
