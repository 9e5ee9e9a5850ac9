"""What `aipc-chat serve` would do on this machine with these settings, found without starting it.

``aipc-chat doctor`` prints a ``Report`` (one ``Check`` per line) and ``aipc-chat models`` the ``ServedModel`` rows.
Nothing here loads a model or uses the network (a port already taken is asked for ``/health`` on this machine only),
and nothing is written but a temporary file (an Ollama model is looked at where it is, not linked). The answers
are the start's own decisions: ``choose_model`` picks each model, ``missing_models`` says what of it is missing and
what fetches it, ``resolve_device`` checks the devices, the CLI's ``bind`` tries the port. A check that fails is one
that would stop the start."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from aipc_chat import __version__
from aipc_chat.errors import ModelSetupError, PortInUse, StartupError
from aipc_chat.provision.gguf import check_gguf
from aipc_chat.provision.resolve import Kind, Missing, ModelChoice, choose_model, missing_models
from aipc_chat.settings import Settings, env_name, env_names, env_set, public_url, unknown_settings

Status = Literal["ok", "info", "warn", "fail"]
MARKS: dict[Status, str] = {"ok": "[ok]  ", "info": "[--]  ", "warn": "[warn]", "fail": "[FAIL]"}  # ASCII: any console
# Distributions serving needs, then the extras (looked up by their metadata: torch is never imported)
REQUIRED = ("openvino", "openvino-genai", "openvino-tokenizers", "fastapi", "uvicorn")
OPTIONAL = {"optimum-intel": "AIPC_IMAGE_RUNTIME=optimum and `aipc-chat convert` need it: the [optimum] extra",
            "torch": "only the [optimum] and [convert] extras use it; serving never imports it"}
ROLE_NAMES = {"llm": "chat model (LLM)", "image": "image model", "embedding": "embedding model"}


@dataclass(frozen=True)
class Check:
    """One line of the report: what was looked at, and what to do when it is not right."""

    section: str
    status: Status
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class ServedModel:
    """One role the server would serve: the model, where that choice comes from, and whether it is there."""

    role: str  # llm, image, embedding
    name: str
    origin: str  # the setting, flag or place the choice comes from
    via: str  # choose_model's source (remote, path, ollama, demo, repo, none); "local" or "none" for embeddings
    path: str | None = None
    endpoint: str | None = None
    present: bool | None = None  # None: nothing local to look at (a remote endpoint, or switched off)
    problem: str | None = None  # why it cannot be served as it is, saying what to run
    fix: str | None = None  # the command that fetches or builds it
    downloads_at_start: bool = False  # missing, and `serve` would download it (AUTO_DOWNLOAD_MODELS, not offline)
    optional: bool = False  # a default hub model: when it cannot be had, the other kind is served alone


@dataclass
class Report:
    """Every check, and the models the server would serve."""

    checks: list[Check] = field(default_factory=list)
    models: list[ServedModel] = field(default_factory=list)

    @property
    def would_start(self) -> bool:
        """True when no check found something that stops `aipc-chat serve`."""
        return not any(check.status == "fail" for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``aipc-chat doctor --json``)."""
        return {"would_start": self.would_start, "problems": [c.message for c in self.checks if c.status == "fail"],
                "checks": [asdict(c) for c in self.checks], "models": [asdict(m) for m in self.models]}


# ------------------------------------------------------------------------------------------------------ models


def served_models(settings: Settings) -> list[ServedModel]:
    """The LLM, the image model and the embedding model (when one is set), as `serve` would choose them, each with
    what is missing of it as the start finds it (``missing_models``)."""
    missing = {m.role: m for m in missing_models(settings)}
    return [_served(settings, "llm", missing.get("llm")), _served(settings, "image", missing.get("image")),
            _served_embedding(settings)]


def _served(settings: Settings, kind: Kind, missing: Missing | None) -> ServedModel:
    try:
        choice = choose_model(settings, kind, link=False)
    except ModelSetupError as exc:  # an Ollama model by a name its store does not have (missing_models says so too)
        said, fetch = (_sentence(missing.describe()), missing.fetch) if missing is not None else (str(exc), None)
        return ServedModel(kind, str(settings.llm_path), env_name("llm_path"), "ollama", present=False,
                           problem=said, fix=fetch)
    origin, path = _origin(settings, choice), str(choice.path) if choice.path else None
    if choice.source in ("none", "remote"):
        endpoint = public_url(choice.endpoint) if choice.endpoint else None  # never a URL's user, password or key
        return ServedModel(kind, choice.name, origin, choice.source, endpoint=endpoint)
    problem, fix = (_sentence(missing.describe()), missing.fetch) if missing is not None else (_unrunnable(choice),
                                                                                                None)
    downloads = (missing is not None and choice.source == "repo" and settings.auto_download_models
                 and not _offline())
    return ServedModel(kind, choice.name, origin, choice.source, path=path, present=missing is None, problem=problem,
                       fix=fix, downloads_at_start=downloads, optional=choice.optional)


def _sentence(text: str) -> str:
    """A clause of the start's message as a sentence of its own."""
    text = f"{text[:1].upper()}{text[1:]}"
    return text if text.endswith(".") else f"{text}."


def _unrunnable(choice: ModelChoice) -> str | None:
    """Why a model that is here cannot run (a GGUF file of an architecture openvino-genai does not build), or None."""
    if not (choice.gguf and choice.path is not None):
        return None
    try:
        check_gguf(choice.path)
    except ModelSetupError as exc:
        return str(exc)
    return None


def _origin(settings: Settings, choice: ModelChoice) -> str:
    """Which setting (by the environment name that set it), flag or place a model comes from."""
    kind = choice.kind
    if choice.source == "remote":
        return env_name(f"{kind}_endpoint")
    if choice.source in ("path", "ollama"):
        return env_name(f"{kind}_path")
    if choice.source == "none":
        return f"{env_name(f'{kind}_repo')}=none"
    if choice.source == "demo":
        flag = env_name("demo") if env_set("demo") else "--demo"
        return f"demo models ({flag}; {env_name('demo_dir') if settings.demo_dir is not None else 'the shipped ones'})"
    repo = env_name(f"{kind}_repo")
    default = "" if f"{kind}_repo" in settings.model_fields_set else ", the default"
    return f"hub repository {choice.repo}@{choice.revision} ({repo}{default}) in the models folder"


def _served_embedding(settings: Settings) -> ServedModel:
    source = settings.embedding_path
    if source is None:
        return ServedModel("embedding", "none", f"{env_name('embedding_path')} not set", "none")
    name = settings.embedding_name or source.name
    origin = env_name("embedding_path")
    problem = _embedding_problem(source, settings.models_dir)
    return ServedModel("embedding", name, origin, "local", path=str(source), present=problem is None, problem=problem)


def _embedding_problem(source: Path, models_dir: Path) -> str | None:
    """What stops the embedding model, as the start sees it (``embedding_folder``), without converting anything."""
    from aipc_chat.engines.embedding import embedding_folder

    try:
        _, convert = embedding_folder(source, models_dir)
    except ModelSetupError as exc:
        return str(exc)
    if not convert or _installed("optimum-intel"):
        return None  # served as it is, or converted once at the first start
    return (f"{source} is a Hugging Face model and converting it needs the convert extra: pip install "
            '"aipc-chat[convert]".')


def _offline() -> bool:
    from aipc_chat.provision.hub import hub_offline  # what the start's probe of the hub goes by

    return hub_offline()


def model_checks(models: list[ServedModel]) -> list[Check]:
    """The start's rule over the models: a model asked for by name must be there; a default hub model that is not
    leaves its kind out, unless that leaves nothing to serve. A missing hub model downloads at start when it can."""
    kinds = [m for m in models if m.role != "embedding"]
    missing = [m for m in kinds if m.problem is not None and not m.downloads_at_start]
    nothing_left = len(missing) + sum(m.via == "none" for m in kinds) == len(kinds)
    checks = [_model_check(m, nothing_left) for m in models]
    if all(m.via == "none" for m in kinds):
        checks.append(Check("models", "fail", "Both AIPC_LLM_REPO and AIPC_IMAGE_REPO are none: there is nothing "
                                              "to serve.", "unset one of them"))
    return checks


def _model_check(model: ServedModel, nothing_left: bool) -> Check:
    where = model.endpoint or model.path
    if model.via == "none":
        return Check("models", "info", f"{model.role}: not served ({model.origin})")
    if model.via == "remote":
        return Check("models", "ok", f"{model.role}: {model.name} from {model.origin}: a remote endpoint (not "
                                     "contacted here)")
    if model.problem is None:
        return Check("models", "ok", f"{model.role}: {model.name} from {model.origin}: present ({where})")
    if model.downloads_at_start:
        return Check("models", "warn", f"{model.role}: {model.problem} `serve` downloads it at start "
                                       "(AIPC_AUTO_DOWNLOAD_MODELS; needs the network).", model.fix)
    if model.role == "embedding":
        return Check("models", "warn", f"{model.role}: {model.problem} The server starts without embeddings.")
    if model.optional and not nothing_left:
        return Check("models", "warn", f"{model.role}: {model.problem} The server starts without the "
                                       f"{ROLE_NAMES[model.role]}.", model.fix)
    return Check("models", "fail", f"{model.role}: {model.problem}", model.fix)


# ----------------------------------------------------------------------------------------- versions, devices


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_checks() -> list[Check]:
    """Python, aipc-chat and the libraries serving needs; whether the extras' big ones are installed."""
    checks = [Check("versions", "ok", f"python {platform.python_version()} ({platform.system()} "
                                      f"{platform.machine()})"),
              Check("versions", "ok", f"aipc-chat {__version__}")]
    for name in REQUIRED:
        version = _installed(name)
        checks.append(Check("versions", "ok", f"{name} {version}") if version else
                      Check("versions", "fail", f"{name} is not installed", "pip install aipc-chat"))
    for name, why in OPTIONAL.items():
        version = _installed(name)
        checks.append(Check("versions", "info", f"{name} {version}" if version else f"{name} not installed ({why})"))
    return checks


def device_checks(settings: Settings | None, models: list[ServedModel]) -> list[Check]:
    """The devices OpenVINO sees, and whether each model's device setting names one of them."""
    from aipc_chat.provision.devices import available_devices, resolve_device

    try:
        devices = available_devices()
    except Exception as exc:  # noqa: BLE001  # a broken OpenVINO install: say so rather than crash the report
        return [Check("devices", "fail", f"OpenVINO cannot list the devices: {type(exc).__name__}: {exc}",
                      "pip install --force-reinstall openvino")]
    checks = [Check("devices", "ok", f"OpenVINO sees {', '.join(_device_names(devices)) or 'no devices'}")]
    if settings is None:
        return checks
    wanted = {"llm": settings.llm_device, "image": settings.image_device, "embedding": settings.embedding_device}
    for model in models:
        if model.via in ("none", "remote"):
            continue
        kind: Kind = "image" if model.role == "image" else "llm"  # the embedding model picks as the LLM does
        try:
            device = resolve_device(wanted[model.role], devices, kind)
        except ModelSetupError as exc:  # the start stops on it (the embedding model only fails to load)
            checks.append(Check("devices", "warn" if model.role == "embedding" else "fail", str(exc)))
            continue
        shown = f"{wanted[model.role]} -> {device}" if device != wanted[model.role] else device
        checks.append(Check("devices", "ok", f"{model.role} runs on {shown}"))
        if model.role == "image":
            checks += _image_runtime_check(settings)
    return checks


def _image_runtime_check(settings: Settings) -> list[Check]:
    from aipc_chat.runtime import check_image_runtime  # the start's own check

    try:
        check_image_runtime(settings)
    except ModelSetupError as exc:
        return [Check("devices", "fail", str(exc))]
    return [Check("devices", "ok", f"image runtime: {settings.image_runtime}")]


def _device_names(devices: list[str]) -> list[str]:
    import openvino as ov

    core, named = ov.Core(), []
    for device in devices:
        try:
            named.append(f"{device} ({core.get_property(device, 'FULL_DEVICE_NAME')})")
        except Exception:  # noqa: BLE001  # the name is a nicety
            named.append(device)
    return named


# -------------------------------------------------------------------------------------- settings, files, keys


def settings_checks(settings: Settings | None, problem: str | None) -> list[Check]:
    """Whether the settings are valid (the start stops on the first invalid one), and AIPC_ names that are none."""
    checks = [Check("settings", "warn", warning) for warning in unknown_settings(os.environ)]
    if settings is None:
        return [Check("settings", "fail", f"invalid configuration: {problem}", "fix the variables named"), *checks]
    known = {name.upper() for field in Settings.model_fields for name in env_names(field)}
    named = sorted(n for n in os.environ if n.upper() in known)  # the settings given (the seed's names too)
    given = f"from the environment: {', '.join(named)}" if named else "all defaults"
    checks.insert(0, Check("settings", "ok", f"settings valid ({given})"))
    return checks + _file_checks(settings)


def _file_checks(settings: Settings) -> list[Check]:
    """The files the start reads: the system prompt, the blocked terms, the users file."""
    from aipc_chat.prompts import Prompts
    from aipc_chat.safety import PromptFilter

    checks = []
    for setting, path, load in (("system_prompt_file", settings.system_prompt_file, Prompts.load),
                                ("blocked_terms_file", settings.blocked_terms_file, PromptFilter.load)):
        if path is None:
            continue
        try:
            load(path)
        except (OSError, ValueError, StartupError) as exc:
            checks.append(Check("settings", "fail", f"{env_name(setting)}={path} cannot be read: {exc}"))
        else:
            checks.append(Check("settings", "ok", f"{env_name(setting)}: {path}"))
    return checks


def key_checks(settings: Settings) -> list[Check]:
    """Which keys are set (never their values), and a users file's users."""
    checks = [Check("keys", "ok" if settings.api_key else "info",
                    f"{env_name('api_key')}: {'set' if settings.api_key else 'not set (no key needed)'}")]
    if settings.users_file is not None:
        checks.append(_users_check(settings.users_file))
    unkeyed = settings.api_key is None and settings.users_file is None
    if settings.host not in ("127.0.0.1", "localhost", "::1") and unkeyed:
        checks.append(Check("keys", "warn", f"binding {settings.host} without a key: anyone on the network can use "
                                            "this server", "set AIPC_API_KEY or AIPC_USERS_FILE"))
    for setting, used in (("llm_endpoint_api_key", settings.llm_endpoint), ("image_endpoint_api_key",
                                                                            settings.image_endpoint)):
        if used:
            checks.append(Check("keys", "info", f"{env_name(setting)}: "
                                                f"{'set' if getattr(settings, setting) else 'not set'}"))
    checks.append(Check("keys", "info", f"Hugging Face token: {'set' if settings.hf_token else 'not set'}"))
    return checks


def _users_check(path: Path) -> Check:
    from aipc_chat.users import read_users

    try:
        entries = read_users(path)
    except StartupError as exc:  # the start reads it too, and stops
        return Check("keys", "fail", str(exc), "aipc-chat users add NAME")
    users = {entry.user for entry in entries}
    return Check("keys", "ok", f"{env_name('users_file')}: {path}, {len(users)} user(s) with {len(entries)} key(s)")


# ----------------------------------------------------------------------------------------- storage, port


def storage_checks(settings: Settings, models: list[ServedModel]) -> list[Check]:
    """The data folder can be written (the start stops if not); free space where data and models go."""
    from aipc_chat.engines.store import free_mb

    checks = [_writable(settings.data_dir)]
    free = free_mb(settings.data_dir)
    low = settings.min_free_mb and free is not None and free < settings.min_free_mb
    checks.append(Check("storage", "warn" if low else "ok", f"data folder: {_mb(free)} free" + (
        f", under AIPC_MIN_FREE_MB={settings.min_free_mb}: pictures are refused until there is more" if low else ""),
        "free some disk space, or choose another folder with AIPC_DATA_DIR" if low else None))
    downloads = [m.name for m in models if m.downloads_at_start]
    free = free_mb(settings.models_dir)
    checks.append(Check("storage", "ok", f"models folder {settings.models_dir}: {_mb(free)} free" + (
        f" (to download {', '.join(downloads)}; the default LLM is about 1.2 GB, the default SD 1.5 1.1 GB)"
        if downloads else "")))
    return checks


def team_checks(settings: Settings) -> list[Check]:
    """The shared database and object storage, where set: they answer (read only: nothing is created)."""
    checks: list[Check] = []
    if settings.database_url is not None:
        checks.append(_database_check(settings.database_url.get_secret_value()))
    if settings.image_store_url:
        checks.append(_image_store_check(settings))
    return checks


def _database_check(url: str) -> Check:
    from sqlalchemy import create_engine, text

    from aipc_chat.db import POSTGRES_CONNECT, StallWatch, driver_url, redact

    label = redact(url)
    parsed = driver_url(url)
    postgres = parsed.get_backend_name() == "postgresql"
    try:
        engine = create_engine(parsed, connect_args=POSTGRES_CONNECT if postgres else {})
    except ModuleNotFoundError as exc:
        return Check("team", "fail", f"AIPC_DATABASE_URL needs {exc.name}, which is not installed",
                     'pip install "aipc-chat[team]"')
    watch = StallWatch(engine, label) if postgres else None  # a frozen server: a failed check, not a hang
    try:
        with watch.call() if watch is not None else contextlib.nullcontext(), engine.connect() as db:
            db.execute(text("SELECT 1"))
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return Check("team", "fail", f"database {label} does not answer: {reason}",
                     "check AIPC_DATABASE_URL, and that the database server is running")
    finally:
        if watch is not None:
            watch.close()
        engine.dispose()
    return Check("team", "ok", f"database {label} answers (history, image jobs and rate limits are kept there)")


def _image_store_check(settings: Settings) -> Check:
    from aipc_chat.engines.store import make_image_store

    try:
        problem = make_image_store(settings).check()
    except StartupError as exc:
        return Check("team", "fail", str(exc))
    if problem:  # the server starts, and /ready says the store is unreachable until it answers
        return Check("team", "warn", f"picture store {settings.image_store_url}: {problem}",
                     "check AIPC_IMAGE_STORE_URL, AIPC_S3_ENDPOINT and the AWS_* credentials")
    return Check("team", "ok", f"picture store {settings.image_store_url} answers")


def _mb(free: int | None) -> str:
    return "unknown space" if free is None else f"{free / 1000:.1f} GB" if free >= 1000 else f"{free} MB"


def _writable(path: Path) -> Check:
    """What the start's data folder check would say, without creating the folder (a temporary file, removed)."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise NotADirectoryError(0, "not a folder", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return Check("storage", "fail", f"The data folder {path} cannot be written ({exc.strerror or exc})",
                     "fix its permissions, free the disk, or choose another with AIPC_DATA_DIR")
    made = "" if existing == path else " (created at start)"
    return Check("storage", "ok", f"data folder {path}: writable{made}")


def port_check(settings: Settings) -> Check:
    """Whether `serve` can listen where it is told (the CLI's own ``bind``); if taken, whether by an aipc-chat."""
    from aipc_chat.cli import bind, server_url

    where = f"{settings.host}:{settings.port}"
    try:
        bind(settings.host, settings.port).close()
    except PortInUse as exc:
        holder = _aipc_chat_at(server_url(settings.host, settings.port))
        said = f" {holder} answers there." if holder else ""
        return Check("port", "fail", f"{exc}{said}", "stop that server, or choose another port with --port")
    except StartupError as exc:
        return Check("port", "fail", str(exc), "choose another address with --host / --port")
    return Check("port", "ok", f"{where}: free (`serve` listens at {server_url(settings.host, settings.port)})")


def _aipc_chat_at(url: str) -> str | None:
    """``aipc-chat X.Y`` when the server at ``url`` (this machine) answers /health as ours does, else None."""
    import httpx

    try:
        body = httpx.get(f"{url}/health", timeout=2, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return None
    if isinstance(body, dict) and body.get("status") == "ok" and "version" in body:
        return f"aipc-chat {body['version']}"
    return None


# ---------------------------------------------------------------------------------------------- the report


def diagnose(settings: Settings | None, settings_problem: str | None = None) -> Report:
    """Every check; with invalid settings (``settings`` None) only those that need none."""
    models = served_models(settings) if settings is not None else []
    report = Report(models=models)
    report.checks += version_checks()
    report.checks += settings_checks(settings, settings_problem)
    report.checks += device_checks(settings, models)
    if settings is None:
        return report
    report.checks += model_checks(models)
    report.checks += storage_checks(settings, models)
    report.checks += team_checks(settings)
    report.checks.append(port_check(settings))
    report.checks += key_checks(settings)
    return report


def render(report: Report) -> str:
    """The report as text: one line per check, under its section, and the verdict."""
    lines = ["aipc-chat doctor: what `aipc-chat serve` would find here"]
    section = None
    for check in report.checks:
        if check.section != section:
            section = check.section
            lines.append(section)
        fix = f"\n         -> {check.fix}" if check.fix and check.status in ("warn", "fail") else ""
        lines.append(f"  {MARKS[check.status]} {check.message}{fix}")
    failures = sum(check.status == "fail" for check in report.checks)
    lines.append("`aipc-chat serve` would start." if report.would_start else
                 f"`aipc-chat serve` would not start: {failures} problem(s) marked FAIL above.")
    return "\n".join(lines)
