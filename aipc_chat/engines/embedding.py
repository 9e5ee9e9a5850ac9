"""Sentence embeddings through openvino-genai's ``TextEmbeddingPipeline``, under the model scheduler.

The model is an OpenVINO IR folder with its tokenizer (``openvino_tokenizer.xml``). How its token vectors become one
sentence vector (mean or CLS pooling, normalised or not) is read from the sentence-transformers files that come with
such models (``1_Pooling/config.json``, ``modules.json``, ``sentence_bert_config.json``); without them, mean pooling,
normalised. Requests hold the model while they embed, as chat requests hold the LLM; one batch runs at a time.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aipc_chat.engines.contract import RETRY_AFTER_SECONDS, EngineHealth
from aipc_chat.engines.scheduler import ModelSpec, Scheduler, health_of, weights_mb
from aipc_chat.errors import InvalidRequest, NotReady
from aipc_chat.settings import Settings

log = logging.getLogger(__name__)

SENTENCE_FILES = ("1_Pooling/config.json", "modules.json", "sentence_bert_config.json")
BATCH = 32  # texts per pipeline call


@dataclass(frozen=True)
class Pooling:
    """How token vectors become one sentence vector."""

    mode: str = "mean"  # "mean", "cls" or "last_token"
    normalize: bool = True
    max_length: int | None = None  # tokens a text is cut to (the model's limit)


def read_pooling(folder: Path) -> Pooling:
    """The pooling sentence-transformers' files describe (mean and normalised when they are absent)."""
    def read(name: str) -> Any:
        path = folder / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    pooling, modules, bert = read("1_Pooling/config.json"), read("modules.json"), read("sentence_bert_config.json")
    mode = "mean"
    if isinstance(pooling, dict):
        mode = "cls" if pooling.get("pooling_mode_cls_token") else (
            "last_token" if pooling.get("pooling_mode_lasttoken") else "mean")
    normalize = True if modules is None else any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    config = read("config.json") or {}
    limit = (bert or {}).get("max_seq_length") or config.get("max_position_embeddings")
    return Pooling(mode, normalize, int(limit) if limit else None)


class EmbeddingEngine:
    """Serves embeddings from one ``TextEmbeddingPipeline``; the scheduler loads and unloads it."""

    name = "embedding"

    def __init__(self, settings: Settings, model_dir: Path, model_name: str, device: str, *,
                 scheduler: Scheduler) -> None:
        self.settings, self.model_dir, self.model_name, self.device = settings, model_dir, model_name, device
        self.pooling = read_pooling(model_dir)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.dimensions = int(config.get("hidden_size") or 0)
        self.vocab_size = int(config.get("vocab_size") or 2**31)
        self.scheduler = scheduler
        self._tokenizer: Any = None
        self._pipe: Any = None
        self._running = threading.Lock()  # one batch at a time through the pipeline
        keep = settings.keep_alive_seconds
        scheduler.add(ModelSpec(self.name, self._load_pipeline, self._unload_pipeline, weights_mb(model_dir), 0.0,
                                math.inf if keep is None else keep))

    @property
    def size_bytes(self) -> int:
        """The model's weights on disk."""
        return sum(f.stat().st_size for f in self.model_dir.glob("*.bin"))

    def load(self, preload: bool | None = None) -> None:
        """The tokenizer (for counting and limits), then the pipeline when ``preload`` (default: load on start)."""
        import openvino_genai as ov_genai

        self._tokenizer = ov_genai.Tokenizer(str(self.model_dir))
        if self.settings.load_on_start if preload is None else preload:
            self.scheduler.preload(self.name)
        log.info("embedding model %s ready on %s (%d dimensions, %s pooling%s)", self.model_name, self.device,
                 self.dimensions, self.pooling.mode, ", normalised" if self.pooling.normalize else "")

    def _load_pipeline(self) -> Any:
        import openvino_genai as ov_genai

        config = ov_genai.TextEmbeddingPipeline.Config()
        config.pooling_type = {"cls": ov_genai.TextEmbeddingPipeline.PoolingType.CLS,
                               "last_token": ov_genai.TextEmbeddingPipeline.PoolingType.LAST_TOKEN,
                               }.get(self.pooling.mode, ov_genai.TextEmbeddingPipeline.PoolingType.MEAN)
        config.normalize = self.pooling.normalize
        if self.pooling.max_length:
            config.max_length = self.pooling.max_length
        self._pipe = ov_genai.TextEmbeddingPipeline(str(self.model_dir), self.device, config)
        return self._pipe

    def _unload_pipeline(self, _: Any) -> None:
        self._pipe = None

    def health(self) -> EngineHealth:
        """The model's state, as the scheduler's record says."""
        if self._tokenizer is None:
            return EngineHealth("loading", retry_after=RETRY_AFTER_SECONDS)
        return health_of(self.scheduler.view(self.name))

    def check_serving(self) -> None:
        """Raise NotReady unless requests can be taken now."""
        if self._tokenizer is None:
            raise NotReady("The embedding model is not loaded yet.", retry_after=RETRY_AFTER_SECONDS)
        self.scheduler.check(self.name)

    def preload(self, keep_alive: float | None = None, *, timeout: float | None = None) -> None:
        """Load the model without embedding anything; blocking."""
        self.check_serving()
        self.scheduler.preload(self.name, keep_alive, timeout=timeout)

    def release(self, wait: bool = True, *, if_idle: bool = False) -> None:
        """Unload the model as soon as no request holds it."""
        self.scheduler.unload(self.name, wait=wait, timeout=self.settings.request_timeout, if_idle=if_idle)

    def close(self) -> None:
        """Nothing runs on a thread of its own here."""

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text takes (special tokens included, as the model sees it)."""
        if not texts:
            return []
        return [int(n) for n in self._tokenizer.encode(texts).attention_mask.data.sum(axis=1)]  # one batched call

    def decode(self, ids: list[int]) -> str:
        """The text of token ids (a request that sends tokens); 400 for ids the vocabulary does not have."""
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise InvalidRequest(f"input holds token ids outside this model's vocabulary (0 to {self.vocab_size - 1}).",
                                 param="input")
        try:
            return str(self._tokenizer.decode(ids, skip_special_tokens=True))
        except Exception:  # no detokenizer next to the model, say
            raise InvalidRequest("This embedding model cannot read token ids; send text.", param="input") from None

    def embed(self, texts: list[str], *, truncate: bool = True, keep_alive: float | None = None
              ) -> tuple[list[list[float]], int]:
        """One vector per text, and the tokens they took. Blocking: the model is loaded first if need be. Without
        ``truncate`` a text longer than the model's limit is a 400 rather than cut."""
        self.check_serving()
        counts = self.token_counts(texts)
        limit = self.pooling.max_length
        if limit and not truncate and max(counts, default=0) > limit:
            longest = counts.index(max(counts))
            raise InvalidRequest(f"input {longest} takes {counts[longest]} tokens; this model reads at most {limit} "
                                 "(set truncate to true to cut it).", param="input")
        lease = self.scheduler.acquire(self.name, timeout=self.settings.request_timeout)
        vectors: list[Any] = []
        try:
            for start in range(0, len(texts), BATCH):  # a few at a time: another request's batch goes in between
                with self._running:
                    vectors.extend(self._pipe.embed_documents(texts[start:start + BATCH]))
        finally:
            self.scheduler.release(lease, keep_alive)
        total = sum(min(c, limit) if limit else c for c in counts)
        return [[float(x) for x in v] for v in vectors], total


def embedding_folder(source: Path, models_dir: Path) -> tuple[Path, bool]:
    """The OpenVINO folder that serves ``source``, and whether it still has to be converted into it; raise
    ModelSetupError for a folder that cannot serve. Looks only (``aipc-chat doctor`` asks the same)."""
    from aipc_chat.errors import ModelSetupError

    if not source.is_dir():
        raise ModelSetupError(f"AIPC_EMBEDDING_PATH is {source}: not a folder (an OpenVINO model folder, or a "
                              "Hugging Face sentence-transformers folder).")
    if (source / "openvino_model.xml").is_file():
        if not (source / "openvino_tokenizer.xml").is_file():
            raise ModelSetupError(f"{source} has no openvino_tokenizer.xml: convert its tokenizer with "
                                  "openvino-tokenizers (convert_tokenizer) next to the model.")
        return source, False
    if not (source / "config.json").is_file():
        raise ModelSetupError(f"AIPC_EMBEDDING_PATH is {source}: it holds neither an OpenVINO model "
                              "(openvino_model.xml) nor a Hugging Face model (config.json).")
    out = models_dir / "converted" / f"{source.name}-ov"
    return out, not ((out / "openvino_model.xml").is_file() and (out / "openvino_tokenizer.xml").is_file())


def prepare_embedding_model(source: Path, models_dir: Path) -> Path:
    """An OpenVINO folder to serve: ``source`` itself when it is one, else (a Hugging Face sentence-transformers
    folder) its conversion, made once into ``<models_dir>/converted/<name>-ov`` (the ``convert`` extra)."""
    folder, convert = embedding_folder(source, models_dir)
    if convert:
        _convert(source, folder)
    return folder


def _convert(source: Path, out: Path) -> None:
    """optimum-intel's export of a sentence-transformers model, with its pooling files, published whole."""
    from aipc_chat.errors import ModelSetupError

    try:
        from optimum.exporters.openvino import main_export
    except ImportError:
        raise ModelSetupError(f"{source} is a Hugging Face model: converting it needs the convert extra "
                              '(pip install "aipc-chat[convert]"), or point AIPC_EMBEDDING_PATH at an OpenVINO '
                              "folder.") from None
    import shutil
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        log.info("converting the embedding model %s into %s (once)", source, out)
        main_export(model_name_or_path=str(source), output=staging, task="feature-extraction",
                    library_name="transformers", convert_tokenizer=True, do_validation=False)
        for name in SENTENCE_FILES:  # how to pool, for read_pooling
            if (source / name).is_file():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, staging / name)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
