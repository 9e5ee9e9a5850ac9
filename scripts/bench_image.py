"""Image benchmark: the two image runtimes on the same IR, raw in this process (openvino-genai's
``Text2ImagePipeline``, optimum-intel's pipeline) and through the aipc-chat server over HTTP (one server per
runtime, ``AIPC_IMAGE_RUNTIME``).

Same model, size, steps and seeds, interleaved runs; per-image and per-step latency (p50/p90), the server/raw
ratio, load time and peak RSS; optionally diffusers on PyTorch from a diffusers folder (``--torch-dir``) as the
user's alternative. Writes ``<out>.json``, ``<out>.md`` and a PNG plot.

    python scripts/bench_image.py --model demo --size 512 --steps 20 --runs 5 --out bench-results/image
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_common import (  # noqa: E402
    PeakRSS,
    machine,
    machine_line,
    plot_distributions,
    summary,
    table,
    timestamp,
    write_outputs,
)
from tests.e2e.conftest import start_server  # noqa: E402

PROMPT = "a lighthouse at dusk, detailed, soft light"


def raw_run(pipe: Any, size: int, steps: int, seed: int) -> float:
    import torch

    t0 = time.perf_counter()
    pipe(prompt=PROMPT, width=size, height=size, num_inference_steps=steps, guidance_scale=7.5,
         generator=torch.Generator(device="cpu").manual_seed(seed))
    return time.perf_counter() - t0


def genai_run(pipe: Any, size: int, steps: int, seed: int) -> float:
    import openvino_genai as ov_genai

    t0 = time.perf_counter()
    pipe.generate(PROMPT, width=size, height=size, num_inference_steps=steps, guidance_scale=7.5,
                  generator=ov_genai.CppStdGenerator(seed))
    return time.perf_counter() - t0


def server_run(base_url: str, size: int, steps: int, seed: int) -> float:
    body = {"prompt": PROMPT, "size": f"{size}x{size}", "num_inference_steps": steps, "seed": seed,
            "response_format": "url"}
    t0 = time.perf_counter()
    r = httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=3600)
    r.raise_for_status()
    return time.perf_counter() - t0


def server_img2img(base_url: str, size: int, steps: int) -> float:
    """One /sdapi/v1/img2img call (strength 0.75) on a flat picture; seconds."""
    import base64
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (size, size), (180, 60, 40)).save(png, format="PNG")
    t0 = time.perf_counter()
    r = httpx.post(f"{base_url}/sdapi/v1/img2img", timeout=3600, json={
        "prompt": "a lighthouse at dusk", "init_images": [base64.b64encode(png.getvalue()).decode()],
        "denoising_strength": 0.75, "width": size, "height": size, "steps": steps, "seed": 1})
    r.raise_for_status()
    return time.perf_counter() - t0


def torch_runs(torch_dir: Path, size: int, steps: int, runs: int) -> tuple[list[float], float]:
    """diffusers on PyTorch (CPU, fp32), the way a user without OpenVINO runs the same pipeline: per-image
    seconds (after one warm-up image) and the load time."""
    import torch
    from diffusers import StableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(str(torch_dir), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t0
    out = []
    with torch.inference_mode():
        for seed in range(runs + 1):  # the first image is warm-up
            t0 = time.perf_counter()
            pipe(prompt=PROMPT, width=size, height=size, num_inference_steps=steps, guidance_scale=7.5,
                 generator=torch.Generator().manual_seed(seed))
            if seed:
                out.append(time.perf_counter() - t0)
    return out, load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="demo, bench, or a model folder")
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch-dir", help="a diffusers folder of the same pipeline, to time PyTorch too "
                        "(default with --model bench: <models>/bench/image-torch when `aipc-chat bench-models "
                        "--torch` built it)")
    parser.add_argument("--torch-runs", type=int, default=1, help="PyTorch images to time (after a warm-up one)")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "image"))
    args = parser.parse_args()
    from optimum.intel import OVStableDiffusionPipeline

    models = Path(args.models_dir)
    model_dir = {"demo": models / "demo" / "image", "bench": models / "bench" / "image"}.get(args.model,
                                                                                              Path(args.model))
    torch_dir = Path(args.torch_dir) if args.torch_dir else None
    if torch_dir is None and args.model == "bench" and (models / "bench" / "image-torch" / "aipc_bench.json").is_file():
        torch_dir = models / "bench" / "image-torch"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"AIPC_IMAGE_PATH": str(model_dir)}
    if (model_dir.parent / "llm").is_dir():
        env["AIPC_LLM_PATH"] = str(model_dir.parent / "llm")
    import openvino_genai as ov_genai

    server = start_server(models, out.parent / "bench-data", out.with_suffix(".server.log"), env=env,
                          ready_timeout=900)
    optimum = start_server(models, out.parent / "bench-data-optimum", out.with_suffix(".optimum.log"),
                           env={**env, "AIPC_IMAGE_RUNTIME": "optimum"}, ready_timeout=900)
    try:
        with PeakRSS(server.proc.pid) as server_rss, PeakRSS(optimum.proc.pid) as optimum_rss:
            load = httpx.get(f"{server.base_url}/ready").json()["models"]["image"]["load_seconds"]
            optimum_load = httpx.get(f"{optimum.base_url}/ready").json()["models"]["image"]["load_seconds"]
            t0 = time.perf_counter()
            pipe = OVStableDiffusionPipeline.from_pretrained(str(model_dir), device="CPU")
            pipe.set_progress_bar_config(disable=True)
            raw_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            genai_pipe = ov_genai.Text2ImagePipeline(str(model_dir), "CPU")
            genai_load = time.perf_counter() - t0
            raw, genai, srv, srv_optimum = [], [], [], []
            for i in range(args.runs + 1):  # the first round is warm-up
                r = raw_run(pipe, args.size, args.steps, seed=i)
                g = genai_run(genai_pipe, args.size, args.steps, seed=i)
                s = server_run(server.base_url, args.size, args.steps, seed=i)
                o = server_run(optimum.base_url, args.size, args.steps, seed=i)
                if i:
                    raw.append(r)
                    genai.append(g)
                    srv.append(s)
                    srv_optimum.append(o)
            # Image to image runs on the components already loaded: the server's RSS should not grow by a model.
            proc = psutil.Process(server.proc.pid)
            rss_before = proc.memory_info().rss
            img2img_first = server_img2img(server.base_url, args.size, args.steps)
            img2img_rss = (proc.memory_info().rss - rss_before) / 2**20
            img2img_second = server_img2img(server.base_url, args.size, args.steps)
    finally:
        server.stop()
        optimum.stop()
    del pipe, genai_pipe  # PyTorch runs alone
    torch_s, torch_load = torch_runs(torch_dir, args.size, args.steps, args.torch_runs) if torch_dir else ([], None)
    result: dict[str, Any] = {
        "when": timestamp(), "machine": machine(), "model": str(model_dir), "size": args.size, "steps": args.steps,
        "runs": args.runs, "raw_s": summary(raw), "server_s": summary(srv), "torch_s": summary(torch_s),
        "raw_step_ms": summary([x / args.steps * 1e3 for x in raw]),
        "server_step_ms": summary([x / args.steps * 1e3 for x in srv]),
        "load_s": {"raw": raw_load, "server": load, "torch": torch_load},
        "peak_rss_mib_server": server_rss.peak / 2**20,
        "img2img_s": {"first": img2img_first, "second": img2img_second}, "img2img_rss_growth_mib": img2img_rss,
        "raw_runs": raw, "server_runs": srv, "torch_runs": torch_s,
        "genai_s": summary(genai), "server_optimum_s": summary(srv_optimum), "genai_runs": genai,
        "server_optimum_runs": srv_optimum, "peak_rss_mib_server_optimum": optimum_rss.peak / 2**20,
        "load_s_genai": {"raw": genai_load, "server_optimum": optimum_load},
    }
    result["genai_vs_optimum_raw"] = result["genai_s"]["p50"] / result["raw_s"]["p50"]
    result["genai_vs_optimum_server"] = result["server_s"]["p50"] / result["server_optimum_s"]["p50"]
    result["ratio"] = result["server_s"]["p50"] / result["raw_s"]["p50"]
    if torch_s:
        result["openvino_speedup_vs_torch"] = result["torch_s"]["p50"] / result["raw_s"]["p50"]
    plot_distributions(out.with_suffix(".latency.png"), f"Image latency, {args.size}x{args.size}, {args.steps} steps",
                       "s", {k: v for k, v in (("raw optimum-intel", raw), ("server", srv), ("PyTorch", torch_s)) if v})
    write_outputs(result, out, markdown(result))
    print(markdown(result))  # noqa: T201
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown."""
    rows = [["raw optimum-intel (OpenVINO)", r["raw_s"]["p50"], r["raw_s"]["p90"], r["raw_step_ms"]["p50"]],
            ["raw openvino-genai", r["genai_s"]["p50"], r["genai_s"]["p90"], r["genai_s"]["p50"] / r["steps"] * 1e3],
            ["server, genai runtime (default)", r["server_s"]["p50"], r["server_s"]["p90"],
             r["server_step_ms"]["p50"]],
            ["server, optimum runtime", r["server_optimum_s"]["p50"], r["server_optimum_s"]["p90"],
             r["server_optimum_s"]["p50"] / r["steps"] * 1e3]]
    if r["torch_runs"]:
        rows.append(["diffusers on PyTorch", r["torch_s"]["p50"], r["torch_s"]["p90"],
                     r["torch_s"]["p50"] / r["steps"] * 1e3])
    extra = (f"; OpenVINO is {r['openvino_speedup_vs_torch']:.2f}x PyTorch (PyTorch load "
             f"{r['load_s']['torch']:.1f} s)" if r["torch_runs"] else "")
    return (f"# Image benchmark ({r['when']})\n\n{machine_line(r['machine'])}; model `{r['model']}`; "
            f"{r['size']}x{r['size']}, {r['steps']} steps, {r['runs']} interleaved runs.\n\n"
            + table(["path", "per image p50 s", "p90 s", "per step p50 ms"], rows)
            + f"\n\nserver (genai)/raw optimum **{r['ratio']:.3f}**{extra}; load raw {r['load_s']['raw']:.2f} s, "
              "server "
              f"{r['load_s']['server']} s; server peak RSS {r['peak_rss_mib_server']:.0f} MiB.\n\n"
              f"genai/optimum per picture: raw **{r['genai_vs_optimum_raw']:.3f}**, servers "
              f"**{r['genai_vs_optimum_server']:.3f}**; peak RSS of the servers: genai "
              f"{r['peak_rss_mib_server']:.0f} MiB, optimum {r['peak_rss_mib_server_optimum']:.0f} MiB.\n\n"
              f"img2img (strength 0.75, so {round(r['steps'] * 0.75)} of {r['steps']} steps): first "
              f"{r['img2img_s']['first']:.2f} s, second {r['img2img_s']['second']:.2f} s; server RSS growth over the "
              f"first {r['img2img_rss_growth_mib']:.0f} MiB (the same compiled models: no second copy).\n")


if __name__ == "__main__":
    sys.exit(main())
