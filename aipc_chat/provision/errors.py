"""Exceptions shared by the demo-model provisioning helpers (they belong to the one tree in ``aipc_chat.errors``)."""

from __future__ import annotations

from aipc_chat.errors import DemoModelError

__all__ = ["DemoModelError"]
