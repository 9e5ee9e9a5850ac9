"""Dependencies shared by the routes."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request

from aipc_chat.api.security import USER_SCOPE_KEY
from aipc_chat.engines.contract import Arrival
from aipc_chat.errors import Forbidden, InvalidRequest
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


def get_caller(request: Request) -> str | None:
    """The user whose key made the request (AIPC_USERS_FILE), or None when users are not separated."""
    user: str | None = request.scope.get(USER_SCOPE_KEY)
    return user


def act_as(caller: str | None, user_id: str) -> None:
    """Refuse acting as ``user_id`` with another user's key (403); anyone may when users are not separated."""
    if caller is not None and caller != user_id:
        raise Forbidden(f"This key belongs to user '{caller}'; it cannot act as '{user_id}'.", param="user_id")


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


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # \ud800-\udfff, either case


async def no_lone_surrogates(request: Request) -> None:
    """Refuse a JSON body holding a lone UTF-16 surrogate (``"\\ud800"``): Python's JSON parser accepts it, but
    the text cannot be encoded as UTF-8 for the model (a 500, before this check). The 400 names the field.

    Cheap for everyone else: the body is only parsed again when it holds a surrogate escape at all.
    """
    form = request.headers.get("content-type", "").startswith(("multipart/", "application/x-www-form-urlencoded"))
    if request.method not in ("POST", "PUT", "PATCH") or form:
        return  # a form (/v1/images/edits) is parsed, and its stream consumed, by the route itself
    body = await request.body()  # Starlette keeps it: the route's own parsing reads it again for free
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        data = json.loads(body)
    except ValueError:
        return  # the route's own body parsing answers that
    where = _lone_surrogate(data, "")
    if where is not None:
        raise InvalidRequest(f"{where or 'The body'} holds a lone UTF-16 surrogate (\\ud800-\\udfff without its "
                             "pair): send valid Unicode text.", param=where or None)


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The dotted path of the first string (or key) that is not valid Unicode, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and _lone_surrogate(key, where) is not None:
            return where
        found = _lone_surrogate(item, where)
        if found is not None:
            return found
    return None


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CallerDep = Annotated[str | None, Depends(get_caller)]
ArrivalDep = Annotated[Arrival, Depends(arrival, scope="function")]
