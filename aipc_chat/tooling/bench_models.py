"""Build and self-test full-size, random-weight benchmark models with the exact shapes of the real ones.

``build_bench_llm`` makes a ``Qwen2ForCausalLM`` with DeepSeek-R1-Distill-Qwen-1.5B's exact architecture and a
151936-entry byte-level BPE tokenizer (synthetic merges, DeepSeek-R1 special tokens at their real ids, the
DeepSeek-R1 chat template), exported to INT4 OpenVINO IR plus tokenizer/detokenizer IR.  ``build_bench_image``
makes Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text tower, 49408-entry CLIP tokenizer, SD 1.5's PNDM
scheduler) exported with INT8 weights.  Both are random, so their output is noise, but they cost exactly what
the real models cost: they exist to measure speed and memory offline.  Builds are deterministic, staged in a
sibling folder, published by a rename and marked complete by an ``aipc_bench.json`` written last.

Heavy imports (torch, transformers, diffusers, optimum, openvino) happen inside functions: this module is
imported by the light CLI.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import shutil
import string
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from aipc_chat.engines.bytelevel import bytes_to_unicode
from aipc_chat.errors import DemoModelError
from aipc_chat.tooling.builds import (
    check_chat_tokenizer,
    ensure_replaceable,
    finish_llm_export,
    move_into_place,
    qwen2_byte_level,
    require_files,
    staging_folder,
)
from aipc_chat.tooling.demo_image import (
    copy_bpe_files,
    generate_image,
    load_pipeline,
    make_scheduler,
    quiet_libraries,
)
from aipc_chat.tooling.demo_llm import (
    ASSISTANT_TOKEN,
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    QWEN2_SPLIT,
    THINK_CLOSE,
    THINK_OPEN,
    USER_TOKEN,
)

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_KIND",
    "LLM_KIND",
    "MARKER_NAME",
    "DemoModelError",
    "build_bench_image",
    "build_bench_image_torch",
    "build_bench_llm",
    "is_bench_image_built",
    "is_bench_llm_built",
    "main",
    "self_test_bench_image",
    "self_test_bench_image_torch",
    "self_test_bench_llm",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER_NAME = "aipc_bench.json"
LLM_KIND = "deepseek-r1-distill-qwen-1.5b-random-int4-sym-all"  # the format in the name: an older build is rebuilt
IMAGE_KIND = "sd15-random-int8"
TORCH_IMAGE_KIND = "sd15-random-diffusers-fp32"
SEED = 20250120

# ------------------------------------------------------------------- DeepSeek-R1-Distill-Qwen-1.5B (config.json)
LLM_VOCAB = 151936
LLM_HIDDEN = 1536
LLM_INTERMEDIATE = 8960
LLM_LAYERS = 28
LLM_HEADS = 12
LLM_KV_HEADS = 2
LLM_MAX_POSITIONS = 131072
LLM_CONTEXT = 16384  # the real tokenizer's model_max_length: what serving should assume usable
LLM_INIT_STD = 0.02
LLM_INT4_GROUP = 128
# Symmetric INT4 for every layer, embeddings and output head included: what `aipc-chat convert` makes by default,
# the fastest decoding on CPU that keeps groups (docs/benchmarks.md, issue #21). optimum-cli's default is
# asymmetric with an INT8 head: 0.85x of this one's decode speed here.
LLM_INT4_SYM = True
LLM_INT4_ALL_LAYERS = True
_EOT_TOKEN = "<|EOT|>"
# The real ids: the BPE vocabulary ends at 151642, these follow; everything up to 151935 is filled with merges.
_LLM_SPECIAL_IDS: dict[int, str] = {
    151643: EOS_TOKEN,
    151644: USER_TOKEN,
    151645: ASSISTANT_TOKEN,
    151646: BOS_TOKEN,
    151647: _EOT_TOKEN,
    151648: THINK_OPEN,
    151649: THINK_CLOSE,
}
_LLM_NON_SPECIAL = (THINK_OPEN, THINK_CLOSE)
_LLM_MATRICES_PER_LAYER = 7  # q, k, v, o, gate, up, down
SELF_TEST_NEW_TOKENS = 8

# ------------------------------------------------------------------------ Stable Diffusion 1.5 (model_index.json)
CLIP_VOCAB = 49408
CLIP_MAX_LENGTH = 77
_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
_EOW = "</w>"
_SD_IMAGE_PARTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


# --------------------------------------------------------------------------------------------------- public



def peak_rss_mib() -> int | None:
    """This process's peak RSS in MiB (the build's peak when run alone); None where the OS does not say (Windows:
    ``resource`` is POSIX-only, so it is imported here, not at the top)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024))

def is_bench_llm_built(out_dir: Path) -> bool:
    """Return True when ``out_dir`` holds a finished benchmark LLM of the current format version."""
    return _marker_matches(Path(out_dir), LLM_KIND)


def is_bench_image_built(out_dir: Path) -> bool:
    """Return True when ``out_dir`` holds a finished benchmark SD 1.5 pipeline of the current format version."""
    return _marker_matches(Path(out_dir), IMAGE_KIND)


def build_bench_llm(out_dir: Path, *, force: bool = False) -> Path:
    """Build the random-weight DeepSeek-R1-Distill-Qwen-1.5B INT4 OpenVINO model into ``out_dir``; return it."""
    return _build(Path(out_dir), LLM_KIND, _build_llm_into, self_test_bench_llm, force=force)


def build_bench_image(out_dir: Path, *, force: bool = False) -> Path:
    """Build the random-weight SD 1.5 INT8 OpenVINO pipeline into ``out_dir``; return it."""
    return _build(Path(out_dir), IMAGE_KIND, _build_image_into, self_test_bench_image, force=force)


def build_bench_image_torch(out_dir: Path, *, force: bool = False) -> Path:
    """Build the same random SD 1.5 as a diffusers (PyTorch, fp32) folder: what a user without OpenVINO runs.

    The weights are the ones ``build_bench_image`` quantizes (same seeds), so the benchmark compares the two
    runtimes on one network. About 4.3 GB on disk.
    """
    return _build(Path(out_dir), TORCH_IMAGE_KIND, _build_torch_image_into, self_test_bench_image_torch,
                  force=force)


def self_test_bench_llm(model_dir: Path) -> dict[str, Any]:
    """Generate a few greedy tokens with LLMPipeline and ContinuousBatchingPipeline; return facts or raise."""
    import openvino_genai as ov_genai

    model_dir = Path(model_dir)
    if not (model_dir / "openvino_model.xml").is_file():
        raise DemoModelError(f"no OpenVINO model at {model_dir}")
    try:
        pipe = ov_genai.LLMPipeline(str(model_dir), "CPU")
        tokenizer = pipe.get_tokenizer()
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
        expected = f"{BOS_TOKEN}{USER_TOKEN}Hello{ASSISTANT_TOKEN}{THINK_OPEN}\n"
        if prompt != expected:
            raise DemoModelError(f"chat template rendered {prompt!r}, expected {expected!r}")
        ids, score = _greedy_llm(pipe, ov_genai, prompt)
        reply: str = tokenizer.decode(ids, skip_special_tokens=False)
        del pipe
        gc.collect()
        cb_ids = _greedy_continuous_batching(model_dir, ov_genai, prompt)
    except DemoModelError:
        raise
    except Exception as exc:
        raise DemoModelError(f"openvino-genai failed to run the benchmark LLM at {model_dir}: {exc}") from exc
    if cb_ids != ids:  # random logits are close together: different kernels may pick another argmax
        logger.warning("ContinuousBatchingPipeline generated %s, LLMPipeline %s", cb_ids, ids)
    logger.info("benchmark LLM self-test passed for %s: %r", model_dir, reply)
    return {"token_ids": ids, "reply": reply, "score": score, "continuous_batching_token_ids": cb_ids}


def self_test_bench_image(model_dir: Path) -> dict[str, Any]:
    """Generate one 64x64 image in two steps with OVStableDiffusionPipeline; return facts or raise."""
    import numpy as np

    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise DemoModelError(f"no diffusers pipeline at {model_dir}")
    try:
        pipe = load_pipeline(model_dir)
        start = time.monotonic()
        image = generate_image(pipe, width=64, height=64, seed=1)
        seconds = time.monotonic() - start
        tokens = len(pipe.tokenizer)
    except DemoModelError:
        raise
    except Exception as exc:
        raise DemoModelError(f"benchmark image pipeline at {model_dir} failed to run: {exc}") from exc
    if image.shape != (64, 64, 3):
        raise DemoModelError(f"64x64 generation returned shape {image.shape}")
    if float(np.asarray(image, dtype=np.float64).std()) < 1.0:
        raise DemoModelError("generated image is flat (NaN latents or a dead network)")
    if tokens != CLIP_VOCAB:
        raise DemoModelError(f"the pipeline's tokenizer has {tokens} entries, expected {CLIP_VOCAB}")
    logger.info("benchmark image self-test passed for %s (%.1f s)", model_dir, seconds)
    return {"image_shape": list(image.shape), "seconds_64px_2_steps": round(seconds, 3)}


def self_test_bench_image_torch(model_dir: Path) -> dict[str, Any]:
    """Generate one 64x64 image in two steps with diffusers on PyTorch; return facts or raise."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    model_dir = Path(model_dir)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        start = time.monotonic()
        image = pipe(prompt="a red apple", width=64, height=64, num_inference_steps=2, output_type="np",
                     generator=torch.Generator().manual_seed(1)).images[0]
        seconds = time.monotonic() - start
    except Exception as exc:
        raise DemoModelError(f"benchmark PyTorch pipeline at {model_dir} failed to run: {exc}") from exc
    if image.shape != (64, 64, 3) or not np.isfinite(image).all():
        raise DemoModelError(f"64x64 PyTorch generation returned shape {image.shape} or non-finite values")
    logger.info("benchmark PyTorch image self-test passed for %s (%.1f s)", model_dir, seconds)
    return {"image_shape": list(image.shape), "seconds_64px_2_steps": round(seconds, 3)}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m aipc_chat.tooling.bench_models {llm,image,image-torch} OUT_DIR [--force]``."""
    parser = argparse.ArgumentParser(description="Build a random-weight benchmark model (offline).")
    parser.add_argument("which", choices=("llm", "image", "image-torch"), help="which model to build")
    parser.add_argument("out_dir", type=Path, help="folder to build into")
    parser.add_argument("--force", action="store_true", help="rebuild even if a finished build is there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build = {"llm": build_bench_llm, "image": build_bench_image, "image-torch": build_bench_image_torch}[args.which]
    try:
        build(args.out_dir, force=args.force)
    except DemoModelError as exc:
        logger.error("%s", exc)
        return 1
    return 0


# ------------------------------------------------------------------------------------------ shared build


def _build(
    out_dir: Path,
    kind: str,
    build_into: Callable[[Path], dict[str, Any]],
    self_test: Callable[[Path], dict[str, Any]],
    *,
    force: bool,
) -> Path:
    """Stage, build, self-test, mark and publish one benchmark model (the common idempotent frame)."""
    if not force and _marker_matches(out_dir, kind):
        logger.info("benchmark model %s already built at %s", kind, out_dir)
        return out_dir
    ensure_replaceable(out_dir, MARKER_NAME, "benchmark model")
    start = time.monotonic()
    with staging_folder(out_dir, f"benchmark model {kind}") as staging:
        facts = build_into(staging)
        built = time.monotonic() - start
        facts["self_test"] = self_test(staging)
        facts["build_seconds"] = round(built, 3)
        facts["build_and_test_seconds"] = round(time.monotonic() - start, 3)
        _write_marker(staging, kind, facts)  # last file; the rename below publishes it atomically
        if force or not _marker_matches(out_dir, kind):  # a concurrent build may have finished meanwhile
            move_into_place(staging, out_dir, MARKER_NAME, "benchmark model")
    logger.info("benchmark model %s ready at %s (%.1f s)", kind, out_dir, time.monotonic() - start)
    return out_dir


def _marker_matches(out_dir: Path, kind: str) -> bool:
    """Return True when ``out_dir``'s marker names ``kind`` and the current format version."""
    try:
        data = json.loads((out_dir / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format_version") == FORMAT_VERSION and data.get("kind") == kind


def _write_marker(folder: Path, kind: str, facts: dict[str, Any]) -> None:
    """Write the ``aipc_bench.json`` completion marker (build facts, sizes, peak RSS) into ``folder``."""
    sizes = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    marker = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "seed": SEED,
        **facts,
        "size_bytes": sum(sizes.values()),
        "file_sizes": {name: size for name, size in sizes.items() if size >= 1 << 20},
        "process_peak_rss_mib": peak_rss_mib(),
        "created_unix": int(time.time()),
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")




def _weight_types(xml_path: Path) -> dict[str, dict[str, int]]:
    """Count the Const nodes of an IR by element type: number of constants and of elements."""
    counts: dict[str, dict[str, int]] = {}
    for layer in ET.parse(xml_path).getroot().iter("layer"):
        data = layer.find("data")
        if layer.get("type") != "Const" or data is None:
            continue
        etype = data.get("element_type", "?")
        shape = [int(d) for d in data.get("shape", "").split(",") if d.strip()]
        entry = counts.setdefault(etype, {"constants": 0, "elements": 0})
        entry["constants"] += 1
        entry["elements"] += math.prod(shape)
    return dict(sorted(counts.items()))


# ------------------------------------------------------------------------------------------------ LLM


def _build_llm_into(staging: Path) -> dict[str, Any]:
    """Make the tokenizer and the random bf16 model, export them to INT4 IR in ``staging``; return facts."""
    with tempfile.TemporaryDirectory(prefix="aipc-bench-llm-src-") as tmp:
        src = Path(tmp)
        tokenizer = _make_llm_tokenizer()
        params = _save_random_qwen2(src, tokenizer)
        logger.info("exporting the benchmark LLM to INT4 OpenVINO IR in %s", staging)
        quantization = _export_llm(src, tokenizer, staging)
    weight_types = _check_llm_export(staging)
    token_ids = _check_llm_tokenizer(staging)
    return {
        "architecture": "Qwen2ForCausalLM",
        "parameters": params,
        "config": _llm_config_facts(),
        "quantization": quantization,
        "weight_element_types": weight_types,
        "token_ids": token_ids,
    }


def _llm_config_facts() -> dict[str, Any]:
    """The architecture numbers recorded in the marker."""
    return {
        "vocab_size": LLM_VOCAB,
        "hidden_size": LLM_HIDDEN,
        "intermediate_size": LLM_INTERMEDIATE,
        "num_hidden_layers": LLM_LAYERS,
        "num_attention_heads": LLM_HEADS,
        "num_key_value_heads": LLM_KV_HEADS,
        "max_position_embeddings": LLM_MAX_POSITIONS,
        "model_max_length": LLM_CONTEXT,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "initializer_range": LLM_INIT_STD,
    }


def _llm_merges() -> Iterator[tuple[str, str]]:
    """Yield synthetic byte-level BPE merges: ASCII-letter words of 2-4 characters, with and without a space."""
    space = bytes_to_unicode()[ord(" ")]
    letters = string.ascii_letters
    yield from ((space, a) for a in letters)
    yield from ((a, b) for a in letters for b in letters)
    yield from ((space + a, b) for a in letters for b in letters)
    yield from ((a + b, c) for a in letters for b in letters for c in letters)
    yield from ((space + a + b, c) for a in letters for b in letters for c in letters)


def _llm_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return a 151936-entry vocabulary (bytes, merges, specials at DeepSeek's ids) and its merges."""
    byte_chars = list(bytes_to_unicode().values())  # id == byte value
    n_merges = LLM_VOCAB - len(byte_chars) - len(_LLM_SPECIAL_IDS)
    merges = [merge for _, merge in zip(range(n_merges), _llm_merges(), strict=False)]
    if len(merges) != n_merges:
        raise DemoModelError(f"only {len(merges)} synthetic merges, need {n_merges}")
    free_ids = (i for i in range(LLM_VOCAB) if i not in _LLM_SPECIAL_IDS)
    vocab = dict(zip([*byte_chars, *("".join(m) for m in merges)], free_ids, strict=False))
    vocab.update({token: i for i, token in _LLM_SPECIAL_IDS.items()})
    if len(vocab) != LLM_VOCAB or sorted(vocab.values()) != list(range(LLM_VOCAB)):
        raise DemoModelError("the synthetic vocabulary does not cover every id exactly once")
    return vocab, merges


def _make_llm_tokenizer() -> Any:
    """Build the Qwen2-style byte-level BPE tokenizer (151936 ids) as a PreTrainedTokenizerFast."""
    from tokenizers import AddedToken, Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _llm_vocab()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    qwen2_byte_level(tok, QWEN2_SPLIT)
    # The specials are in the BPE vocabulary too, so adding them keeps their (real DeepSeek) ids.
    specials = [t for t in _LLM_SPECIAL_IDS.values() if t not in _LLM_NON_SPECIAL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in _LLM_NON_SPECIAL])
    wrong = {t: tok.token_to_id(t) for i, t in _LLM_SPECIAL_IDS.items() if tok.token_to_id(t) != i}
    if wrong or tok.get_vocab_size() != LLM_VOCAB:
        raise DemoModelError(f"tokenizer ids are off: {wrong}, size {tok.get_vocab_size()}")
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        extra_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN, _EOT_TOKEN],
        model_max_length=LLM_CONTEXT,
        clean_up_tokenization_spaces=False,
        add_bos_token=False,  # the template writes the BOS itself (as in demo_llm: no double BOS)
        add_eos_token=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def _save_random_qwen2(dst: Path, tokenizer: Any) -> int:
    """Create the random bf16 Qwen2 model, check its logits, save it with tokenizer; return its parameter count."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    config = Qwen2Config(
        vocab_size=LLM_VOCAB,
        hidden_size=LLM_HIDDEN,
        intermediate_size=LLM_INTERMEDIATE,
        num_hidden_layers=LLM_LAYERS,
        num_attention_heads=LLM_HEADS,
        num_key_value_heads=LLM_KV_HEADS,
        hidden_act="silu",
        max_position_embeddings=LLM_MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
        sliding_window=4096,
        max_window_layers=21,
        initializer_range=LLM_INIT_STD,
        bos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),  # as in the real config.json
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        dtype="bfloat16",
    )
    start = time.monotonic()
    # Built directly in bf16 (3.6 GB) with the library's init (normal, std 0.02; RMSNorm weights 1).
    model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    params = int(sum(p.numel() for p in model.parameters()))
    logger.info("random Qwen2 with %d parameters initialised in %.1f s", params, time.monotonic() - start)
    _check_logits(model, tokenizer)
    model.generation_config = GenerationConfig(  # DeepSeek-R1-Distill-Qwen-1.5B's generation_config.json
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
    )
    model.save_pretrained(dst, safe_serialization=True)
    del model
    gc.collect()
    tokenizer.save_pretrained(dst, save_jinja_files=False)
    config_path = dst / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text(encoding="utf-8"))
    tok_config["chat_template"] = CHAT_TEMPLATE
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5 writes "TokenizersBackend"
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return params


def _check_logits(model: Any, tokenizer: Any) -> None:
    """Raise DemoModelError unless a short forward pass gives finite, non-degenerate logits."""
    import torch

    text = f"{BOS_TOKEN}{USER_TOKEN}Hello there{ASSISTANT_TOKEN}{THINK_OPEN}\n"
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    std = float(logits.std())
    if not bool(torch.isfinite(logits).all()) or not 0.01 < std < 100.0:
        raise DemoModelError(f"random model logits are unusable (std {std})")
    logger.info("random Qwen2 logits finite, std %.3f", std)


def _export_llm(src: Path, tokenizer: Any, dst: Path) -> dict[str, Any]:
    """Export ``src`` to INT4 (data-free) OpenVINO IR and tokenizer/detokenizer IR in ``dst``; return the config."""
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    quantization = OVWeightQuantizationConfig(bits=4, sym=LLM_INT4_SYM, group_size=LLM_INT4_GROUP, ratio=1.0,
                                              all_layers=LLM_INT4_ALL_LAYERS)
    # main_export once ignored the INT4 setting; from_pretrained(export=True) applies it (checked afterwards).
    gc.freeze()  # the exporter gc.collect()s often; do not re-scan the long-lived torch/transformers objects
    try:
        model = OVModelForCausalLM.from_pretrained(
            str(src), export=True, quantization_config=quantization, compile=False
        )
        model.save_pretrained(dst)
        del model
    finally:
        gc.unfreeze()
        gc.collect()
    finish_llm_export(src, dst, tokenizer)
    return {"bits": 4, "sym": LLM_INT4_SYM, "group_size": LLM_INT4_GROUP, "ratio": 1.0,
            "all_layers": LLM_INT4_ALL_LAYERS, "dataset": None}


def _check_llm_export(folder: Path) -> dict[str, dict[str, int]]:
    """Raise DemoModelError unless the export is complete and every decoder matrix is INT4; return weight types."""
    required = [
        "openvino_model.xml",
        "openvino_model.bin",
        "openvino_tokenizer.xml",
        "openvino_detokenizer.xml",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    require_files(folder, required)
    types = _weight_types(folder / "openvino_model.xml")
    int4 = {key: types.get(key, {}).get("elements", 0) for key in ("u4", "i4")}
    decoder_weights = LLM_LAYERS * (
        2 * LLM_HIDDEN * LLM_HIDDEN  # q, o
        + 2 * LLM_HIDDEN * LLM_HIDDEN * LLM_KV_HEADS // LLM_HEADS  # k, v
        + 3 * LLM_HIDDEN * LLM_INTERMEDIATE  # gate, up, down
    )
    weight_elements = int4["i4"] if LLM_INT4_SYM else int4["u4"] - decoder_weights // LLM_INT4_GROUP  # minus zps
    if weight_elements < decoder_weights:
        raise DemoModelError(f"decoder weights are not INT4 ({weight_elements} of {decoder_weights}): {types}")
    return types


def _check_llm_tokenizer(folder: Path) -> dict[str, int]:
    """Check the OpenVINO tokenizer's template, special ids and that every one of the 151936 ids decodes."""
    import openvino_genai as ov_genai

    ids = check_chat_tokenizer(folder, CHAT_TEMPLATE, (THINK_OPEN, THINK_CLOSE))
    tokenizer = ov_genai.Tokenizer(str(folder))
    decoded = tokenizer.decode([[i] for i in range(LLM_VOCAB)], skip_special_tokens=False)
    empty = [i for i, text in enumerate(decoded) if not text]
    if len(decoded) != LLM_VOCAB or empty:
        raise DemoModelError(f"{len(empty)} of {len(decoded)} token ids decode to nothing, e.g. {empty[:10]}")
    return ids


def _greedy_llm(pipe: Any, ov_genai: Any, prompt: str) -> tuple[list[int], float]:
    """Generate ``SELF_TEST_NEW_TOKENS`` greedy tokens (EOS ignored); check ids and score."""
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = SELF_TEST_NEW_TOKENS
    config.do_sample = False
    config.ignore_eos = True
    config.logprobs = 1  # without it greedy search leaves the score at 0
    config.apply_chat_template = False  # the prompt is already templated
    tokenizer = pipe.get_tokenizer()
    result = pipe.generate(tokenizer.encode(prompt, add_special_tokens=False), config)
    ids = [int(t) for t in result.tokens[0]]
    score = float(result.scores[0])
    if len(ids) != SELF_TEST_NEW_TOKENS or not all(0 <= i < LLM_VOCAB for i in ids):
        raise DemoModelError(f"LLMPipeline generated {ids}, expected {SELF_TEST_NEW_TOKENS} ids below {LLM_VOCAB}")
    if not math.isfinite(score) or score >= 0.0:
        raise DemoModelError(f"LLMPipeline's log-probability score is {score}: NaN or degenerate logits")
    return ids, score


def _greedy_continuous_batching(model_dir: Path, ov_genai: Any, prompt: str) -> list[int]:
    """Run ``prompt`` through ContinuousBatchingPipeline step by step; return the greedy ids."""
    pipe = ov_genai.ContinuousBatchingPipeline(str(model_dir), ov_genai.SchedulerConfig(), "CPU")
    config = ov_genai.GenerationConfig()
    config.max_new_tokens = SELF_TEST_NEW_TOKENS
    config.ignore_eos = True
    config.apply_chat_template = False
    handle = pipe.add_request(0, prompt, config)
    ids: list[int] = []
    while pipe.has_non_finished_requests():
        pipe.step()
        while handle.can_read():
            for output in handle.read().values():
                ids += [int(t) for t in output.generated_ids]
    if len(ids) != SELF_TEST_NEW_TOKENS:
        raise DemoModelError(f"ContinuousBatchingPipeline generated {ids}, expected {SELF_TEST_NEW_TOKENS} ids")
    return ids


# ------------------------------------------------------------------------------------------------ image


def _build_image_into(staging: Path) -> dict[str, Any]:
    """Build the random SD 1.5 diffusers pipeline, export it with INT8 weights into ``staging``; return facts."""
    with tempfile.TemporaryDirectory(prefix="aipc-bench-sd15-src-") as tmp, quiet_libraries():
        src = Path(tmp)
        params = _save_random_sd15(src)
        logger.info("exporting the benchmark SD 1.5 pipeline (INT8 weights) to %s", staging)
        _export_image(src, staging)
    weight_types = _check_image_export(staging)
    return {
        "architecture": "stable-diffusion-1.5",
        "parameters": params,
        "config": {"unet": _unet_config(), "vae": _vae_config(), "text_encoder": _text_config()},
        "quantization": {"bits": 8, "sym": False, "weights_only": True, "dataset": None},
        "weight_element_types": weight_types,
    }


def _build_torch_image_into(staging: Path) -> dict[str, Any]:
    """Save the random SD 1.5 diffusers pipeline (fp32 safetensors) into ``staging``; return facts."""
    with quiet_libraries():
        params = _save_random_sd15(staging)
    return {"architecture": "stable-diffusion-1.5", "parameters": params, "format": "diffusers, fp32 safetensors"}


def _unet_config() -> dict[str, Any]:
    """SD 1.5's unet/config.json."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def _vae_config() -> dict[str, Any]:
    """SD 1.5's vae/config.json."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }


def _text_config() -> dict[str, Any]:
    """SD 1.5's text_encoder/config.json (CLIP ViT-L/14 text tower), with the tokenizer's bos/eos ids."""
    return {
        "vocab_size": CLIP_VOCAB,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": CLIP_MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": CLIP_VOCAB - 2,
        "eos_token_id": CLIP_VOCAB - 1,
        "pad_token_id": CLIP_VOCAB - 1,
    }


def _save_random_sd15(dst: Path) -> dict[str, int]:
    """Create the random fp32 SD 1.5 pipeline and save it as a diffusers folder; return parameter counts."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _make_clip_tokenizer(dst / "_bpe")
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel(**_unet_config()).eval()
    torch.manual_seed(SEED + 2)
    vae = AutoencoderKL(**_vae_config()).eval()
    torch.manual_seed(SEED + 3)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config())).eval()
    params = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))
    }
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dst, safe_serialization=True)
    del pipe, unet, vae, text_encoder
    gc.collect()
    copy_bpe_files(dst / "_bpe", dst / "tokenizer")
    shutil.rmtree(dst / "_bpe", ignore_errors=True)
    return params


def _clip_merges() -> Iterator[tuple[str, str]]:
    """Yield synthetic CLIP BPE merges: lowercase words of 2-4 letters, inside a word and word-final."""
    letters = string.ascii_lowercase
    for stems in (
        letters,
        [a + b for a in letters for b in letters],
        [a + b + c for a in letters for b in letters for c in letters],
    ):
        for stem in stems:
            yield from ((stem, c) for c in letters)
            yield from ((stem, c + _EOW) for c in letters)


def _make_clip_tokenizer(work: Path) -> Any:
    """Write a 49408-entry CLIP vocab.json/merges.txt (like demo_image's) into ``work``; load a CLIPTokenizer."""
    from transformers import CLIPTokenizer

    byte_chars = list(bytes_to_unicode().values())
    tokens = [*byte_chars, *(c + _EOW for c in byte_chars)]
    n_merges = CLIP_VOCAB - len(tokens) - 2  # 48894, as in openai/clip-vit-large-patch14
    merges = [merge for _, merge in zip(range(n_merges), _clip_merges(), strict=False)]
    vocab: dict[str, int] = {}
    for token in [*tokens, *("".join(m) for m in merges), _CLIP_BOS, _CLIP_EOS]:
        vocab.setdefault(token, len(vocab))
    if len(merges) != n_merges or len(vocab) != CLIP_VOCAB:
        raise DemoModelError(f"synthetic CLIP vocabulary has {len(vocab)} entries, {len(merges)} merges")
    work.mkdir(parents=True, exist_ok=True)
    (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (work / "merges.txt").write_text(merges_text, encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(
        work,
        model_max_length=CLIP_MAX_LENGTH,
        unk_token=_CLIP_EOS,
        bos_token=_CLIP_BOS,
        eos_token=_CLIP_EOS,
        pad_token=_CLIP_EOS,
    )
    if len(tokenizer) != CLIP_VOCAB:
        raise DemoModelError(f"CLIPTokenizer has {len(tokenizer)} entries, expected {CLIP_VOCAB}")
    return tokenizer


def _export_image(src: Path, dst: Path) -> None:
    """Export the diffusers folder ``src`` to OpenVINO with INT8 weights, plus the OpenVINO tokenizer, into ``dst``."""
    from optimum.exporters.openvino.convert import export_tokenizer
    from optimum.intel import OVStableDiffusionPipeline, OVWeightQuantizationConfig

    gc.freeze()
    try:
        pipe = OVStableDiffusionPipeline.from_pretrained(
            src, export=True, quantization_config=OVWeightQuantizationConfig(bits=8), compile=False
        )
        pipe.save_pretrained(dst)
        # What main_export(convert_tokenizer=True) writes: lets openvino_genai load the folder too.
        export_tokenizer(pipe.tokenizer, dst / "tokenizer")
        del pipe
    finally:
        gc.unfreeze()
        gc.collect()
    copy_bpe_files(src / "tokenizer", dst / "tokenizer")
    for config in [dst / "model_index.json", *dst.glob("*/config.json")]:
        data = json.loads(config.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "_name_or_path" in data:  # the deleted temporary source folder
            sub = config.parent.name if config.name == "config.json" else ""
            data["_name_or_path"] = f"aipc-bench/{IMAGE_KIND}" + (f"/{sub}" if sub else "")
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_image_export(folder: Path) -> dict[str, dict[str, dict[str, int]]]:
    """Raise DemoModelError unless every part is exported and the UNet's weights are INT8; return weight types."""
    required = [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/openvino_tokenizer.xml",
        *(f"{part}/openvino_model.xml" for part in _SD_IMAGE_PARTS),
    ]
    require_files(folder, required)
    types = {part: _weight_types(folder / part / "openvino_model.xml") for part in _SD_IMAGE_PARTS}
    unet: Counter[str] = Counter({key: value["elements"] for key, value in types["unet"].items()})
    if unet["u8"] + unet["i8"] < 0.9 * sum(unet.values()):
        raise DemoModelError(f"UNet weights are not INT8: {types['unet']}")
    return types


if __name__ == "__main__":
    sys.exit(main())
