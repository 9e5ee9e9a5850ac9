"""OpenVINO CPU runtime options one at a time, on one LLM IR: single-stream decode and TTFT through the server's own
``ContinuousBatchingPipeline`` configuration plus each option (docs/benchmarks.md, issue #21).

    python scripts/bench_ov_options.py models/bench/llm
    python scripts/bench_ov_options.py models/bench/llm server dq128 kv_f16
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OPTIONS: dict[str, dict[str, str]] = {
    "server": {},
    "dq0": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"},
    "dq64": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "64"},
    "dq128": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "128"},
    "kv_f16": {"KV_CACHE_PRECISION": "f16"},
    "kv_u4": {"KEY_CACHE_PRECISION": "u4", "VALUE_CACHE_PRECISION": "u4"},
    "f32": {"INFERENCE_PRECISION_HINT": "f32"},
    "latency": {"PERFORMANCE_HINT": "LATENCY"},
}


def run(pipe: Any, ids: list[int], request: int, max_tokens: int) -> tuple[float, float]:
    """(decode tok/s, TTFT s) of one greedy request."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig(max_new_tokens=max_tokens, ignore_eos=True, do_sample=False)
    t0 = time.perf_counter()
    handle = pipe.add_request(request, ov.Tensor(np.asarray([ids], dtype=np.int64)), config)
    stamps: list[float] = []
    while pipe.has_non_finished_requests():
        pipe.step()
        now = time.perf_counter()
        while handle.can_read():
            for out in handle.read().values():
                stamps.extend([now] * len(out.generated_ids))
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), stamps[0] - t0


def main() -> int:
    import openvino_genai as ov_genai

    from aipc_chat.engines.llm import device_properties, scheduler_config
    from aipc_chat.settings import Settings

    model, names = sys.argv[1], sys.argv[2:] or list(OPTIONS)
    settings = Settings(models_dir=REPO / "models")
    rng = random.Random(5)
    for name in names:
        props = {**device_properties(settings, "CPU"), **OPTIONS[name]}
        try:
            pipe = ov_genai.ContinuousBatchingPipeline(model, scheduler_config(settings), "CPU", props)
        except RuntimeError as exc:
            print(f"{name}: refused ({str(exc).splitlines()[-1][:120]})")  # noqa: T201
            continue
        rates, ttfts = [], []
        for request in range(5):  # the first is warm-up
            rate, ttft = run(pipe, [rng.randrange(1000, 100000) for _ in range(128)], request + 1, 128)
            if request:
                rates.append(rate)
                ttfts.append(ttft)
        print(f"{name}: {statistics.median(rates):.1f} tok/s, TTFT {statistics.median(ttfts) * 1e3:.0f} ms",  # noqa: T201
              flush=True)
        del pipe
    return 0


if __name__ == "__main__":
    sys.exit(main())
