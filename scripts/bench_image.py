"""Image latency: the raw optimum-intel pipeline in this process vs the aipc-chat server over HTTP.

Same model, size, steps and seeds, interleaved runs; medians and the server/raw ratio.

    python scripts/bench_image.py --size 256 --steps 20 --runs 5 --out bench-results/image.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_llm import machine  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402


def raw_run(pipe: Any, size: int, steps: int, seed: int) -> float:
    import torch

    t0 = time.perf_counter()
    pipe(prompt="a lighthouse at dusk", width=size, height=size, num_inference_steps=steps, guidance_scale=7.5,
         generator=torch.Generator(device="cpu").manual_seed(seed))
    return time.perf_counter() - t0


def server_run(base_url: str, size: int, steps: int, seed: int) -> float:
    body = {"prompt": "a lighthouse at dusk", "size": f"{size}x{size}", "num_inference_steps": steps, "seed": seed,
            "response_format": "url"}
    t0 = time.perf_counter()
    r = httpx.post(f"{base_url}/v1/images/generations", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench-results" / "image.json"))
    args = parser.parse_args()
    from optimum.intel import OVStableDiffusionPipeline

    models = Path(args.models_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    server = start_server(models, out.parent / "bench-data", out.parent / "bench-image-server.log")
    try:
        pipe = OVStableDiffusionPipeline.from_pretrained(str(models / "demo" / "image"), device="CPU")
        raw, srv = [], []
        for i in range(args.runs + 1):  # the first round is warm-up
            r = raw_run(pipe, args.size, args.steps, seed=i)
            s = server_run(server.base_url, args.size, args.steps, seed=i)
            if i:
                raw.append(r)
                srv.append(s)
    finally:
        server.stop()
    result = {"machine": machine(), "size": args.size, "steps": args.steps, "runs": args.runs,
              "raw_s": statistics.median(raw), "server_s": statistics.median(srv), "raw_runs": raw,
              "server_runs": srv}
    result["ratio"] = result["server_s"] / result["raw_s"]
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("size", "steps", "raw_s", "server_s", "ratio")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
