"""The ``aipc-chat`` command: ``serve``, ``doctor``, ``models``, ``download``, ``convert``, ``demo-models``, ...

It is the cross-platform interface (the Makefile is a convenience over it). Heavy libraries are imported only by
the subcommand that needs them, so ``aipc-chat --help`` is instant.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from aipc_chat import __version__
from aipc_chat.errors import DataDirUnwritable, ModelSetupError, PortInUse, StartupError
from aipc_chat.settings import (
    LOG_LEVELS,
    Settings,
    env_name,
    env_set,
    log_level_name,
    problem_lines,
    source_checkout,
    unknown_settings,
)

if TYPE_CHECKING:
    from aipc_chat.runtime import Runtime

log = logging.getLogger("aipc_chat")

OUR_LOGGERS = ("aipc_chat", "uvicorn")
# Libraries that log through handlers of their own (not propagating to ours) read their verbosity from these, once,
# when first imported; a value the user set wins.
LIBRARY_VERBOSITY = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}


def _settings(overrides: dict[str, Any]) -> Settings:
    given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings(**given)
    checkout = _checkout_folders(settings)
    if checkout:
        settings = Settings(**given | checkout)
    if not settings.openvino_telemetry:
        _openvino_telemetry_off()
    return settings


def _checkout_folders(settings: Settings) -> dict[str, Path]:
    """Started in the root of a source checkout: its ``./models`` and ``./data``, as `make` sets them, for the
    folders no flag or environment variable chose (an installed aipc-chat started elsewhere uses the per-user
    folder)."""
    root = source_checkout(Path.cwd())
    if root is None:
        return {}
    return {field: root / field.removesuffix("_dir") for field in ("models_dir", "data_dir")
            if field not in settings.model_fields_set}


def _say_folders(settings: Settings, args: argparse.Namespace) -> None:
    """Which models and data folders this start uses, and what chose each (a flag, a variable, a checkout)."""
    root = source_checkout(Path.cwd())

    def why(field: str) -> str:
        if getattr(args, field, None):
            return f"--{field.replace('_', '-')}"
        if env_set(field):
            return env_name(field)
        if root is not None and getattr(settings, field) == root / field.removesuffix("_dir"):
            return "started in a source checkout: ./" + field.removesuffix("_dir") + ", as `make` sets it"
        return "the per-user folder; set AIPC_" + field.upper() + " or --" + field.replace("_", "-") + " to change it"

    log.info("models folder %s (%s); data folder %s (%s)", settings.models_dir, why("models_dir"),
             settings.data_dir, why("data_dir"))


def _warn_unknown_settings() -> None:
    """Each ``AIPC_`` variable that is no setting, with the closest one: a misspelt name is otherwise ignored."""
    for warning in unknown_settings(os.environ):
        log.warning("%s", warning)


def _openvino_telemetry_off() -> None:
    """Keep OpenVINO's telemetry from writing to the home folder (and from sending anything).

    ``import openvino`` imports its model converter, which starts ``openvino_telemetry``: that writes a client id and
    usage counts to ``~/intel`` (``%LOCALAPPDATA%\\Intel Corporation`` on Windows) and sends events when a model is
    converted, unless a consent file there says no. Everything that uses it (openvino's converter, nncf) falls back to
    a no-op when the package cannot be imported, as if it were not installed; so, before anything imports openvino,
    it is made unimportable in this process. ``AIPC_OPENVINO_TELEMETRY=true`` leaves it to OpenVINO's own consent.
    """
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # None: import raises ImportError


def _from_a_library(record: logging.LogRecord) -> bool:
    """Whether a log record is a third-party library's below ERROR (its chatter, or a warning a user cannot act on)."""
    return record.levelno < logging.ERROR and record.name.split(".")[0] not in OUR_LOGGERS


def _setup_logging(level: str, *, quiet_libraries: bool = False) -> None:
    """Log to stderr at ``level``; with ``quiet_libraries`` (serving), third-party libraries' warnings and info
    lines (Python ``warnings`` included) show only at debug level, their errors always."""
    from aipc_chat.api.security import RequestIdFilter

    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)-7s %(name)s [%(request_id)s]: %(message)s")
    quiet = quiet_libraries and level.lower() != "debug"
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        if quiet:
            handler.addFilter(lambda record: not _from_a_library(record))
    _warn_unknown_settings()  # here, once a handler shows it
    if not quiet_libraries:
        return
    logging.captureWarnings(True)  # Python warnings become records of the `py.warnings` logger, filtered as above
    if quiet:
        for name, value in LIBRARY_VERBOSITY.items():
            os.environ.setdefault(name, value)
    else:
        warnings.simplefilter("default")  # at debug level, deprecations too (once per place)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now (before any model loads) so a taken port is one clear line at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name != "nt":  # as uvicorn does; on Windows SO_REUSEADDR would let two servers share the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
            raise PortInUse(f"Port {port} on {host} is already in use (another aipc-chat?): stop that server, or "
                            f"choose another port with --port or AIPC_PORT.") from None
        raise StartupError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another address with "
                           "--host / --port (AIPC_HOST, AIPC_PORT).") from None
    return sock


def check_data_dir(path: Path) -> None:
    """Create the data folder and write to it once, so a read-only or uncreatable one is one clear line."""
    try:
        (path / "images").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise DataDirUnwritable(f"The data folder {path} cannot be written ({exc.strerror or exc}): fix its "
                                "permissions, free the disk, or choose another with AIPC_DATA_DIR.") from None


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings `serve`'s flags give (``add_serve_options``); None where a flag is not given."""
    return {"demo": True if args.demo else None, "host": args.host, "port": args.port,
            "log_level": args.log_level, "models_dir": args.models_dir, "data_dir": args.data_dir}


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the models and serve the API."""
    settings = _settings(_serve_overrides(args))
    _setup_logging(settings.log_level, quiet_libraries=True)
    _say_folders(settings, args)
    sock = bind(settings.host, settings.port)
    try:
        return _serve(settings, sock)
    finally:
        sock.close()


def _serve(settings: Settings, sock: socket.socket) -> int:
    check_data_dir(settings.data_dir)
    from aipc_chat.runtime import Runtime

    runtime = Runtime(settings)
    runtime.check()
    import uvicorn

    from aipc_chat.api.app import create_app

    unkeyed = settings.api_key is None and settings.users_file is None
    if settings.host not in ("127.0.0.1", "localhost", "::1") and unkeyed:
        log.warning("Binding %s without AIPC_API_KEY or AIPC_USERS_FILE: anyone on the network can use this "
                    "server. Add the names clients use to AIPC_ALLOWED_HOSTS.", settings.host)
    from aipc_chat.api.protocol import guarded_protocol

    server = uvicorn.Server(uvicorn.Config(create_app(settings, runtime), host=settings.host, port=settings.port,
                                           log_level=settings.log_level, timeout_graceful_shutdown=30,
                                           http=guarded_protocol(settings.max_connections)))
    runtime.on_fatal = lambda _: setattr(server, "should_exit", True)
    url = server_url(settings.host, sock.getsockname()[1])

    def loaded() -> None:
        if not server.should_exit:  # not as it stops (Ctrl-C as the last model finished loading)
            _say_ready(runtime, url)

    runtime.on_loaded = loaded
    server.run(sockets=[sock])
    if runtime.fatal:
        raise ModelSetupError(runtime.fatal)
    return 0


def server_url(host: str, port: int) -> str:
    """The address a browser on this machine opens (a wildcard bind is reached through loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _say_ready(runtime: Runtime, url: str) -> None:
    """The one line a person starting the server waits for (called once the models have loaded)."""
    from aipc_chat.runtime import all_ready

    models = runtime.describe()
    if all_ready(models):
        log.info("aipc-chat ready: chat page %s/  API docs %s/docs", url, url)
        return
    missing = ", ".join(f"{kind} ({model['state']})" for kind, model in models.items()
                        if not all_ready({kind: model}))
    log.warning("aipc-chat serving without every model ready: %s, see above and %s/ready; chat page %s/  API docs "
                "%s/docs", missing, url, url, url)


def build_demo_models(settings: Settings, *, force: bool, only: str | None = None) -> None:
    """Build the tiny demo models (offline, idempotent) into ``<models_dir>/demo``: their recipe, which needs the
    ``[convert]`` extra (the package ships them built)."""
    try:
        from aipc_chat.tooling.demo_image import build_demo_image
        from aipc_chat.tooling.demo_llm import build_demo_llm
    except ImportError as exc:
        raise ModelSetupError(f"Building the demo models needs the conversion libraries ({exc.name} is missing): "
                              'pip install "aipc-chat[convert]". The package already ships them built: '
                              "`aipc-chat serve --demo` serves those.") from None

    if only in (None, "llm"):
        build_demo_llm(settings.demo_build_dir / "llm", force=force)
    if only in (None, "image"):
        build_demo_image(settings.demo_build_dir / "image", force=force)


def cmd_demo_models(args: argparse.Namespace) -> int:
    """Build the demo models."""
    settings = _settings({"models_dir": args.models_dir})
    _setup_logging(settings.log_level)
    build_demo_models(settings, force=args.force, only=args.only)
    print(f"Demo models ready in {settings.demo_build_dir}; serve them with "  # noqa: T201 - the command's output
          f"AIPC_DEMO_DIR={settings.demo_build_dir} aipc-chat serve --demo")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch the configured hub models into the models dir (resumes, verifies, writes a manifest)."""
    from aipc_chat.provision.hub import download_model
    from aipc_chat.provision.resolve import choose_model

    settings = _settings({"models_dir": args.models_dir})
    _setup_logging(settings.log_level)
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    kinds = ("llm", "image") if args.kind == "all" else (args.kind,)
    for kind in kinds:
        choice = choose_model(settings, kind)  # type: ignore[arg-type]
        if choice.source != "repo":
            print(f"{kind}: {choice.source} model {choice.name}, nothing to download")  # noqa: T201
            continue
        repo, revision, folder = choice.hub_target()
        download_model(repo, revision, folder, kind=choice.kind, token=token)
        print(f"{kind}: {repo}@{revision} ready in {folder}")  # noqa: T201
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the models `serve` would serve (each role: where it comes from, whether it is there), then the models
    present: source, name, kind, size, verified."""
    from aipc_chat.doctor import served_models
    from aipc_chat.provision.gguf import list_gguf_models
    from aipc_chat.provision.hub import list_models, verify_manifest

    settings = _settings({"demo": True if args.demo else None, "models_dir": args.models_dir})
    served = served_models(settings)
    rows = list_models(settings.models_dir) + list_gguf_models(settings.models_dir)
    if args.full:
        for row in rows:
            if row["source"] in ("hub", "converted"):
                row["problems"] = verify_manifest(Path(row["path"]), full=True)
                row["verified"] = not row["problems"]
    if args.json:
        roles = [{"source": "served", "kind": m.role, "verified": m.problem is None,
                  "problems": [m.problem] if m.problem else [], **asdict(m)} for m in served]
        print(json.dumps(roles + rows, indent=2, default=str))  # noqa: T201
        return 0
    print("Served by `aipc-chat serve` with these settings:")  # noqa: T201
    print(f"{'role':<10} {'present':<8} name")  # noqa: T201
    for model in served:
        present = {True: "yes", False: "no", None: "remote" if model.via == "remote" else "-"}[model.present]
        where = model.endpoint or model.path
        print(f"{model.role:<10} {present:<8} {model.name}  from {model.origin}"  # noqa: T201
              + (f"  ({where})" if where else ""))
        if model.problem:
            fix = f" Run: {model.fix}" if model.fix else ""
            print(f"{'':<20}{model.problem}{fix}")  # noqa: T201
    print(f"\nIn the models folder {settings.models_dir} (and Ollama's store):")  # noqa: T201
    print(f"{'source':<10} {'kind':<6} {'size MB':>9}  {'verified':<9} name")  # noqa: T201
    for row in rows:
        problem = f"  ({row['problems'][0]})" if row.get("problems") else ""
        quantization = f" [{row['architecture']} {row['quantization']}]" if row.get("quantization") else ""
        print(f"{row['source']:<10} {row['kind'] or '?':<6} {row['size_bytes'] / 1e6:>9.1f}  "  # noqa: T201
              f"{'yes' if row['verified'] else 'no':<9} {row['name']}{quantization}{problem}")
    if not rows:
        print(f"No models in {settings.models_dir}. Run `aipc-chat download` or `aipc-chat demo-models`.")  # noqa: T201
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check what `serve` (with the same flags) needs, without starting it: 0 when it would start, else 1."""
    from aipc_chat.doctor import diagnose, render

    try:
        settings: Settings | None = _settings(_serve_overrides(args))
        problem = None
    except ValidationError as exc:
        _openvino_telemetry_off()  # the default: the settings that could turn it on are unreadable
        settings, problem = None, settings_problems(exc)
    report = diagnose(settings, problem)
    print(json.dumps(report.as_dict(), indent=2) if args.json else render(report))  # noqa: T201
    return 0 if report.would_start else 1


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a Hugging Face model (hub id or folder) to OpenVINO IR in <models>/converted."""
    from aipc_chat.provision.convert import convert_model

    settings = _settings({"models_dir": args.models_dir})
    _setup_logging(settings.log_level)
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    out = convert_model(args.model, args.kind, settings.models_dir, weight_format=args.weight_format, name=args.name,
                        group_size=args.group_size, ratio=args.ratio, sym=not args.asym,
                        all_layers=not args.int8_head, token=token,
                        revision=args.revision, overwrite=args.force, self_test=not args.no_self_test)
    print(f"Converted into {out}\nServe it with AIPC_{args.kind.upper()}_PATH={out}")  # noqa: T201
    return 0


def cmd_bench_models(args: argparse.Namespace) -> int:
    """Build the shape-alike benchmark models (real architectures, random weights) into <models>/bench."""
    from aipc_chat.tooling.bench_models import build_bench_image, build_bench_image_torch, build_bench_llm

    settings = _settings({"models_dir": args.models_dir})
    _setup_logging(settings.log_level)
    if args.only in (None, "llm"):
        build_bench_llm(settings.models_dir / "bench" / "llm", force=args.force)
    if args.only in (None, "image"):
        build_bench_image(settings.models_dir / "bench" / "image", force=args.force)
    if args.only == "image-torch" or (args.only is None and args.torch):
        build_bench_image_torch(settings.models_dir / "bench" / "image-torch", force=args.force)
    if args.only == "llm-gguf" or (args.only is None and args.gguf):
        from aipc_chat.tooling.bench_gguf import build_bench_llm_gguf

        build_bench_llm_gguf(settings.models_dir / "bench" / "llm-gguf", force=args.force)
    print(f"Benchmark models ready in {settings.models_dir / 'bench'}")  # noqa: T201
    return 0


def settings_problems(exc: ValidationError) -> str:
    """Every invalid setting in one line: ``AIPC_PORT='abc': takes a whole number; ...``."""
    return "; ".join(problem_lines(exc))


def cmd_users(args: argparse.Namespace) -> int:
    """Add, remove or list the per-user keys of a users file (AIPC_USERS_FILE)."""
    from aipc_chat.users import UsersFileError, add_user, read_users, remove_user

    path = Path(args.file) if args.file else _settings({}).users_file
    if path is None:
        raise UsersFileError("Name the users file with --file or AIPC_USERS_FILE.")
    if args.action != "list" and not args.name:
        raise UsersFileError(f"Name the user: aipc-chat users {args.action} NAME.")
    if args.action == "add":
        key = add_user(path, args.name)
        print(f"Key for {args.name} (shown once; {path} keeps only its sha256):\n{key}")  # noqa: T201
        if _settings({}).users_file is None:
            print(f"Serve with AIPC_USERS_FILE={path}")  # noqa: T201
    elif args.action == "remove":
        removed = remove_user(path, args.name)
        print(f"Removed {removed} key(s) of {args.name} from {path}")  # noqa: T201
        return 0 if removed else 1
    else:
        counts: dict[str, int] = {}
        for entry in read_users(path):
            counts[entry.user] = counts.get(entry.user, 0) + 1
        for user, count in sorted(counts.items()):
            print(f"{user}\t{count} key(s)")  # noqa: T201
    return 0


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """`serve`'s flags (also `doctor`'s, which checks what `serve` would do with them)."""
    parser.add_argument("--demo", action="store_true", help="serve the tiny demo models shipped with the package")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--log-level", type=log_level_name, choices=LOG_LEVELS,
                        help="debug, info, warning (or warn) or error, in any case")
    parser.add_argument("--models-dir", help="models folder (default AIPC_MODELS_DIR or the per-user folder)")
    parser.add_argument("--data-dir", help="history and images (default AIPC_DATA_DIR or the per-user folder)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="aipc-chat", description="Local chat + image server for Intel AI PCs.")
    parser.add_argument("--version", action="version", version=f"aipc-chat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API (configure with AIPC_* environment variables)")
    add_serve_options(serve)
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser("doctor", help="check what `serve` (with the same flags) needs, without starting it: "
                            "versions, devices, models, disk, port, keys; exit 0 when it would start")
    add_serve_options(doctor)
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=cmd_doctor)

    demo = sub.add_parser("demo-models", help="rebuild the tiny offline demo models from their recipe (needs the "
                          "[convert] extra)")
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.add_argument("--only", choices=["llm", "image"], help="build only one of them")
    demo.add_argument("--models-dir", help="models folder (default AIPC_MODELS_DIR or the per-user folder)")
    demo.set_defaults(func=cmd_demo_models)

    download = sub.add_parser("download", help="fetch the configured hub models (AIPC_LLM_REPO, AIPC_IMAGE_REPO)")
    download.add_argument("--kind", choices=["llm", "image", "all"], default="all")
    download.add_argument("--models-dir", help="models folder (default AIPC_MODELS_DIR or the per-user folder)")
    download.set_defaults(func=cmd_download)

    models = sub.add_parser("models", help="list the models `serve` would serve and where each comes from, then the "
                            "models present, their size and whether they verify")
    models.add_argument("--demo", action="store_true", help="as `serve --demo` would serve")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.add_argument("--full", action="store_true", help="re-hash every file against its manifest")
    models.add_argument("--models-dir", help="models folder (default AIPC_MODELS_DIR or the per-user folder)")
    models.set_defaults(func=cmd_models)

    convert = sub.add_parser("convert", help="convert a Hugging Face model to OpenVINO IR (INT4 LLM, FP16/INT8 SD)")
    convert.add_argument("model", help="hub id or local folder of a transformers / diffusers model")
    convert.add_argument("--kind", choices=["llm", "image"], required=True)
    convert.add_argument("--weight-format", choices=["int4", "int8", "fp16", "fp32"],
                         help="default: int4 for an LLM, fp16 for an image pipeline")
    convert.add_argument("--name", help="folder name under <models>/converted")
    convert.add_argument("--group-size", type=int, help="INT4 group size (default 128, or what divides the layers)")
    convert.add_argument("--ratio", type=float, default=1.0, help="share of layers in INT4 (rest INT8)")
    convert.add_argument("--asym", action="store_true",
                         help="asymmetric INT4 (optimum-cli's default; slower on CPU, see docs/benchmarks.md)")
    convert.add_argument("--int8-head", action="store_true",
                         help="keep the embeddings and the output head in INT8 (optimum-cli's default): about 12 %% "
                              "slower decoding, closer to the original")
    convert.add_argument("--revision", help="hub revision of MODEL")
    convert.add_argument("--force", action="store_true", help="replace an earlier conversion")
    convert.add_argument("--no-self-test", action="store_true", help="skip the quick generation check")
    convert.add_argument("--models-dir", help="models folder (default AIPC_MODELS_DIR or the per-user folder)")
    convert.set_defaults(func=cmd_convert)

    bench = sub.add_parser("bench-models", help="build the shape-alike benchmark models (1.5B LLM, SD 1.5)")
    bench.add_argument("--force", action="store_true", help="rebuild even if present")
    bench.add_argument("--only", choices=["llm", "image", "image-torch", "llm-gguf"], help="build only one of them")
    bench.add_argument("--torch", action="store_true",
                       help="also save the SD 1.5 pipeline for diffusers on PyTorch (image-torch, 4.3 GB), to "
                            "time OpenVINO against PyTorch")
    bench.add_argument("--gguf", action="store_true",
                       help="also write the LLM as a llama.cpp GGUF (llm-gguf/model-Q4_0.gguf, same weights), to "
                            "time llama.cpp beside OpenVINO (needs aipc-chat[bench])")
    bench.add_argument("--models-dir", help="models folder (default AIPC_MODELS_DIR or the per-user folder)")
    bench.set_defaults(func=cmd_bench_models)

    users = sub.add_parser("users", help="per-user keys for a shared server (AIPC_USERS_FILE)")
    users.add_argument("action", choices=["add", "remove", "list"],
                       help="add: make a new key for NAME and print it once; remove: delete NAME's keys; list")
    users.add_argument("name", nargs="?", help="the user id (for add and remove)")
    users.add_argument("--file", help="the users file (default AIPC_USERS_FILE)")
    users.set_defaults(func=cmd_users)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``aipc-chat``."""
    for stream in (sys.stdout, sys.stderr):  # a legacy code page (a Windows redirect) shows '?', never crashes
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    code = _run(args)
    if args.func is cmd_serve and _loading_in_background():
        _exit_now(code)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        code: int = args.func(args)
    except StartupError as exc:
        print(f"aipc-chat: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except ValidationError as exc:  # logging is not set up yet: straight to stderr, one line per bad setting
        for warning in unknown_settings(os.environ):  # perhaps the cause: a misspelt name
            print(f"aipc-chat: {warning}", file=sys.stderr)  # noqa: T201
        for line in problem_lines(exc):
            print(f"aipc-chat: invalid configuration: {line}", file=sys.stderr)  # noqa: T201
        return 2
    except BaseException as exc:
        if not _by_ctrl_c(exc):
            raise
        print("aipc-chat: stopped (Ctrl-C)", file=sys.stderr)  # noqa: T201
        return 130  # the shell's code for a command ended by SIGINT
    return code


def _by_ctrl_c(exc: BaseException | None) -> bool:
    """Whether Ctrl-C is behind an exception: KeyboardInterrupt (uvicorn stops the server, then passes the signal
    on), or an error it caused (a C extension interrupted while it initialises raises ImportError from it)."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _loading_in_background() -> bool:
    """Whether the server stopped while its models were still loading (not asked when serve stopped earlier)."""
    if "aipc_chat.runtime" not in sys.modules:
        return False
    from aipc_chat.runtime import loading_in_background

    return loading_in_background()


def _exit_now(code: int) -> NoReturn:
    """Exit without finalizing the interpreter, because a model is still loading (the server stopped without
    waiting for it). Python's shutdown would end that daemon thread where it stands, inside OpenVINO's C++ code,
    and the C++ runtime then aborts the process ("terminate called without an active exception", status 134)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
