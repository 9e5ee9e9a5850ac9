"""Convert a Hugging Face model (hub id or local folder) to an OpenVINO model folder under ``<models>/converted``.

LLM: ``OVModelForCausalLM`` export with NNCF weight compression (INT4 by default: symmetric, group size 128 or the
largest of 128/64/32 that divides the layer widths, every layer in INT4), plus the tokenizer/detokenizer IR that
openvino-genai needs. Image: the Stable Diffusion pipeline exported with FP16 weights (default, optimum-cli's
``--weight-format fp16``) or INT8 weight-only compression (like ``OpenVINO/stable-diffusion-v1-5-int8-ov``).
The model is built in a temporary sibling folder, smoke-tested, given an ``aipc_manifest.json`` and renamed into
place, so ``<models>/converted/<name>`` is either absent or complete.

Heavy imports (torch, optimum, openvino) happen inside functions: the CLI imports this module.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from aipc_chat.errors import ConversionFailed, ModelSetupError
from aipc_chat.provision.hub import MANIFEST_NAME, explain_hub_failure, file_entries, write_manifest
from aipc_chat.provision.resolve import REQUIRED_FILES

__all__ = ["DEFAULT_WEIGHT_FORMAT", "WEIGHT_FORMATS", "convert_model", "default_name", "pick_group_size"]

logger = logging.getLogger(__name__)

Kind = Literal["llm", "image"]

WEIGHT_FORMATS: dict[Kind, tuple[str, ...]] = {"llm": ("int4", "int8", "fp16"), "image": ("fp16", "int8", "fp32")}
DEFAULT_WEIGHT_FORMAT: dict[Kind, str] = {"llm": "int4", "image": "fp16"}
GROUP_SIZES = (128, 64, 32)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HUB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def default_name(source: str, weight_format: str) -> str:
    """``<model name>-<weight format>-ov``, the naming of the OpenVINO organisation on the hub."""
    return f"{source.rstrip('/').replace(os.sep, '/').rsplit('/', 1)[-1]}-{weight_format}-ov"


def pick_group_size(widths: list[int], requested: int | None = None) -> int:
    """The INT4 group size: ``requested`` if it divides every layer width, else the largest of 128/64/32 that does."""
    if requested is not None:
        if requested != -1 and any(w % requested for w in widths):
            raise ModelSetupError(f"group size {requested} does not divide the layer widths {sorted(set(widths))}; "
                                  f"use one that does, e.g. {pick_group_size(widths)}.")
        return requested
    for size in GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    return -1  # per-channel: no group size fits these widths


def convert_model(
    source: str,
    kind: Kind,
    models_dir: Path,
    *,
    weight_format: str | None = None,
    name: str | None = None,
    group_size: int | None = None,
    ratio: float = 1.0,
    sym: bool = True,
    all_layers: bool = True,
    token: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    self_test: bool = True,
) -> Path:
    """Convert ``source`` (hub id or folder) into ``<models_dir>/converted/<name>``; return that folder.

    ``group_size``, ``ratio`` (share of layers in INT4, the rest INT8), ``sym`` and ``all_layers`` (the embeddings
    and the output head in INT4 too, not INT8) apply to INT4 LLMs only. The defaults, symmetric INT4 for every
    layer, decode fastest on CPU (docs/benchmarks.md, issue #21); ``sym=False, all_layers=False`` is optimum-cli's
    default, slower and, on the one real model checked, no more accurate than symmetric.
    """
    weight_format = weight_format or DEFAULT_WEIGHT_FORMAT[kind]
    if weight_format not in WEIGHT_FORMATS[kind]:
        raise ModelSetupError(f"weight format {weight_format!r} is not one of {', '.join(WEIGHT_FORMATS[kind])} "
                              f"for an {kind} model")
    src = _source(source)
    name = name or default_name(source, weight_format)
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ModelSetupError(f"{name!r} is not a usable folder name (letters, digits, '.', '_' and '-')")
    out_dir = Path(models_dir) / "converted" / name
    if out_dir.exists() and not overwrite:
        raise ModelSetupError(f"{out_dir} already exists: pick another --name or pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.converting-", dir=out_dir.parent))
    start = time.monotonic()
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the published folder is an ordinary one
        with _quiet_export():
            if kind == "llm":
                facts = _convert_llm(src, staging, weight_format, group_size, ratio, sym, all_layers, token,
                                     revision)
            else:
                facts = _convert_image(src, staging, weight_format, token, revision)
        _check_files(staging, kind)
        if self_test:
            _smoke_test(staging, kind)
        write_manifest(staging, file_entries(staging), source="converted", kind=kind, repo=src, revision=revision,
                       commit=None, weight_format=weight_format, convert_seconds=round(time.monotonic() - start, 1),
                       converted_with=_versions(), **facts)
        _publish(staging, out_dir)
    except BaseException as exc:  # Ctrl-C too: never leave a half-built folder behind
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, ModelSetupError) or not isinstance(exc, Exception):
            raise
        mapped = explain_hub_failure(exc, source, revision=revision or "main", kind=kind, token=token,
                                     dest=out_dir)
        if mapped is not None:
            raise mapped from exc
        raise ConversionFailed(f"converting {source} ({kind}, {weight_format}) failed: {type(exc).__name__}: "
                               f"{exc}") from exc
    logger.info("converted %s to %s in %.1f s", source, out_dir, time.monotonic() - start)
    return out_dir


# ------------------------------------------------------------------------------------------------ helpers


def _source(source: str) -> str:
    """A local folder as an absolute path, or a hub id as given; refuse anything else."""
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if _HUB_ID_RE.fullmatch(source):
        return source
    raise ModelSetupError(f"{source!r} is neither a model folder nor a hub id like 'owner/name'")


def _convert_llm(src: str, out: Path, weight_format: str, group_size: int | None, ratio: float, sym: bool,
                 all_layers: bool, token: str | None, revision: str | None) -> dict[str, Any]:
    """Export a causal LM with compressed weights, then its tokenizer and detokenizer IR."""
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig
    from transformers import AutoConfig, AutoTokenizer

    hub_args: dict[str, Any] = {"token": token, "revision": revision}
    facts: dict[str, Any] = {}
    if weight_format == "int4":
        config = AutoConfig.from_pretrained(src, **hub_args)
        size = pick_group_size(_layer_widths(config), group_size)
        options: dict[str, Any] = {"quantization_config": OVWeightQuantizationConfig(
            bits=4, sym=sym, group_size=size, ratio=ratio, all_layers=all_layers)}
        facts["quantization"] = {"bits": 4, "sym": sym, "group_size": size, "ratio": ratio, "all_layers": all_layers}
    elif weight_format == "int8":
        options = {"quantization_config": OVWeightQuantizationConfig(bits=8, sym=sym)}
        facts["quantization"] = {"bits": 8, "sym": sym, "group_size": -1, "ratio": 1.0}
    else:
        options = {"load_in_8bit": False}  # no automatic INT8 for >1B parameters: FP16 is asked for
    logger.info("exporting %s to OpenVINO (%s)", src, weight_format)
    model = OVModelForCausalLM.from_pretrained(src, export=True, compile=False, **hub_args, **options)
    model.save_pretrained(out)
    del model
    if weight_format == "fp16":
        _compress_to_fp16(out / "openvino_model.xml")
    tokenizer = AutoTokenizer.from_pretrained(src, **hub_args)
    tokenizer.save_pretrained(out)
    _export_tokenizer(tokenizer, out)
    forget_quantization_source(out / "openvino_config.json")
    return facts


def _layer_widths(config: Any) -> list[int]:
    """The input widths of the decoder's linear layers (what an INT4 group size must divide)."""
    text = getattr(config, "text_config", None) or config
    widths = [getattr(text, "hidden_size", 0), getattr(text, "intermediate_size", 0)]
    heads, head_dim = getattr(text, "num_attention_heads", 0), getattr(text, "head_dim", None)
    if heads and head_dim:
        widths.append(heads * head_dim)
    return [int(w) for w in widths if w]


def _export_tokenizer(tokenizer: Any, out: Path) -> None:
    """Write openvino_tokenizer/detokenizer.xml (openvino-genai reads the chat template from them)."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    tokenizer.padding_side = "left"  # as optimum-cli does for text generation
    ov_tokenizer, ov_detokenizer = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(ov_tokenizer, out / "openvino_tokenizer.xml")
    ov.save_model(ov_detokenizer, out / "openvino_detokenizer.xml")


def _convert_image(src: str, out: Path, weight_format: str, token: str | None,
                   revision: str | None) -> dict[str, Any]:
    """Export a Stable Diffusion pipeline: FP16/FP32 IR as optimum-cli does, or INT8 weight-only compression."""
    from optimum.exporters.openvino import main_export
    from optimum.exporters.openvino.__main__ import maybe_convert_tokenizers
    from optimum.intel import OVConfig, OVStableDiffusionPipeline, OVWeightQuantizationConfig

    logger.info("exporting %s to OpenVINO (%s)", src, weight_format)
    if weight_format in ("fp16", "fp32"):
        main_export(model_name_or_path=src, output=out, task="text-to-image", library_name="diffusers",
                    ov_config=OVConfig(dtype=weight_format), convert_tokenizer=True, do_validation=False,
                    no_post_process=True, token=token, revision=revision or "main")
        return {}
    pipe = OVStableDiffusionPipeline.from_pretrained(
        src, export=True, compile=False, token=token, revision=revision,
        quantization_config=OVWeightQuantizationConfig(bits=8))
    pipe.save_pretrained(out)
    maybe_convert_tokenizers("diffusers", out, model=pipe)
    return {"quantization": {"bits": 8, "sym": False, "group_size": -1, "ratio": 1.0}}


def _compress_to_fp16(xml: Path) -> None:
    """Re-save an IR with FP16 weights (what optimum-cli's ``--weight-format fp16`` writes)."""
    import openvino as ov

    model = ov.Core().read_model(xml)
    tmp = xml.with_name(f".fp16-{xml.name}")
    ov.save_model(model, tmp, compress_to_fp16=True)
    del model
    os.replace(tmp, xml)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))


def _check_files(folder: Path, kind: Kind) -> None:
    missing = [n for n in REQUIRED_FILES[kind] if not (folder / n).is_file()]
    if kind == "image":
        missing += [n for n in ("text_encoder/openvino_model.xml", "tokenizer/openvino_tokenizer.xml")
                    if not (folder / n).is_file()]
    if missing:
        raise ConversionFailed(f"the converted {kind} model lacks {', '.join(missing)}")


def _smoke_test(folder: Path, kind: Kind) -> None:
    """Load the result as the server will and generate a little; raise ConversionFailed if it cannot."""
    try:
        if kind == "llm":
            import openvino_genai as ov_genai

            pipe = ov_genai.LLMPipeline(str(folder), "CPU")
            pipe.generate("Hello", max_new_tokens=4, do_sample=False)
        else:
            from optimum.intel import OVStableDiffusionPipeline

            image_pipe = OVStableDiffusionPipeline.from_pretrained(folder, device="CPU")
            image_pipe.set_progress_bar_config(disable=True)
            image_pipe("a test", width=64, height=64, num_inference_steps=1, output_type="np")
    except Exception as exc:
        raise ConversionFailed(f"the converted {kind} model does not run: {type(exc).__name__}: {exc}") from exc
    logger.info("the converted %s model at %s loads and generates", kind, folder)


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``, replacing (then deleting) an earlier conversion."""
    old: Path | None = None
    if out_dir.exists():
        if not (out_dir / MANIFEST_NAME).is_file() and any(out_dir.iterdir()):
            raise ModelSetupError(f"refusing to replace {out_dir}: it is not a converted model folder")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("optimum-intel", "openvino", "openvino-tokenizers", "nncf", "transformers", "diffusers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Hide torch tracer warnings, and spare the exporter's many gc.collect() calls the objects alive now."""
    gc.freeze()  # about a third of a small export's time is spent re-scanning torch's and diffusers' objects
    try:
        with warnings.catch_warnings():
            from torch.jit import TracerWarning

            warnings.simplefilter("ignore", TracerWarning)
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
            yield
    finally:
        gc.unfreeze()


def forget_quantization_source(config_path: Path) -> None:
    """Drop the source folder optimum records as the quantization "tokenizer" (a temporary or private path)."""
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict) and "tokenizer" in quantization:
        quantization["tokenizer"] = None
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
