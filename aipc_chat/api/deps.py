"""Dependencies shared by the routes."""

from __future__ import annotations

from fastapi import Request

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
