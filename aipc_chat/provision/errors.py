"""Exceptions shared by the demo-model provisioning helpers."""

from __future__ import annotations


class DemoModelError(RuntimeError):
    """A demo model could not be built, loaded or failed its self-test."""
