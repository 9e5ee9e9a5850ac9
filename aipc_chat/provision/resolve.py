"""Which model (and from where) serves each kind: remote endpoint, explicit path, demo model, or hub repository;
and which of them are missing, with the command that fetches each (the start-up check and ``aipc-chat doctor``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aipc_chat.errors import ModelSetupError
from aipc_chat.provision.gguf import OLLAMA_PREFIX, check_gguf, find_ollama_model, link_as_gguf
from aipc_chat.settings import (
    DEFAULT_IMAGE_REPO,
    DEFAULT_LLM_REPO,
    LLM_PATH_FORMS,
    NONE,
    SHIPPED_DEMO_DIR,
    Settings,
    env_name,
    env_set,
    public_url,
    source_checkout,
)

Kind = Literal["llm", "image"]
Source = Literal["remote", "path", "ollama", "demo", "repo", "none"]

NPU_LLM_REPO = "OpenVINO/DeepSeek-R1-Distill-Qwen-1.5B-int4-cw-ov"
DEMO_NAMES: dict[Kind, str] = {"llm": "aipc-demo-deepseek-r1", "image": "aipc-demo-sd15"}
# A folder is a usable model when these files are in it.
REQUIRED_FILES: dict[Kind, tuple[str, ...]] = {
    "llm": ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml"),
    "image": ("model_index.json", "unet/openvino_model.xml", "vae_decoder/openvino_model.xml"),
}


@dataclass(frozen=True)
class ModelChoice:
    """Where one kind of model comes from, and the id clients see."""

    kind: Kind
    source: Source
    name: str
    path: Path | None = None
    endpoint: str | None = None
    repo: str | None = None
    revision: str | None = None

    def hub_target(self) -> tuple[str, str, Path]:
        """(repository, revision, folder) of a hub model."""
        if self.repo is None or self.revision is None or self.path is None:
            raise ValueError(f"the {self.kind} model is not a hub repository")
        return self.repo, self.revision, self.path

    @property
    def optional(self) -> bool:
        """A default hub model nobody asked for by name: when it cannot be had, the server serves the other kind."""
        return self.source == "repo" and self.repo in (DEFAULT_LLM_REPO, DEFAULT_IMAGE_REPO, NPU_LLM_REPO)

    @property
    def gguf(self) -> bool:
        """True for an LLM given as one ``.gguf`` file (its own, or one of Ollama's)."""
        return self.path is not None and (self.source == "ollama" or self.path.suffix.lower() == ".gguf")

    def missing_files(self) -> list[str]:
        """Required files absent from a local model folder (empty for remote models)."""
        if self.path is None:
            return []
        if self.gguf:
            return [] if self.path.is_file() else [self.path.name]
        return [f for f in REQUIRED_FILES[self.kind] if not (self.path / f).is_file()]


def repo_dir(models_dir: Path, repo: str, revision: str) -> Path:
    """The deterministic folder of a hub repository at a revision."""
    owner, _, name = repo.partition("/")
    folder = f"{owner}--{name}" if name else owner
    return models_dir / "hub" / folder / revision


def choose_model(settings: Settings, kind: Kind, *, link: bool = True) -> ModelChoice:
    """Resolve a kind in order: remote endpoint, explicit path, demo model, configured repository. An Ollama model
    is linked into the models folder for openvino-genai (``link``); without, its blob is named as it is (a look that
    writes nothing: ``doctor``, ``models``)."""
    endpoint = settings.llm_endpoint if kind == "llm" else settings.image_endpoint
    path = settings.llm_path if kind == "llm" else settings.image_path
    if endpoint:
        return ModelChoice(kind, "remote", name=public_url(endpoint), endpoint=endpoint.rstrip("/"))
    if path is not None:
        if kind == "llm" and str(path).startswith(OLLAMA_PREFIX):  # a model in Ollama's store, by name
            name = str(path)[len(OLLAMA_PREFIX):]
            blob = find_ollama_model(name)
            served = link_as_gguf(blob, name, settings.models_dir / "ollama") if link else blob
            return ModelChoice(kind, "ollama", name=name, path=served)
        gguf_file = kind == "llm" and path.suffix.lower() == ".gguf"
        return ModelChoice(kind, "path", name=path.stem if gguf_file else path.resolve().name, path=path)
    repo = settings.llm_repo if kind == "llm" else settings.image_repo
    if repo.strip().lower() == NONE:  # switched off (even with --demo): this server serves no model of this kind
        return ModelChoice(kind, "none", name=NONE)
    if settings.demo:
        return ModelChoice(kind, "demo", name=DEMO_NAMES[kind], path=settings.demo_models_dir / kind)
    if kind == "llm" and settings.llm_device == "NPU" and repo == DEFAULT_LLM_REPO:
        repo = NPU_LLM_REPO  # channel-wise INT4 is what the NPU runs well
    revision = settings.llm_revision if kind == "llm" else settings.image_revision
    return ModelChoice(
        kind, "repo", name=repo.rsplit("/", 1)[-1], path=repo_dir(settings.models_dir, repo, revision),
        repo=repo, revision=revision,
    )


PATH_FORMS: dict[Kind, str] = {
    "llm": LLM_PATH_FORMS, "image": "an OpenVINO Stable Diffusion folder (with model_index.json, unet/, vae_decoder/)"}
DEMO_TRY = "try the offline demo models with `aipc-chat serve --demo`"


@dataclass(frozen=True)
class Missing:
    """A model the configuration asks for that is not on this machine, and how to get it."""

    role: Kind
    name: str  # what was asked for: ``repo@revision``, a path, ``ollama:NAME``, the demo model's name
    where_from: str  # the setting that chose it (``AIPC_LLM_REPO``, ``AIPC_IMAGE_PATH``, ``AIPC_DEMO_DIR``, ...)
    path: Path | None  # where it was looked for
    problem: str  # "is not downloaded", "is incomplete (missing: ...)", "does not exist"
    fetch: str | None  # the command that fetches or builds it, when there is one
    remedy: str  # what to do: run ``fetch``, or what to point the setting at
    optional: bool  # a default model nobody named: the server can serve without it

    def describe(self, *, remedy: bool = True) -> str:
        """One clause: what is missing, where it was looked for, and (``remedy``) what to do."""
        where = f" in {self.path}" if self.path is not None and self.problem != "does not exist" else ""
        return f"the {self.role} model {self.name} ({self.where_from}) {self.problem}{where}" + (
            f": {self.remedy}" if remedy else "")


def missing_models(settings: Settings) -> list[Missing]:
    """The models this configuration serves from this machine that are not here (or not complete), in the order
    llm, image. It looks at the disk only and writes nothing: no download is tried, no Ollama model linked.
    ``aipc-chat serve`` and ``aipc-chat doctor`` both report these."""
    found = []
    for kind in ("llm", "image"):
        try:
            choice = choose_model(settings, kind, link=False)
        except ModelSetupError as exc:  # an ollama:NAME that Ollama's store does not have
            name = str(settings.llm_path)[len(OLLAMA_PREFIX):]
            found.append(Missing("llm", str(settings.llm_path), env_name("llm_path"), None, "is not in Ollama's "
                                 "store", f"ollama pull {name}", str(exc), optional=False))
            continue
        missing = missing_model(choice, settings)
        if missing is not None:
            found.append(missing)
    return found


def missing_model(choice: ModelChoice, settings: Settings | None = None, *, verify: bool = True) -> Missing | None:
    """What is missing of one model choice, or None. A hub model counts as here when its manifest verifies
    (``verify``; the download writes it last), else when its required files are there."""
    if choice.source in ("remote", "none") or choice.path is None:
        return None
    if choice.source == "repo":
        return _missing_download(choice, settings, verify=verify)
    setting = env_name(f"{choice.kind}_path") if choice.source in ("path", "ollama") else "AIPC_DEMO_DIR"
    if not choice.path.exists():
        problem = "does not exist"
    elif choice.gguf or not choice.missing_files():
        return None
    else:
        problem = f"is incomplete (missing: {', '.join(choice.missing_files())})"
    if choice.source == "demo":
        if choice.path.parent == SHIPPED_DEMO_DIR:  # the package's own copy is damaged
            remedy = "reinstall aipc-chat (pip install --force-reinstall aipc-chat), which ships them built"
            return Missing(choice.kind, choice.name, "the shipped demo models", choice.path, problem, None, remedy,
                           optional=False)
        fetch = f"aipc-chat demo-models --only {choice.kind}{_models_dir_flag(settings)}"
        built = settings.demo_build_dir if settings is not None else "<models dir>/demo"
        remedy = (f"build it with `{fetch}` and set AIPC_DEMO_DIR={built}, or unset AIPC_DEMO_DIR to serve the "
                  "shipped ones")
        return Missing(choice.kind, choice.name, setting, choice.path, problem, fetch, remedy, optional=False)
    remedy = f"point {setting} at {PATH_FORMS[choice.kind]}"
    return Missing(choice.kind, str(choice.path), setting, choice.path, problem, None, remedy, optional=False)


def _missing_download(choice: ModelChoice, settings: Settings | None, *, verify: bool) -> Missing | None:
    assert choice.path is not None
    if verify:
        from aipc_chat.provision.hub import verify_manifest  # huggingface_hub: imported when a hub model is used

        problems = verify_manifest(choice.path) if choice.path.is_dir() else ["not downloaded"]
    else:
        problems = [f"missing: {', '.join(choice.missing_files())}"] if choice.missing_files() else []
    if not problems:
        return None
    fetch = download_command(settings, choice.kind)
    state = "is not downloaded" if not choice.path.is_dir() else f"is incomplete ({problems[0]})"
    repo = env_name(f"{choice.kind}_repo")
    where_from = repo if env_set(f"{choice.kind}_repo") else f"{repo}, the default"
    return Missing(choice.kind, f"{choice.repo}@{choice.revision}", where_from, choice.path, state, fetch,
                   f"fetch it with `{fetch}`", optional=choice.optional)


def download_command(settings: Settings | None, kind: Kind | Literal["all"] = "all") -> str:
    """The ``aipc-chat download`` command that fetches ``kind`` into this configuration's models folder."""
    return f"aipc-chat download{'' if kind == 'all' else f' --kind {kind}'}{_models_dir_flag(settings)}"


def _models_dir_flag(settings: Settings | None) -> str:
    """``--models-dir DIR`` when the models folder came from a command-line flag, which another command would not
    see; nothing when it came from the environment, a source checkout or the built-in default."""
    if settings is None or "models_dir" not in settings.model_fields_set or env_set("models_dir"):
        return ""
    checkout = source_checkout(Path.cwd())
    if checkout is not None and settings.models_dir == checkout / "models":
        return ""
    folder = str(settings.models_dir)
    return f' --models-dir "{folder}"' if " " in folder else f" --models-dir {folder}"


def missing_message(missing: list[Missing], *, hub_problem: str | None = None) -> str:
    """One message naming every missing model with what fetches it; when the hub cannot be reached
    (``hub_problem``), the ways to serve without it first, so the advice never sends back to a download."""
    head = "A model is missing: " if len(missing) == 1 else f"{len(missing)} models are missing: "
    text = head + "; ".join(m.describe(remedy=hub_problem is None) for m in missing) + "."
    if hub_problem is not None:
        fetch = ", ".join(f"`{m.fetch}`" for m in missing if m.fetch)
        text += (f" {'It' if len(missing) == 1 else 'They'} cannot be downloaded now: {hub_problem}. "
                 f"{offline_ways_out(missing[0].path)} Once the hub answers, {fetch} fetch{'es' * (',' not in fetch)} "
                 f"{'it' if len(missing) == 1 else 'them'}, resuming where a download stopped.")
    elif not any(m.name in DEMO_NAMES.values() for m in missing):
        text += f" Or {DEMO_TRY}."
    return text


def offline_ways_out(path: Path | None) -> str:
    """What serves without the hub (no advice that needs the hub)."""
    hub = path.parent.parent if path is not None and path.parent.parent.name == "hub" else None
    copy = (f"; or copy the hub folder of a machine where `aipc-chat download` ran into {hub}" if hub is not None
            else "")
    return ("Without the hub: serve the offline demo models (`aipc-chat serve --demo`); serve a model already on this "
            f"machine (AIPC_LLM_PATH: {LLM_PATH_FORMS}; AIPC_IMAGE_PATH: {PATH_FORMS['image']}){copy}.")


def check_present(choice: ModelChoice, settings: Settings | None = None) -> None:
    """Raise ModelSetupError, saying what to run, when a local model folder is missing or incomplete."""
    missing = missing_model(choice, settings, verify=False)
    if missing is None:
        if choice.gguf and choice.path is not None:
            check_gguf(choice.path)  # an architecture or quantization openvino-genai cannot run: say so now
        return
    raise ModelSetupError(missing_message([missing]))
