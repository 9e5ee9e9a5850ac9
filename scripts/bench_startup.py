"""Cold vs warm start: time to /ready 200 and the models' load times, without and with the OpenVINO compile cache;
and, on the warm server, the first token and a picture while the model is loaded against right after an idle unload
(the request before asks ``keep_alive: 0``), with the RSS the unload gave back.

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
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_common import machine, machine_line, table, timestamp, write_outputs  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402


def one_start(models: Path, cache: Path, work: Path, env: dict[str, str], *, reloads: bool = False,
              picture: dict[str, Any] | None = None) -> dict[str, float]:
    t0 = time.perf_counter()
    server = start_server(models, work / "data", work / "server.log", env={**env, "AIPC_CACHE_DIR": str(cache)},
                          ready_timeout=900)
    ready = time.perf_counter() - t0
    try:
        body = httpx.get(f"{server.base_url}/ready").json()["models"]
        out = {"ready_s": ready, "llm_load_s": body["llm"]["load_seconds"],
               "image_load_s": body["image"]["load_seconds"]}
        if reloads:
            out.update(after_unload(server.base_url, psutil.Process(server.proc.pid), picture or {}))
    finally:
        server.stop()
    return out


def first_token(base_url: str, **extra: Any) -> float:
    """Seconds to the first streamed token of a short chat completion."""
    body = {"messages": [{"role": "user", "content": "What is an NPU?"}], "max_tokens": 16, "temperature": 0,
            "stream": True, **extra}
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=900) as r:
        r.raise_for_status()
        first = None
        for line in r.iter_lines():
            if first is None and line.startswith("data: {") and '"delta":{"' in line.replace(" ", ""):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content") or delta.get("reasoning_content"):
                    first = time.perf_counter() - t0
    assert first is not None, "no token streamed"
    return first


def one_picture(base_url: str, params: dict[str, Any], **extra: Any) -> float:
    """Seconds for one picture."""
    t0 = time.perf_counter()
    r = httpx.post(f"{base_url}/v1/images/generations", json={"prompt": "a red cube", **params, **extra}, timeout=900)
    r.raise_for_status()
    return time.perf_counter() - t0


def wait_unloaded(base_url: str, kind: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{base_url}/ready").json()["models"][kind]["state"] != "unloaded":
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {kind} model did not unload")
        time.sleep(0.1)


def after_unload(base_url: str, proc: psutil.Process, picture: dict[str, Any]) -> dict[str, float]:
    """The first token and a picture while loaded (the request asks to unload right after), then after the unload."""
    first_token(base_url)  # the first request of the process is not what this compares
    rss = proc.memory_info().rss
    out: dict[str, float] = {"ttft_loaded_s": first_token(base_url, keep_alive=0)}  # unloaded when it returns
    wait_unloaded(base_url, "llm")
    out["llm_freed_mb"] = (rss - proc.memory_info().rss) / 2**20
    out["ttft_after_unload_s"] = first_token(base_url)
    one_picture(base_url, picture)
    rss = proc.memory_info().rss
    out["picture_loaded_s"] = one_picture(base_url, picture, keep_alive=0)
    wait_unloaded(base_url, "image")
    out["image_freed_mb"] = (rss - proc.memory_info().rss) / 2**20
    out["picture_after_unload_s"] = one_picture(base_url, picture)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="demo", help="demo or bench")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "startup"))
    parser.add_argument("--size", default="64x64", help="the pictures' size")
    parser.add_argument("--steps", type=int, default=2, help="the pictures' steps")
    args = parser.parse_args()
    picture = {"size": args.size, "num_inference_steps": args.steps, "seed": 1}
    env = {} if args.model == "demo" else {
        "AIPC_LLM_PATH": str(Path(args.models_dir) / args.model / "llm"),
        "AIPC_IMAGE_PATH": str(Path(args.models_dir) / args.model / "image")}
    cold, warm = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            cache = work / "cache"
            cold.append(one_start(Path(args.models_dir), cache, work, env))  # empty cache: compiles and fills it
            warm.append(one_start(Path(args.models_dir), cache, work, env,  # the same cache: loads compiled blobs
                                  reloads=True, picture=picture))
            shutil.rmtree(cache, ignore_errors=True)
    summary = {k: {"cold": statistics.median(r[k] for r in cold), "warm": statistics.median(r[k] for r in warm)}
               for k in ("ready_s", "llm_load_s", "image_load_s")}
    reload_keys = ("ttft_loaded_s", "ttft_after_unload_s", "llm_freed_mb", "picture_loaded_s",
                   "picture_after_unload_s", "image_freed_mb")
    reloads = {k: statistics.median(r[k] for r in warm) for k in reload_keys}
    result = {"when": timestamp(), "machine": machine(), "model": args.model, "rounds": args.rounds,
              "picture": picture, "summary": summary, "reloads": reloads, "cold": cold, "warm": warm}
    write_outputs(result, Path(args.out).with_suffix(""), markdown(result))
    print(json.dumps({**summary, **reloads}, indent=2))  # noqa: T201
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown."""
    names = {"ready_s": "process start to /ready 200 (s)", "llm_load_s": "LLM load (s)",
             "image_load_s": "image pipeline load (s)"}
    rows = [[name, r["summary"][key]["cold"], r["summary"][key]["warm"]] for key, name in names.items()]
    x = r["reloads"]
    reload_rows = [
        ["first token (s)", x["ttft_loaded_s"], x["ttft_after_unload_s"], round(x["llm_freed_mb"])],
        [f"picture {r['picture']['size']}, {r['picture']['num_inference_steps']} steps (s)", x["picture_loaded_s"],
         x["picture_after_unload_s"], round(x["image_freed_mb"])],
    ]
    return (f"# Start-up benchmark ({r['when']})\n\n{machine_line(r['machine'])}; {r['model']} models; median of "
            f"{r['rounds']} round(s).\n\n" + table(["", "cold (empty compile cache)", "warm (cache filled)"], rows)
            + "\n\nOn the warm server, a model loaded against right after an idle unload (it loads again through "
            "the compile cache):\n\n"
            + table(["", "loaded", "after an idle unload", "RSS given back by the unload (MB)"], reload_rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
