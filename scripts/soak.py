"""Memory under load: bursts of concurrent requests against a live server, its RSS after each burst.

Each burst sends ``--concurrency`` requests at once, a mix of what clients send: OpenAI chat completions (whole and
streamed, some abandoned mid-stream), ``/chat`` turns, small pictures, bad requests and reads of ``/ready`` and
``/metrics``. Many are refused with 503 once the queues are full; that is part of the load. After each burst the
script waits until the server is idle and reads its resident set size. A leak shows as RSS that keeps rising
burst after burst; the pass criterion is growth under ``--max-growth-mb`` over the last ``--tail`` bursts.

Writes ``<out>.json`` and ``<out>.md``; exit status 1 when the criterion fails.

    python scripts/soak.py --bursts 20 --concurrency 200 --out bench-results/soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_common import machine, machine_line, table, timestamp, write_outputs  # noqa: E402
from tests.e2e.conftest import LiveServer, start_server  # noqa: E402

SURROGATE = b'{"messages": [{"role": "user", "content": "\\ud800"}]}'


async def _complete(client: httpx.AsyncClient, i: int, burst: int) -> str:
    r = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": f"Tell me about laptops, {burst}-{i}."}], "max_tokens": 24})
    return str(r.status_code)


async def _stream(client: httpx.AsyncClient, i: int, burst: int) -> str:
    """Streamed; a quarter of these clients leave after three lines."""
    body = {"messages": [{"role": "user", "content": f"Explain NPUs, {burst}-{i}."}], "max_tokens": 24, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = 0
        async for _ in r.aiter_lines():
            lines += 1
            if i % 4 == 3 and lines == 3:
                return "left"
    return str(r.status_code)


async def _chat(client: httpx.AsyncClient, i: int, burst: int) -> str:
    r = await client.post("/chat", json={"user_id": f"soak{i % 50}", "message": f"Hello number {burst}",
                                         "conversation_id": f"b{burst}", "image": "never"})
    return str(r.status_code)


async def _image(client: httpx.AsyncClient, i: int, burst: int) -> str:
    r = await client.post("/v1/images/generations", json={"prompt": f"a red cube {i}", "size": "64x64",
                                                           "num_inference_steps": 1})
    return str(r.status_code)


async def _bad(client: httpx.AsyncClient, i: int, burst: int) -> str:
    if i % 10 == 6:
        r = await client.post("/v1/chat/completions", json={"messages": [{"role": "user"}], "max_tokens": 4})
    else:
        r = await client.post("/v1/chat/completions", content=SURROGATE, headers={"content-type": "application/json"})
    return str(r.status_code)


async def _read(client: httpx.AsyncClient, i: int, burst: int) -> str:
    path = "/ready" if i % 10 == 8 else "/metrics" if i % 20 == 9 else f"/chat/soak{i % 50}/history"
    return str((await client.get(path)).status_code)


Request = Callable[[httpx.AsyncClient, int, int], Awaitable[str]]
KINDS: dict[str, Request] = {"complete": _complete, "stream": _stream, "chat": _chat, "image": _image, "bad": _bad,
                             "read": _read}
MIX = ["complete", "complete", "stream", "stream", "chat", "image", "bad", "bad", "read", "read"]


async def one(client: httpx.AsyncClient, i: int, burst: int, mix: list[str]) -> str:
    """One request of the mix; returns what happened (status, or how it ended)."""
    try:
        return await KINDS[mix[i % len(mix)]](client, i, burst)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 1e6


def idle(base_url: str) -> bool:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    busy = 0.0
    for line in text.splitlines():
        if line.startswith(("aipc_llm_active_requests ", "aipc_image_active_jobs ", "aipc_llm_queue_depth ",
                            "aipc_image_queue_depth ")):
            busy += float(line.rsplit(" ", 1)[1])
    return busy == 0


async def burst(base_url: str, concurrency: int, number: int, mix: list[str]) -> Counter[str]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        order = list(range(concurrency))
        random.Random(number).shuffle(order)
        outcomes = await asyncio.gather(*(one(client, i, number, mix) for i in order))
    return Counter(outcomes)


def soak(server: LiveServer, bursts: int, concurrency: int, mix: list[str]) -> list[dict[str, Any]]:
    rows = []
    pid = server.proc.pid
    for number in range(1, bursts + 1):
        t0 = time.perf_counter()
        outcomes = asyncio.run(burst(server.base_url, concurrency, number, mix))
        took = time.perf_counter() - t0
        deadline = time.monotonic() + 60
        while not idle(server.base_url) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # let the owner threads finish what they release after the last answer
        rows.append({"burst": number, "seconds": round(took, 2), "rss_mb": round(rss_mb(pid), 1),
                     "outcomes": dict(sorted(outcomes.items()))})
        print(f"burst {number:>3}: {took:5.1f} s, RSS {rows[-1]['rss_mb']:7.1f} MB, {dict(outcomes)}", flush=True)  # noqa: T201
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--tail", type=int, default=10, help="bursts the growth criterion looks at")
    parser.add_argument("--max-growth-mb", type=float, default=20.0)
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--out", default="bench-results/soak")
    parser.add_argument("--only", choices=sorted(KINDS), action="append",
                        help="send only these kinds of request (repeatable; default the whole mix)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aipc-soak-") as tmp:
        server = start_server(Path(args.models_dir), Path(tmp) / "data", Path(tmp) / "server.log",
                              env={"AIPC_CHAT_RATE_PER_MINUTE": "100000", "AIPC_LOG_LEVEL": "warning"})
        try:
            start_rss = rss_mb(server.proc.pid)
            mix = args.only or MIX
            rows = soak(server, args.bursts, args.concurrency, mix)
        finally:
            server.stop()
    tail = rows[-args.tail:]
    growth = tail[-1]["rss_mb"] - tail[0]["rss_mb"]
    total: Counter[str] = Counter()
    for row in rows:
        total.update(row["outcomes"])
    passed = growth < args.max_growth_mb
    result = {
        "machine": machine(), "when": timestamp(), "bursts": args.bursts, "concurrency": args.concurrency,
        "rss_after_load_mb": round(start_rss, 1), "rss_mb": [r["rss_mb"] for r in rows],
        "tail": args.tail, "tail_growth_mb": round(growth, 1), "max_growth_mb": args.max_growth_mb,
        "passed": passed, "outcomes": dict(sorted(total.items())),
        "burst_seconds_p50": statistics.median(r["seconds"] for r in rows), "rows": rows,
    }
    lines = [
        f"# Soak: {args.bursts} bursts of {args.concurrency} concurrent requests", "", machine_line(result["machine"]),
        "", f"RSS after load {start_rss:.1f} MB; after the first burst {rows[0]['rss_mb']} MB, after the last "
        f"{rows[-1]['rss_mb']} MB; growth over the last {len(tail)} bursts **{growth:+.1f} MB** "
        f"(limit {args.max_growth_mb} MB): {'pass' if passed else 'FAIL'}. "
        f"Median burst {result['burst_seconds_p50']} s.",
        "", "Outcomes over the run: " + ", ".join(f"{k}: {v}" for k, v in sorted(total.items())), "",
        table(["burst", "seconds", "RSS MB"],
              [[r["burst"], f"{r['seconds']:.1f}", f"{r['rss_mb']:.1f}"] for r in rows]),
    ]
    write_outputs(result, Path(args.out), "\n".join(lines) + "\n")
    print(f"tail growth {growth:+.1f} MB over {len(tail)} bursts: {'pass' if passed else 'FAIL'}")  # noqa: T201
    return 0 if passed else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
