"""LLM throughput and TTFT: the raw openvino-genai pipeline in this process vs the aipc-chat server over HTTP/SSE.

Same model, same templated prompt, same output length (``ignore_eos``), greedy, interleaved runs; medians and the
server/raw ratio. The prompts vary per run so prefix caching does not flatter TTFT.

    python scripts/bench_llm.py --demo --runs 7 --max-tokens 128 --out bench-results/llm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.e2e.conftest import LiveServer, start_server  # noqa: E402  (the same server start the tests use)


def prompt_messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Request {i}: tell me about laptops, question {i * 7 % 13}."}]


def raw_run(pipe: Any, tokenizer: Any, prompt: str, max_tokens: int) -> dict[str, float]:
    """One generation through LLMPipeline.generate, timed by a token streamer."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
    config.apply_chat_template = False
    inputs = tokenizer.encode(prompt, add_special_tokens=False)
    stamps: list[float] = []

    class Counter(ov_genai.StreamerBase):  # type: ignore[misc]
        def write(self, token: Any) -> ov_genai.StreamingStatus:
            stamps.append(time.perf_counter())
            return ov_genai.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    t0 = time.perf_counter()
    pipe.generate(inputs, config, Counter())
    end = time.perf_counter()
    n = len(stamps)
    return {"ttft_ms": (stamps[0] - t0) * 1e3, "tokens": n, "tok_s": (n - 1) / (end - stamps[0]),
            "e2e_s": end - t0}


def raw_cb_run(pipe: Any, tokenizer: Any, prompt: str, max_tokens: int) -> dict[str, float]:
    """One request driven through ContinuousBatchingPipeline.add_request/step by hand (the engine's library path)."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig(max_new_tokens=max_tokens, ignore_eos=True, do_sample=False)
    ids = tokenizer.encode(prompt, add_special_tokens=False).input_ids
    t0 = time.perf_counter()
    handle = pipe.add_request(int(t0 * 1e6) % 2**31, ids, config)
    first = None
    n = 0
    while pipe.has_non_finished_requests():
        pipe.step()
        while handle.can_read():
            for out in handle.read().values():
                n += len(out.generated_ids)
                if first is None and n:
                    first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return {"ttft_ms": (first - t0) * 1e3, "tokens": n, "tok_s": (n - 1) / (end - first), "e2e_s": end - t0}


def server_run(base_url: str, model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, float]:
    """One streamed request; TTFT is the first chunk that carries text."""
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    first = None
    tokens = 0
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
            if first is None and (delta.get("content") or delta.get("reasoning_content")):
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return {"ttft_ms": (first - t0) * 1e3, "tokens": tokens, "tok_s": (tokens - 1) / (end - first), "e2e_s": end - t0}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def machine() -> dict[str, Any]:
    import openvino as ov

    cpu = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    return {"cpu": cpu, "cores": os.cpu_count(), "openvino": ov.get_version(), "python": platform.python_version(),
            "platform": platform.platform()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--demo", action="store_true", help="use the demo models (the default)")
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default=str(REPO / "bench-results" / "llm.json"))
    args = parser.parse_args()

    import openvino_genai as ov_genai

    models = Path(args.models_dir)
    model_dir = models / "demo" / "llm"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    server: LiveServer = start_server(models, out.parent / "bench-data", out.parent / "bench-server.log")
    try:
        model = httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"]
        pipe = ov_genai.LLMPipeline(str(model_dir), "CPU")
        cb = ov_genai.ContinuousBatchingPipeline(str(model_dir), ov_genai.SchedulerConfig(), "CPU", {})
        tok = pipe.get_tokenizer()
        raw, raw_cb, srv = [], [], []
        for i in range(args.runs + 1):  # the first round is warm-up
            messages = prompt_messages(i)
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
            r = raw_run(pipe, tok, prompt, args.max_tokens)
            c = raw_cb_run(cb, tok, prompt, args.max_tokens)
            s = server_run(server.base_url, model, messages, args.max_tokens)
            if i:
                raw.append(r)
                raw_cb.append(c)
                srv.append(s)
    finally:
        server.stop()
    result = {
        "machine": machine(), "model": str(model_dir), "runs": args.runs, "max_tokens": args.max_tokens,
        "raw": {"tok_s": median(raw, "tok_s"), "ttft_ms": median(raw, "ttft_ms")},
        "raw_cb": {"tok_s": median(raw_cb, "tok_s"), "ttft_ms": median(raw_cb, "ttft_ms")},
        "server": {"tok_s": median(srv, "tok_s"), "ttft_ms": median(srv, "ttft_ms")},
        "raw_runs": raw, "raw_cb_runs": raw_cb, "server_runs": srv,
    }
    result["ratio_tok_s"] = result["server"]["tok_s"] / result["raw"]["tok_s"]
    result["ttft_overhead_ms"] = result["server"]["ttft_ms"] - result["raw"]["ttft_ms"]
    out.write_text(json.dumps(result, indent=2))
    result["ratio_tok_s_vs_cb"] = result["server"]["tok_s"] / result["raw_cb"]["tok_s"]
    out.write_text(json.dumps(result, indent=2))
    keys = ("raw", "raw_cb", "server", "ratio_tok_s", "ratio_tok_s_vs_cb", "ttft_overhead_ms")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
