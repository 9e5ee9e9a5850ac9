"""``/chat`` throughput with one and two front ends over the same remote engines.

Starts a real PostgreSQL (Debian's package) and SeaweedFS (S3), one engine node (``aipc-chat serve`` with the
models) and front ends (``aipc-chat serve`` with AIPC_LLM_ENDPOINT / AIPC_IMAGE_ENDPOINT at the engine node,
AIPC_DATABASE_URL and AIPC_IMAGE_STORE_URL). Concurrent clients each run ``--turns`` /chat turns (each its own user
and conversation), spread round robin over the front ends. Also measured, as the reference: the same load sent
straight to the engine node's own /chat (one process, SQLite history, no remote hop).

Per setup and round: turns per second (all turns / wall time) and each turn's latency; medians over ``--rounds``.
Writes ``<out>.json`` and ``<out>.md``.

    python scripts/bench_team.py --model demo --clients 8 --turns 6 --rounds 3 --out bench-results/team
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import httpx  # noqa: E402

from scripts.bench_common import machine, machine_line, pct, table, timestamp, write_outputs  # noqa: E402
from tests.e2e.conftest import LiveServer, start_server  # noqa: E402
from tests.services import postgres, seaweedfs, why_not_postgres, why_not_seaweedfs  # noqa: E402


async def run_load(urls: list[str], clients: int, turns: int, pictures: bool, tag: str) -> dict[str, Any]:
    """``clients`` concurrent clients, ``turns`` turns each, round robin over ``urls``."""
    order = itertools.cycle(urls)
    latencies: list[float] = []
    failures: list[str] = []

    async def client(index: int, http: httpx.AsyncClient) -> None:
        for turn in range(turns):
            url = next(order)
            body: dict[str, Any] = {"user_id": f"{tag}-u{index}", "message": f"Tell me about the number {turn}.",
                                    "max_tokens": 32, "image": "never"}
            if pictures and turn % 2 == 1:
                body.update(message=f"Draw a harbour at dusk, number {turn}", image="always",
                            image_options={"steps": 2, "size": "64x64"})
            t0 = time.perf_counter()
            r = await http.post(f"{url}/chat", json=body)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures.append(f"{r.status_code} {r.text[:200]}")

    async with httpx.AsyncClient(timeout=600) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t0
    if not latencies:
        raise SystemExit(f"every turn failed, e.g. {failures[:3]}")
    return {"turns": len(latencies), "failed": len(failures), "failures": failures[:5], "wall_s": wall,
            "turns_per_s": len(latencies) / wall, "latency_median_s": statistics.median(latencies),
            "latency_p95_s": pct(latencies, 95)}


def measure(setups: dict[str, list[str]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    asyncio.run(run_load(next(iter(setups.values())), args.clients, 1, args.pictures, "warm"))  # warm the engine
    for number, (name, urls) in enumerate(setups.items()):
        rounds = [asyncio.run(run_load(urls, args.clients, args.turns, args.pictures, f"s{number}r{r}"))
                  for r in range(args.rounds)]
        out[name] = {"rounds": rounds,
                     "turns_per_s": statistics.median(r["turns_per_s"] for r in rounds),
                     "latency_median_s": statistics.median(r["latency_median_s"] for r in rounds),
                     "latency_p95_s": statistics.median(r["latency_p95_s"] for r in rounds),
                     "failed": sum(r["failed"] for r in rounds)}
        print(f"{name}: {out[name]['turns_per_s']:.2f} turns/s, median {out[name]['latency_median_s']:.2f} s",
              flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["demo", "real"], default="demo",
                        help="demo: the tiny demo models; real: the engine node serves what AIPC_* settings choose")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6, help="turns per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pictures", action="store_true", help="every second turn also draws a 64x64 picture")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "team")
    args = parser.parse_args()
    for reason in (why_not_postgres(), why_not_seaweedfs()):
        if reason:
            print(f"cannot run: {reason}", file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix="aipc-bench-team-"))
    models = Path(os.environ.get("AIPC_MODELS_DIR", REPO / "models"))
    servers: list[LiveServer] = []
    try:
        with postgres() as database_url, seaweedfs() as s3:
            bucket = "bench"
            s3.client().create_bucket(Bucket=bucket)
            engine = start_server(models, root / "engine", root / "engine.log", demo=args.model == "demo",
                                  env={"AIPC_CHAT_RATE_PER_MINUTE": "100000"})
            servers.append(engine)
            env = {"AIPC_LLM_ENDPOINT": f"{engine.base_url}/v1", "AIPC_IMAGE_ENDPOINT": engine.base_url,
                   "AIPC_DATABASE_URL": database_url, "AIPC_IMAGE_STORE_URL": f"s3://{bucket}/bench",
                   "AIPC_S3_ENDPOINT": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
                   "AIPC_CHAT_RATE_PER_MINUTE": "100000", "AIPC_LOG_LEVEL": "warning"}
            fronts = [start_server(models, root / f"front-{n}", root / f"front-{n}.log", demo=False,
                                   env={**env, "AIPC_WORKER_NAME": f"front-{n}"}) for n in ("a", "b")]
            servers += fronts
            setups = {"engine node's own /chat": [engine.base_url],
                      "1 front end": [fronts[0].base_url],
                      "2 front ends": [f.base_url for f in fronts]}
            results = measure(setups, args)
    finally:
        for server in servers:
            server.stop()
    m = machine()
    base = results["1 front end"]["turns_per_s"]
    rows = [[name, r["turns_per_s"], r["turns_per_s"] / base, r["latency_median_s"], r["latency_p95_s"], r["failed"]]
            for name, r in results.items()]
    md = "\n".join([
        f"# /chat throughput, one and two front ends ({timestamp()})", "", machine_line(m), "",
        f"{args.clients} concurrent clients x {args.turns} turns, medians of {args.rounds} rounds; "
        f"model: {args.model}; pictures: {'every second turn, 64x64, 2 steps' if args.pictures else 'none'}.", "",
        table(["setup", "turns/s", "vs 1 front end", "latency median s", "latency p95 s", "failed"], rows), ""])
    write_outputs({"machine": m, "args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                  args.out, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
