"""Build and self-test a tiny, randomly initialised Stable Diffusion 1.5 pipeline exported to OpenVINO.

The pipeline has the SD 1.5 architecture (same block types, VAE scale factor 8, 4 latent channels, 77-token
CLIP text encoder, SD 1.5 PNDM scheduler) but tiny channel counts, so it builds offline in seconds and runs
through ``optimum.intel.OVStableDiffusionPipeline`` exactly like the real model.  Its images are noise.

Heavy imports (torch, diffusers, transformers, optimum) happen inside functions: this module is imported by
the light CLI.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aipc_chat.engines.bytelevel import bytes_to_unicode
from aipc_chat.errors import DemoModelError
from aipc_chat.tooling.builds import ensure_replaceable, move_into_place, require_files, staging_folder

__all__ = [
    "FORMAT_VERSION",
    "MARKER_NAME",
    "DemoModelError",
    "build_demo_image",
    "is_demo_image_built",
    "self_test_image",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER_NAME = "aipc_demo.json"
KIND = "sd15-tiny-random"
SEED = 20240601

MIN_SIZE = 64
MAX_SIZE = 512
SIZE_STEP = 64

_TOKENIZER_MAX_LENGTH = 77
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
_EOW = "</w>"
_NUM_MERGES = 400
_CORPUS = (
    "a photo of a cat sitting on the table next to a dog in the garden at sunset "
    "a painting of the mountains and the sea under a blue sky with white clouds "
    "portrait of a smiling woman wearing a red hat highly detailed digital art "
    "the city street at night with neon lights and rain reflections cinematic lighting "
    "an astronaut riding a horse on the moon trending on artstation oil painting "
    "a bowl of fresh fruit on a wooden kitchen table still life studio photograph "
    "a forest landscape with a river and green trees in the morning fog fantasy "
    "a cute robot reading a book in the library illustration watercolor sketch "
    "the old castle on the hill beautiful colorful flowers in the field sharp focus "
    "a close up of an owl with yellow eyes wildlife photography high quality 4k "
)


# --------------------------------------------------------------------------------------------------- public


def is_demo_image_built(out_dir: Path) -> bool:
    """Return True when ``out_dir`` holds a finished build of the current format version."""
    marker = Path(out_dir) / MARKER_NAME
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format_version") == FORMAT_VERSION


def build_demo_image(out_dir: Path, *, force: bool = False) -> Path:
    """Build the tiny SD 1.5 OpenVINO pipeline into ``out_dir`` (no network) and return ``out_dir``."""
    out_dir = Path(out_dir)
    if not force and is_demo_image_built(out_dir):
        logger.info("demo image model already built at %s", out_dir)
        return out_dir
    ensure_replaceable(out_dir, MARKER_NAME, "demo model")
    start = time.monotonic()
    with staging_folder(out_dir, "the demo image model") as staging:
        _build_into(staging)
        _write_marker(staging, time.monotonic() - start)  # last file; the rename below publishes it atomically
        if force or not is_demo_image_built(out_dir):  # a concurrent build may have finished meanwhile
            move_into_place(staging, out_dir, MARKER_NAME, "demo model")
    logger.info("demo image model ready at %s (%.1f s)", out_dir, time.monotonic() - start)
    return out_dir


def self_test_image(model_dir: Path) -> None:
    """Load the pipeline on CPU and check seeding, dynamic sizes and non-flat output; raise DemoModelError."""
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise DemoModelError(f"no diffusers pipeline at {model_dir}")
    try:
        pipe = load_pipeline(model_dir)
        first = generate_image(pipe, width=64, height=64, seed=1)
        again = generate_image(pipe, width=64, height=64, seed=1)
        other = generate_image(pipe, width=64, height=64, seed=2)
        wide = generate_image(pipe, width=128, height=64, seed=1)
    except DemoModelError:
        raise
    except Exception as exc:
        raise DemoModelError(f"demo image pipeline at {model_dir} failed to run: {exc}") from exc
    _check_images(first, again, other, wide)
    logger.info("demo image self-test passed for %s", model_dir)


# ------------------------------------------------------------------------------------------- self-test


def load_pipeline(model_dir: Path) -> Any:
    """Load the OpenVINO pipeline on CPU with dynamic shapes and no progress bars."""
    from optimum.intel import OVStableDiffusionPipeline

    # optimum-intel never forwards requires_safety_checker=False, so diffusers always warns; mute that one.
    sd_logger = logging.getLogger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    previous = sd_logger.level
    sd_logger.setLevel(logging.ERROR)
    try:
        pipe = OVStableDiffusionPipeline.from_pretrained(model_dir, device="CPU")
    finally:
        sd_logger.setLevel(previous)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_image(pipe: Any, *, width: int, height: int, seed: int) -> Any:
    """Run two denoising steps and return the image as a uint8 HxWx3 array."""
    import numpy as np
    import torch

    result = pipe(
        prompt="a photo of a cat",
        width=width,
        height=height,
        num_inference_steps=2,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        output_type="np",
    )
    return (np.asarray(result.images[0]) * 255.0).round().clip(0, 255).astype(np.uint8)


def _check_images(first: Any, again: Any, other: Any, wide: Any) -> None:
    """Raise DemoModelError unless the self-test images have the expected properties."""
    import numpy as np

    if first.shape != (64, 64, 3):
        raise DemoModelError(f"64x64 generation returned shape {first.shape}")
    if wide.shape != (64, 128, 3):
        raise DemoModelError(f"128x64 generation returned shape {wide.shape} (expected (64, 128, 3))")
    if not np.array_equal(first, again):
        raise DemoModelError("the same seed produced different pixels")
    if np.array_equal(first, other):
        raise DemoModelError("different seeds produced identical pixels")
    if float(first.std()) < 1.0:
        raise DemoModelError(f"generated image is flat (std {float(first.std()):.3f})")


# ------------------------------------------------------------------------------------------------ build


def _build_into(staging: Path) -> None:
    """Build the torch pipeline in a temporary folder and export it to OpenVINO into ``staging``."""
    with tempfile.TemporaryDirectory(prefix="aipc-sd15-src-") as tmp, quiet_libraries():
        src = Path(tmp)
        logger.info("building tiny SD 1.5 diffusers pipeline in %s", src)
        _save_diffusers_pipeline(src)
        logger.info("exporting it to OpenVINO IR in %s", staging)
        _export_openvino(src, staging)
        copy_bpe_files(src / "tokenizer", staging / "tokenizer")
    _check_export(staging)


def _save_diffusers_pipeline(dst: Path) -> None:
    """Create the tiny SD 1.5-architecture torch pipeline and save it as a diffusers folder."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(SEED)
    tokenizer = _make_tokenizer(dst / "_bpe")
    with torch.no_grad():
        pipe = StableDiffusionPipeline(
            vae=_make_vae(),
            text_encoder=_make_text_encoder(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id),
            tokenizer=tokenizer,
            unet=_make_unet(),
            scheduler=make_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(dst, safe_serialization=True)
    copy_bpe_files(dst / "_bpe", dst / "tokenizer")
    shutil.rmtree(dst / "_bpe", ignore_errors=True)


def _make_unet() -> Any:
    """Return a UNet2DConditionModel with SD 1.5 block types and tiny channels."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED + 1)
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=1,  # one head: attention over 64x64 latents dominates the cost at 512 px
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
    ).eval()


def _make_vae() -> Any:
    """Return an AutoencoderKL with SD 1.5's four levels (scale factor 8), tiny channels, 4 latents."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED + 2)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
        act_fn="silu",
    ).eval()


def _make_text_encoder(vocab_size: int, eos_token_id: int, bos_token_id: int) -> Any:
    """Return a tiny CLIPTextModel with 77 positions."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED + 3)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_TOKENIZER_MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    return CLIPTextModel(config).eval()


def make_scheduler() -> Any:
    """Return the PNDM scheduler configured exactly like SD 1.5's."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        trained_betas=None,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )


def _make_tokenizer(work: Path) -> Any:
    """Write a small CLIP byte-level BPE vocab.json/merges.txt into ``work`` and load a CLIPTokenizer."""
    from transformers import CLIPTokenizer

    vocab, merges = _train_clip_bpe(_CORPUS, _NUM_MERGES)
    work.mkdir(parents=True, exist_ok=True)
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (work / "merges.txt").write_text(merges_text, encoding="utf-8")
    return CLIPTokenizer.from_pretrained(
        work,
        model_max_length=_TOKENIZER_MAX_LENGTH,
        unk_token=_EOS,
        bos_token=_BOS,
        eos_token=_EOS,
        pad_token=_EOS,
    )


def _train_clip_bpe(corpus: str, num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Deterministically learn CLIP-style BPE merges on ``corpus``; return (vocab, merges)."""
    byte_chars = list(bytes_to_unicode().values())
    words: Counter[tuple[str, ...]] = Counter()
    for word in corpus.lower().split():
        chars = [byte_chars[b] for b in word.encode("utf-8")]
        words[(*chars[:-1], chars[-1] + _EOW)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = Counter({_merge_pair(symbols, best): freq for symbols, freq in words.items()})
    tokens = [*byte_chars, *(c + _EOW for c in byte_chars)]
    tokens += ["".join(pair) for pair in merges]
    vocab: dict[str, int] = {}
    for token in [*tokens, _BOS, _EOS]:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every occurrence of ``pair`` in ``symbols`` by the merged symbol."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def copy_bpe_files(src: Path, dst: Path) -> None:
    """Copy vocab.json and merges.txt (CLIP's classic tokenizer files) from ``src`` to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(src / name, dst / name)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence tracer warnings and library progress bars while building (restored afterwards)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    modules = [m for m in (diffusers_logging, transformers_logging) if m.is_progress_bar_enabled()]
    for module in modules:
        module.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for module in modules:
            module.enable_progress_bar()


def _export_openvino(src: Path, dst: Path) -> None:
    """Export the diffusers folder ``src`` to an OpenVINO pipeline folder ``dst`` (dynamic shapes, fp32 IR)."""
    from optimum.exporters.openvino import main_export

    # The exporter calls gc.collect() a dozen times; freezing the objects alive now (torch, diffusers, ...)
    # keeps each of those from re-scanning ~600k objects (saves ~10% of the build time).
    gc.freeze()
    try:
        main_export(
            model_name_or_path=str(src),
            output=dst,
            task="text-to-image",
            library_name="diffusers",
            local_files_only=True,
            do_validation=False,
            no_post_process=True,
            convert_tokenizer=True,  # tokenizer/openvino_tokenizer.xml: lets openvino_genai load the folder too
        )
    finally:
        gc.unfreeze()
    _scrub_source_paths(dst)


def _scrub_source_paths(folder: Path) -> None:
    """Replace the temporary source path in the exported configs' ``_name_or_path`` by a stable name."""
    for config in [folder / "model_index.json", *folder.glob("*/config.json")]:
        data = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "_name_or_path" not in data:
            continue
        sub = config.parent.name if config.name == "config.json" else ""
        data["_name_or_path"] = f"aipc-demo/{KIND}" + (f"/{sub}" if sub else "")
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_export(folder: Path) -> None:
    """Raise DemoModelError if the exported folder misses a required file."""
    required = [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "text_encoder/openvino_model.xml",
        "unet/openvino_model.xml",
        "vae_decoder/openvino_model.xml",
        "vae_encoder/openvino_model.xml",
    ]
    require_files(folder, required)


def _folder_size(folder: Path) -> int:
    """Return the total size in bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _write_marker(folder: Path, seconds: float) -> None:
    """Write the ``aipc_demo.json`` completion marker into ``folder``."""
    marker = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "architecture": "stable-diffusion-1.5",
        "seed": SEED,
        "build_seconds": round(seconds, 3),
        "size_bytes": _folder_size(folder),
        "sizes": {"min": MIN_SIZE, "max": MAX_SIZE, "step": SIZE_STEP},
        "openvino_genai_tokenizer": (folder / "tokenizer" / "openvino_tokenizer.xml").is_file(),
        "created_unix": int(time.time()),
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


