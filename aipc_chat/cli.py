"""The ``aipc-chat`` command: ``serve``, ``demo-models`` (and, with later issues, ``download``, ``convert``).

It is the cross-platform interface (the Makefile is a convenience over it). Heavy libraries are imported only by
the subcommand that needs them, so ``aipc-chat --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from aipc_chat import __version__
from aipc_chat.errors import ModelSetupError
from aipc_chat.settings import Settings

log = logging.getLogger("aipc_chat")


def _settings(overrides: dict[str, Any]) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _setup_logging(level: str) -> None:
    from aipc_chat.api.security import RequestIdFilter

    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)-7s %(name)s [%(request_id)s]: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the models and serve the API."""
    settings = _settings({"demo": True if args.demo else None, "host": args.host, "port": args.port,
                          "log_level": args.log_level})
    _setup_logging(settings.log_level)
    from aipc_chat.runtime import Runtime

    runtime = Runtime(settings)
    if settings.demo:
        build_demo_models(settings, force=False)
    runtime.check()
    import uvicorn

    from aipc_chat.api.app import create_app

    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        log.warning("Binding %s without AIPC_API_KEY: anyone on the network can use this server. Add the names "
                    "clients use to AIPC_ALLOWED_HOSTS.", settings.host)
    uvicorn.run(create_app(settings, runtime), host=settings.host, port=settings.port,
                log_level=settings.log_level, timeout_graceful_shutdown=30)
    return 0


def build_demo_models(settings: Settings, *, force: bool, only: str | None = None) -> None:
    """Build the tiny demo models (offline, idempotent) into ``<models_dir>/demo``."""
    from aipc_chat.provision.demo_image import build_demo_image
    from aipc_chat.provision.demo_llm import build_demo_llm

    if only in (None, "llm"):
        build_demo_llm(settings.demo_models_dir / "llm", force=force)
    if only in (None, "image"):
        build_demo_image(settings.demo_models_dir / "image", force=force)


def cmd_demo_models(args: argparse.Namespace) -> int:
    """Build the demo models."""
    settings = _settings({"models_dir": args.models_dir})
    _setup_logging(settings.log_level)
    build_demo_models(settings, force=args.force, only=args.only)
    print(f"Demo models ready in {settings.demo_models_dir}")  # noqa: T201 - the command's own output
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="aipc-chat", description="Local chat + image server for Intel AI PCs.")
    parser.add_argument("--version", action="version", version=f"aipc-chat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API (configure with AIPC_* environment variables)")
    serve.add_argument("--demo", action="store_true", help="serve the demo models (built if missing)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo-models", help="build the tiny offline demo models")
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.add_argument("--only", choices=["llm", "image"], help="build only one of them")
    demo.add_argument("--models-dir", help="models folder (default AIPC_MODELS_DIR or models/)")
    demo.set_defaults(func=cmd_demo_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``aipc-chat``."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ModelSetupError as exc:
        print(f"aipc-chat: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except ValidationError as exc:
        print(f"aipc-chat: invalid configuration:\n{exc}", file=sys.stderr)  # noqa: T201
        return 2
    return code
