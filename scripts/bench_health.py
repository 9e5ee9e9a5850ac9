"""How fast ``GET /health`` answers while the server works: idle, while a long /chat turn (about 3.5k tokens of
history and message) is fitted to the context and answered, and while pictures are made and written.

A poller asks /health every few milliseconds on its own connection while each workload runs; the figures are its
latencies (median, p99, max). A blocked event loop shows as a max of seconds.

    python scripts/bench_health.py --model demo --out bench-results/health
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_common import machine, machine_line, summary, table, timestamp, write_outputs  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402

LONG = " ".join(["tell me more about the quiet harbour at dawn"] * 175)  # about 1.7k tokens


def poll_during(base_url: str, work: Callable[[], None], interval: float = 0.005) -> list[float]:
    """/health latencies (ms) while ``work`` runs."""
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while not done.is_set():
                t0 = time.perf_counter()
                client.get("/health").raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1e3)
                time.sleep(interval)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        work()
    finally:
        done.set()
        poller.join()
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--model", default="demo", help="demo or bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench-results" / "health"))
    args = parser.parse_args()
    env = {} if args.model == "demo" else {
        "AIPC_LLM_PATH": str(Path(args.models_dir) / args.model / "llm"),
        "AIPC_IMAGE_PATH": str(Path(args.models_dir) / args.model / "image")}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(args.models_dir), Path(tmp) / "data", Path(tmp) / "server.log", env=env)
        url = server.base_url
        try:
            def long_turns() -> None:
                for i in range(args.rounds):  # the second turn of each conversation fits 3.5k tokens
                    for _ in range(2):
                        httpx.post(f"{url}/chat", timeout=900, json={
                            "user_id": "bench", "conversation_id": f"c{i}", "message": LONG, "image": "never",
                            "max_tokens": 16}).raise_for_status()

            def pictures() -> None:
                for i in range(args.rounds * 2):
                    httpx.post(f"{url}/v1/images/generations", timeout=900, json={
                        "prompt": "a red cube", "size": "256x256", "num_inference_steps": 4, "seed": i,
                        "n": 2}).raise_for_status()

            runs = {"idle": poll_during(url, lambda: time.sleep(2.0)),
                    "long /chat turns (3.5k-token fit)": poll_during(url, long_turns),
                    "pictures made and written": poll_during(url, pictures)}
        finally:
            server.stop()
    result = {"when": timestamp(), "machine": machine(), "model": args.model, "rounds": args.rounds,
              "latency_ms": {name: {**summary(values), "max": max(values)} for name, values in runs.items()},
              "samples": {name: len(values) for name, values in runs.items()}}
    write_outputs(result, Path(args.out).with_suffix(""), markdown(result))
    print(json.dumps(result["latency_ms"], indent=2))  # noqa: T201
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown."""
    rows = [[name, r["samples"][name], s["p50"], s["p99"], s["max"]] for name, s in r["latency_ms"].items()]
    return (f"# /health while the server works ({r['model']} models)\n\n{machine_line(r['machine'])}\n\n"
            + table(["while", "samples", "median ms", "p99 ms", "max ms"], rows) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
