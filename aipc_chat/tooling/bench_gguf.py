"""The shape-alike benchmark LLM as a llama.cpp GGUF file, from the same random weights as ``bench/llm``.

llama.cpp is what Ollama runs, so ``make bench-full`` times it beside openvino-genai on one network. The random
bf16 Qwen2 is made again from the same seed (``bench_models._save_random_qwen2``), converted to an F16 GGUF by
llama.cpp's own ``convert_hf_to_gguf.py`` (from the llama-cpp-python source distribution, which pip fetches; the
synthetic tokenizer is declared a ``qwen2`` pre-tokenizer, which it is), and quantized with
``llama_cpp.llama_model_quantize``. llama-cpp-python is an optional benchmark dependency (``pip install
.[bench]``), never a runtime one.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

from aipc_chat.errors import DemoModelError

log = logging.getLogger(__name__)

GGUF_KIND = "deepseek-r1-distill-qwen-1.5b-random-gguf"
QUANT_TYPES = {"Q4_0": 2, "Q4_K_M": 15, "Q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* values
MARKER = "aipc_bench_gguf.json"
# Run as ``python -c``: llama.cpp's converter, with the synthetic tokenizer's pre-tokenizer named (its hash of a
# test string is unknown to the converter; the split regex is Qwen2's).
_CONVERT = """
import sys
sys.path[:0] = [{root!r}, {gguf!r}]
sys.argv = ["convert_hf_to_gguf.py", *{args!r}]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
import convert_hf_to_gguf
convert_hf_to_gguf.main()
"""


def gguf_path(out_dir: Path, quant: str = "Q4_0") -> Path:
    """Where the GGUF of one quantization lives."""
    return out_dir / f"model-{quant}.gguf"


def build_bench_llm_gguf(out_dir: Path, *, quants: tuple[str, ...] = ("Q4_0",), force: bool = False) -> Path:
    """Write ``<out_dir>/model-<quant>.gguf`` for each of ``quants``; return the first."""
    out_dir = Path(out_dir)
    wanted = [q for q in quants if force or not gguf_path(out_dir, q).is_file()]
    if not wanted:
        log.info("benchmark GGUF already built at %s", out_dir)
        return gguf_path(out_dir, quants[0])
    llama_cpp = _llama_cpp()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aipc-bench-gguf-", dir=out_dir) as tmp:
        work = Path(tmp)
        converter = _converter(work / "llama.cpp")
        f16 = work / "model-F16.gguf"
        _convert(_hf_source(work / "src"), f16, converter)
        for quant in wanted:
            target = gguf_path(out_dir, quant)
            _quantize(llama_cpp, f16, target.with_suffix(".part"), quant)
            target.with_suffix(".part").replace(target)
    facts = {"kind": GGUF_KIND, "quants": {q: gguf_path(out_dir, q).stat().st_size for q in quants},
             "llama_cpp_python": metadata.version("llama-cpp-python"), "seconds": round(time.monotonic() - t0, 1)}
    (out_dir / MARKER).write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    log.info("benchmark GGUF %s ready in %s (%.0f s)", ", ".join(wanted), out_dir, facts["seconds"])
    return gguf_path(out_dir, quants[0])


def _llama_cpp() -> object:
    try:
        import llama_cpp
    except ImportError:
        raise DemoModelError("llama-cpp-python is needed to build the benchmark GGUF: pip install "
                             "'aipc-chat[bench]' (it compiles llama.cpp, about 4 minutes)") from None
    return llama_cpp


def _hf_source(dst: Path) -> Path:
    """The random bf16 Qwen2 of ``bench/llm`` (same seed), as a transformers folder."""
    from aipc_chat.tooling import bench_models

    dst.mkdir(parents=True)
    bench_models._save_random_qwen2(dst, bench_models._make_llm_tokenizer())
    return dst


def _converter(dst: Path) -> Path:
    """llama.cpp's converter and its gguf-py, from the installed llama-cpp-python's source distribution."""
    version = metadata.version("llama-cpp-python")
    sdist_dir = dst.parent / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary",
                    ":all:", "--no-deps", "--quiet", "-d", str(sdist_dir)], check=True)
    archive = next(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (
            m.name.endswith("convert_hf_to_gguf.py") or "/conversion/" in m.name or "/gguf-py/" in m.name)]
        for member in members:
            member.name = member.name.removeprefix(prefix)
        tar.extractall(dst, members=members, filter="data")
    return dst


def _convert(src: Path, out: Path, converter: Path) -> None:
    code = _CONVERT.format(root=str(converter), gguf=str(converter / "gguf-py"),
                           args=[str(src), "--outtype", "f16", "--outfile", str(out)])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0 or not out.is_file():
        raise DemoModelError(f"llama.cpp's converter failed: {result.stderr.strip().splitlines()[-1:]}")


def _quantize(llama_cpp: object, src: Path, dst: Path, quant: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()  # type: ignore[attr-defined]
    params.ftype = QUANT_TYPES[quant]
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params) != 0:  # type: ignore[attr-defined]
        raise DemoModelError(f"quantizing the benchmark GGUF to {quant} failed")
