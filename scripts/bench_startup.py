"""Cold vs warm start: time to /ready 200 and the models' load times, without and with the OpenVINO compile cache.

Writes ``<out>.json`` and ``<out>.md``.

    python scripts/bench_startup.py --rounds 3 --out bench-results/startup
    python scripts/bench_startup.py --model bench --rounds 2 --out bench-results/startup-full
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_common import machine, machine_line, table, timestamp, write_outputs  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402


def one_start(models: Path, cache: Path, work: Path, env: dict[str, str]) -> dict[str, float]:
    t0 = time.perf_counter()
    server = start_server(models, work / "data", work / "server.log", env={**env, "AIPC_CACHE_DIR": str(cache)},
                          ready_timeout=900)
    ready = time.perf_counter() - t0
    try:
        body = httpx.get(f"{server.base_url}/ready").json()["models"]
    finally:
        server.stop()
    return {"ready_s": ready, "llm_load_s": body["llm"]["load_seconds"], "image_load_s": body["image"]["load_seconds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="demo", help="demo or bench")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "startup"))
    args = parser.parse_args()
    env = {} if args.model == "demo" else {
        "AIPC_LLM_PATH": str(Path(args.models_dir) / args.model / "llm"),
        "AIPC_IMAGE_PATH": str(Path(args.models_dir) / args.model / "image")}
    cold, warm = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            cache = work / "cache"
            cold.append(one_start(Path(args.models_dir), cache, work, env))  # empty cache: compiles and fills it
            warm.append(one_start(Path(args.models_dir), cache, work, env))  # the same cache: loads compiled blobs
            shutil.rmtree(cache, ignore_errors=True)
    summary = {k: {"cold": statistics.median(r[k] for r in cold), "warm": statistics.median(r[k] for r in warm)}
               for k in ("ready_s", "llm_load_s", "image_load_s")}
    result = {"when": timestamp(), "machine": machine(), "model": args.model, "rounds": args.rounds,
              "summary": summary, "cold": cold, "warm": warm}
    write_outputs(result, Path(args.out).with_suffix(""), markdown(result))
    print(json.dumps(summary, indent=2))  # noqa: T201
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown."""
    names = {"ready_s": "process start to /ready 200 (s)", "llm_load_s": "LLM load (s)",
             "image_load_s": "image pipeline load (s)"}
    rows = [[name, r["summary"][key]["cold"], r["summary"][key]["warm"]] for key, name in names.items()]
    return (f"# Start-up benchmark ({r['when']})\n\n{machine_line(r['machine'])}; {r['model']} models; median of "
            f"{r['rounds']} round(s).\n\n" + table(["", "cold (empty compile cache)", "warm (cache filled)"], rows)
            + "\n")


if __name__ == "__main__":
    sys.exit(main())
