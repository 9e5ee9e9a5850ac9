"""What a request can break costs: the structured-output check before admission, and a pipeline's rebuild.

- the check: loading the probe, compiling each constraint on it the first time (a schema, a regex, the /chat image
  tag, a refused schema and the probe's rebuild after it), and a cached check, per request;
- the rebuild: a step fault injected into the LLM engine (and a render fault into the image engine) through its
  pipeline factory; the time from the fault until the engine serves again (compile cache warm, as after a load).

Writes ``<out>.json`` and ``<out>.md``.

    python scripts/bench_recovery.py --model demo --out bench-results/recovery
    python scripts/bench_recovery.py --model bench --out bench-results/recovery-full
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from aipc_chat.engines import scheduler  # noqa: E402
from aipc_chat.engines.contract import GenParams, ImageParams  # noqa: E402
from aipc_chat.engines.grammar import ConstraintChecker  # noqa: E402
from aipc_chat.engines.image import image_pipelines, local_image_engine  # noqa: E402
from aipc_chat.engines.llm import LLMEngine, OpenVINOPipelines, structured_output_config  # noqa: E402
from aipc_chat.errors import InvalidRequest  # noqa: E402
from aipc_chat.orchestrator import IMAGE_PROMPT_REGEX, IMAGE_TAG  # noqa: E402
from aipc_chat.serving.aio import Reader  # noqa: E402
from aipc_chat.settings import Settings  # noqa: E402
from scripts.bench_common import machine, machine_line, table, timestamp, write_outputs  # noqa: E402
from tests.faults import Factories, Faulty  # noqa: E402

CONSTRAINTS = {
    "JSON schema (object, 3 fields)": GenParams(json_schema=json.dumps({
        "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                         "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age"]})),
    "json_object": GenParams(json_schema='{"type": "object"}'),
    "regex (/chat image prompt)": GenParams(regex=IMAGE_PROMPT_REGEX),
    "structural tag (/chat <image>)": GenParams(tag=IMAGE_TAG),
    "refused schema + probe rebuild": GenParams(json_schema='{"type": "objectt"}'),
}


def time_checks(rounds: int) -> dict[str, Any]:
    """Probe load, first (uncached) check of each constraint, cached check; medians over ``rounds`` fresh probes."""
    loads: list[float] = []
    first: dict[str, list[float]] = {name: [] for name in CONSTRAINTS}
    cached: list[float] = []
    for _ in range(rounds):
        checker = ConstraintChecker()
        t0 = time.perf_counter()
        checker.load()
        loads.append(time.perf_counter() - t0)
        for name, params in CONSTRAINTS.items():
            t0 = time.perf_counter()
            with contextlib.suppress(InvalidRequest):  # the refused schema
                checker.check(params, structured_output_config(params))
            first[name].append(time.perf_counter() - t0)
        params = next(iter(CONSTRAINTS.values()))
        t0 = time.perf_counter()
        for _ in range(1000):
            checker.check(params, structured_output_config(params))
        cached.append((time.perf_counter() - t0) / 1000)
        checker.close()
    return {"probe_load_ms": statistics.median(loads) * 1e3,
            "first_check_ms": {name: statistics.median(v) * 1e3 for name, v in first.items()},
            "cached_check_us": statistics.median(cached) * 1e6}


def wait_rebuilt(engine: Any, restarts: int, timeout: float = 900) -> None:
    """Wait until the engine has rebuilt its pipeline ``restarts`` times and serves again (the failed request can
    end before the rebuild begins)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        health = engine.health()
        if health.restarts >= restarts and health.state == "ready":
            return
        time.sleep(0.005)


def llm_rebuild(settings: Settings, model_dir: Path, rounds: int) -> list[float]:
    """Fault to serving again, per injected step fault (the rebuild includes the warm-up, as a load does)."""
    factories = Factories(OpenVINOPipelines(settings, model_dir, "CPU"),
                          *[lambda p: Faulty(p, "step", after=1)] * (rounds + 1))
    engine = LLMEngine(settings, model_dir, "bench", "CPU", pipelines=factories)
    engine.load()
    times = []
    try:
        for n in range(1, rounds + 1):
            stream = engine.submit([{"role": "user", "content": "Hi"}], GenParams(max_tokens=8, ignore_eos=True))

            async def drain(s: Any = stream) -> None:
                try:
                    async for _ in Reader(s):
                        pass
                except Exception:
                    return

            asyncio.run(drain())
            wait_rebuilt(engine, n)
            times.append(engine.scheduler.view(engine.name).load_seconds or 0.0)
    finally:
        engine.close()
    return times


def image_rebuild(settings: Settings, model_dir: Path, rounds: int) -> list[float]:
    """Render fault to serving again."""
    factories = Factories(image_pipelines(settings, model_dir, "CPU"),
                          *[lambda p: Faulty(p, "generate")] * (rounds + 1))
    engine = local_image_engine(settings, model_dir, "bench", "CPU", pipelines=factories)
    engine.load()
    times = []
    try:
        for n in range(1, rounds + 1):
            job = engine.submit(ImageParams(prompt="x", width=64, height=64, steps=1, seed=1))

            async def wait(j: Any = job) -> None:
                try:
                    await j.wait(600)
                except Exception:
                    return

            asyncio.run(wait())
            wait_rebuilt(engine, n)
            times.append(engine.scheduler.view(engine.name).load_seconds or 0.0)
    finally:
        engine.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--model", default="demo", help="demo or bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-image", action="store_true", help="time the LLM only")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "recovery"))
    args = parser.parse_args()
    scheduler.REBUILD_BACKOFF_SECONDS = (0.0, 0.0, 0.0)
    root = Path(args.models_dir) / args.model
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(models_dir=Path(args.models_dir), data_dir=Path(tmp), cache_dir=Path(tmp) / "cache")
        checks = time_checks(args.rounds)
        llm = llm_rebuild(settings, root / "llm", args.rounds)
        image = [] if args.skip_image or not (root / "image").is_dir() else image_rebuild(settings, root / "image",
                                                                                          args.rounds)
    result = {"when": timestamp(), "machine": machine(), "model": args.model, "rounds": args.rounds,
              "checks": checks, "llm_rebuild_s": llm, "image_rebuild_s": image,
              "llm_rebuild_s_p50": statistics.median(llm),
              "image_rebuild_s_p50": statistics.median(image) if image else None}
    write_outputs(result, Path(args.out).with_suffix(""), markdown(result))
    print(json.dumps({k: result[k] for k in ("checks", "llm_rebuild_s_p50", "image_rebuild_s_p50")}, indent=2))  # noqa: T201
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown."""
    c = r["checks"]
    rows = [["probe load (once per process)", f"{c['probe_load_ms']:.0f} ms"]]
    rows += [[f"first check: {name}", f"{ms:.1f} ms"] for name, ms in c["first_check_ms"].items()]
    rows.append(["cached check (every later request with the same constraint)", f"{c['cached_check_us']:.1f} µs"])
    rows.append(["LLM pipeline rebuild after a failed step", f"{r['llm_rebuild_s_p50']:.2f} s"])
    if r["image_rebuild_s_p50"] is not None:
        rows.append(["image pipeline rebuild after a failed render", f"{r['image_rebuild_s_p50']:.2f} s"])
    return (f"# Constraint check and recovery ({r['when']})\n\n{machine_line(r['machine'])}; {r['model']} models; "
            f"median of {r['rounds']} round(s).\n\n" + table(["", "time"], rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
