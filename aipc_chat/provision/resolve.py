"""Which model (and from where) serves each kind: remote endpoint, explicit path, demo model, or hub repository."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aipc_chat.errors import ModelSetupError
from aipc_chat.provision.gguf import OLLAMA_PREFIX, check_gguf, find_ollama_model, link_as_gguf
from aipc_chat.settings import DEFAULT_IMAGE_REPO, DEFAULT_LLM_REPO, NONE, Settings

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
        return self.path is not None and self.path.suffix.lower() == ".gguf"

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


def choose_model(settings: Settings, kind: Kind) -> ModelChoice:
    """Resolve a kind in order: remote endpoint, explicit path, demo model, configured repository."""
    endpoint = settings.llm_endpoint if kind == "llm" else settings.image_endpoint
    path = settings.llm_path if kind == "llm" else settings.image_path
    if endpoint:
        return ModelChoice(kind, "remote", name=endpoint, endpoint=endpoint.rstrip("/"))
    if path is not None:
        if kind == "llm" and str(path).startswith(OLLAMA_PREFIX):  # a model in Ollama's store, by name
            name = str(path)[len(OLLAMA_PREFIX):]
            blob = find_ollama_model(name)
            return ModelChoice(kind, "ollama", name=name, path=link_as_gguf(blob, name, settings.models_dir / "ollama"))
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


def check_present(choice: ModelChoice) -> None:
    """Raise ModelSetupError, saying what to run, when a local model folder is missing or incomplete."""
    missing = choice.missing_files()
    if not missing:
        if choice.gguf and choice.path is not None:
            check_gguf(choice.path)  # an architecture or quantization openvino-genai cannot run: say so now
        return
    where = choice.path
    if choice.source == "demo":
        hint = ("Point AIPC_DEMO_DIR at a folder built by `aipc-chat demo-models`, or unset it to serve the shipped "
                "ones.")
    elif choice.source == "path":
        hint = f"Point AIPC_{choice.kind.upper()}_PATH at an OpenVINO model folder" + (
            ", a .gguf file, or ollama:NAME." if choice.kind == "llm" else ".")
    else:
        hint = (
            "Run `aipc-chat download` on a connected machine (or enable AUTO_DOWNLOAD_MODELS), "
            "or try the offline demo models with `aipc-chat serve --demo`."
        )
    raise ModelSetupError(f"The {choice.kind} model '{choice.name}' is not in {where} (missing: "
                          f"{', '.join(missing)}). {hint}")
