"""LLM benchmark: the raw openvino-genai pipelines in this process vs the aipc-chat server over HTTP/SSE.

Same model, same templated prompts, same output length (``ignore_eos``), greedy, interleaved runs. Reports TTFT,
TPOT, ITL and end-to-end latency (mean, p50, p90, p99), output tokens/s and the server/raw ratios; a concurrency
sweep (aggregate tokens/s, per-stream TPOT) against raw continuous batching; multi-turn TTFT with prefix caching;
load time and peak RSS. Writes ``<out>.json``, ``<out>.md`` and PNG plots.

    python scripts/bench_llm.py --model demo --runs 7 --max-tokens 128 --out bench-results/llm
    python scripts/bench_llm.py --model bench --runs 5 --prompt-tokens 128 --max-tokens 64 --out bench-results/llm-full
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from aipc_chat.provision.gguf import OLLAMA_PREFIX, find_ollama_model, link_as_gguf  # noqa: E402
from scripts.bench_common import (  # noqa: E402
    PeakRSS,
    machine,
    machine_line,
    median_ci,
    plot_distributions,
    plot_lines,
    summary,
    table,
    timestamp,
    write_outputs,
)
from tests.e2e.conftest import LiveServer, start_server  # noqa: E402

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=1200)
WORDS = [
    "laptop", "battery", "screen", "keyboard", "model", "token", "cache", "memory", "image", "prompt", "answer",
    "reason", "light", "river", "mountain", "city", "music", "garden", "window", "planet", "science", "history",
]


def make_messages(tokenizer: Any, i: int, prompt_tokens: int) -> list[dict[str, str]]:
    """A user message of about ``prompt_tokens`` template tokens, different for every ``i`` (no prefix reuse)."""
    rng = random.Random(i)
    words = [f"Request {i}:"]
    while True:
        messages = [{"role": "user", "content": " ".join(words)}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if len(tokenizer.encode(prompt, add_special_tokens=False).input_ids.data[0]) >= prompt_tokens:
            return messages
        words.extend(rng.choice(WORDS) for _ in range(8))


def timed_tokens(stamps: list[float], t0: float, end: float, n: int) -> dict[str, Any]:
    """TTFT, TPOT (excluding the first token), ITLs and E2E from token (or chunk) arrival times."""
    ttft = stamps[0] - t0
    decode = end - stamps[0]
    return {"ttft_s": ttft, "tpot_s": decode / (n - 1) if n > 1 else float("nan"), "e2e_s": end - t0,
            "itl_s": [b - a for a, b in zip(stamps, stamps[1:], strict=False)], "tokens": n,
            "tok_s": (n - 1) / decode if decode > 0 else float("nan")}


def raw_run(pipe: Any, tokenizer: Any, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One LLMPipeline.generate, a timestamp per token from a streamer."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig(max_new_tokens=max_tokens, do_sample=False, ignore_eos=True)
    config.apply_chat_template = False
    inputs = tokenizer.encode(prompt, add_special_tokens=False)
    stamps: list[float] = []

    class Stamp(ov_genai.StreamerBase):  # type: ignore[misc]
        def write(self, token: Any) -> ov_genai.StreamingStatus:
            stamps.append(time.perf_counter())
            return ov_genai.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    t0 = time.perf_counter()
    pipe.generate(inputs, config, Stamp())
    return timed_tokens(stamps, t0, time.perf_counter(), len(stamps))


def raw_cb_batch(pipe: Any, tokenizer: Any, prompts: list[str], max_tokens: int) -> list[dict[str, Any]]:
    """Requests added together to a ContinuousBatchingPipeline and stepped by hand (the engine's library path)."""
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig(max_new_tokens=max_tokens, ignore_eos=True, do_sample=False)
    t0 = time.perf_counter()
    handles = [pipe.add_request(int(t0 * 1e3) % 2**30 + k, tokenizer.encode(p, add_special_tokens=False).input_ids,
                                config) for k, p in enumerate(prompts)]
    stamps: list[list[float]] = [[] for _ in prompts]
    ends = [0.0] * len(prompts)
    while pipe.has_non_finished_requests():
        pipe.step()
        now = time.perf_counter()
        for k, handle in enumerate(handles):
            while handle.can_read():
                for out in handle.read().values():
                    stamps[k].extend([now] * len(out.generated_ids))
                    ends[k] = now
    return [timed_tokens(s, t0, e, len(s)) for s, e in zip(stamps, ends, strict=True)]


async def server_stream(client: aiohttp.ClientSession, url: str, model: str, messages: list[dict[str, str]],
                        max_tokens: int) -> dict[str, Any]:
    """One streamed chat completion; a timestamp per SSE chunk that carries text.

    The client is aiohttp, as in ``vllm bench serve``: on a 2-core machine the client's own CPU time per chunk
    slows the server's steps, and aiohttp needed 60 % of httpx's (0.28 vs 0.47 ms a chunk, A/B on one server).
    """
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    stamps: list[float] = []
    tokens = 0
    cpu_first = 0.0
    t0 = time.perf_counter()
    async with client.post(f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choice = chunk["choices"][0] if chunk["choices"] else {}
            delta = choice.get("delta", {})
            # a reply whose tokens all decode to held-back or no text (one token, say) ends at its first token
            if delta.get("content") or delta.get("reasoning_content") or (choice.get("finish_reason")
                                                                          and not stamps):
                stamps.append(time.perf_counter())
                if len(stamps) == 1:
                    cpu_first = time.process_time()
    result = timed_tokens(stamps, t0, time.perf_counter(), tokens)
    result["client_cpu_s"] = time.process_time() - cpu_first  # reading and parsing the chunks after the first
    return result


async def server_batch(url: str, model: str, batch: list[list[dict[str, str]]], max_tokens: int
                       ) -> list[dict[str, Any]]:
    """Concurrent streams, started together."""
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as client:
        return list(await asyncio.gather(*(server_stream(client, url, model, m, max_tokens) for m in batch)))


def stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric summaries over runs (ITLs pooled)."""
    return {"ttft_ms": summary([r["ttft_s"] * 1e3 for r in runs]),
            "tpot_ms": summary([r["tpot_s"] * 1e3 for r in runs]),
            "itl_ms": summary([x * 1e3 for r in runs for x in r["itl_s"]]),
            "e2e_s": summary([r["e2e_s"] for r in runs]), "tok_s": summary([r["tok_s"] for r in runs])}


def sweep(args: argparse.Namespace, cb: Any, tok: Any, server: LiveServer, model: str) -> list[dict[str, Any]]:
    """Aggregate tokens/s and per-stream TPOT at each concurrency, raw continuous batching vs server.

    ``--sweep-rounds`` rounds, each visiting every level (raw, then server, with fresh prompts); medians reported.
    """
    samples: dict[int, list[dict[str, float]]] = {c: [] for c in args.concurrency}
    for rnd in range(args.sweep_rounds):
        for c in args.concurrency:
            batch = [make_messages(tok, 1000 * c + 100 * rnd + k, args.prompt_tokens) for k in range(c)]
            prompts = [tok.apply_chat_template(m, add_generation_prompt=True) for m in batch]
            t0 = time.perf_counter()
            raw = raw_cb_batch(cb, tok, prompts, args.max_tokens)
            raw_wall = time.perf_counter() - t0
            t0 = time.perf_counter()
            srv = asyncio.run(server_batch(server.base_url, model, batch, args.max_tokens))
            srv_wall = time.perf_counter() - t0
            sample = {"raw_cb_tok_s": sum(r["tokens"] for r in raw) / raw_wall,
                      "server_tok_s": sum(r["tokens"] for r in srv) / srv_wall,
                      "raw_cb_tpot_ms": summary([r["tpot_s"] * 1e3 for r in raw])["p50"],
                      "server_tpot_ms": summary([r["tpot_s"] * 1e3 for r in srv])["p50"]}
            sample["ratio"] = sample["server_tok_s"] / sample["raw_cb_tok_s"]
            samples[c].append(sample)
            print(f"round {rnd}, concurrency {c}: {sample}", flush=True)  # noqa: T201
    rows = []
    for c, runs in samples.items():
        row: dict[str, Any] = {"concurrency": c, "rounds": len(runs)}
        for key in ("raw_cb_tok_s", "server_tok_s", "raw_cb_tpot_ms", "server_tpot_ms", "ratio"):
            row[key] = summary([r[key] for r in runs])["p50"]
        row["ratios"] = [r["ratio"] for r in runs]
        rows.append(row)
    return rows


def ttft_alone(args: argparse.Namespace, pipe: Any, tok: Any, server: LiveServer, model: str) -> dict[str, Any]:
    """TTFT by itself, in many short runs: one output token, fresh prompts, raw ``LLMPipeline`` and the server in
    alternating order (raw first, then server first), so that neither always runs first after the other.

    A TTFT here spreads by tens of milliseconds from run to run; the interleaved full runs are too few (and too
    long) to resolve a difference of a few milliseconds, these are cheap.
    """
    raw_ms: list[float] = []
    srv_ms: list[float] = []

    def raw(prompt: str) -> float:
        return float(raw_run(pipe, tok, prompt, 1)["ttft_s"]) * 1e3

    def srv(messages: list[dict[str, str]]) -> float:
        return float(asyncio.run(server_batch(server.base_url, model, [messages], 1))[0]["ttft_s"]) * 1e3

    for i in range(args.ttft_runs + 1):  # the first round is warm-up
        messages = make_messages(tok, 50_000 + i, args.prompt_tokens)
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
        if i % 2:
            s, r = srv(messages), raw(prompt)
        else:
            r, s = raw(prompt), srv(messages)
        if i:
            raw_ms.append(r)
            srv_ms.append(s)
    overheads = [s - r for r, s in zip(raw_ms, srv_ms, strict=True)]
    return {"runs": args.ttft_runs, "raw_ms": summary(raw_ms), "server_ms": summary(srv_ms),
            "overheads_ms": overheads, "overhead_ms": summary(overheads)["p50"],
            "overhead_ci95_ms": median_ci(overheads)}


def multi_turn(args: argparse.Namespace, tok: Any, server: LiveServer, model: str) -> dict[str, float]:
    """TTFT of a follow-up turn in a long conversation (prefix cached) vs a cold prompt of the same length."""
    history = make_messages(tok, 777, args.history_tokens)
    history += [{"role": "assistant", "content": "Noted."}]

    async def ttft(messages: list[dict[str, str]]) -> float:
        async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as client:
            return float((await server_stream(client, server.base_url, model, messages, 4))["ttft_s"])

    asyncio.run(ttft(history[:1]))  # the first turn fills the prefix cache
    warm = asyncio.run(ttft([*history, {"role": "user", "content": "And one more question about it?"}]))
    cold_msgs = make_messages(tok, 778, args.history_tokens + 12)
    cold = asyncio.run(ttft(cold_msgs))
    return {"followup_ttft_ms": warm * 1e3, "cold_same_length_ttft_ms": cold * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="demo, bench, a model folder, a .gguf file or ollama:NAME")
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--history-tokens", type=int, default=1024)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parser.add_argument("--sweep-rounds", type=int, default=1, help="rounds of the concurrency sweep (medians)")
    parser.add_argument("--ttft-runs", type=int, default=10,
                        help="short runs (one output token) per path measuring TTFT alone")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "llm"))
    args = parser.parse_args()

    import openvino_genai as ov_genai

    models = Path(args.models_dir)
    model_dir = {"demo": models / "demo" / "llm", "bench": models / "bench" / "llm"}.get(args.model, Path(args.model))
    if args.model.startswith(OLLAMA_PREFIX):  # a model in Ollama's store: its blob, linked as a .gguf file
        name = args.model[len(OLLAMA_PREFIX):]
        model_dir = link_as_gguf(find_ollama_model(name), name, models / "ollama")
    image_dir = model_dir.parent / "image"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"AIPC_LLM_PATH": str(model_dir), "AIPC_PREFIX_CACHING": "1"}
    if image_dir.is_dir():
        env["AIPC_IMAGE_PATH"] = str(image_dir)
    server = start_server(models, out.parent / "bench-data", out.with_suffix(".server.log"), env=env,
                          ready_timeout=900)
    try:
        with PeakRSS(server.proc.pid) as server_rss, PeakRSS() as own_rss:
            ready = httpx.get(f"{server.base_url}/ready").json()["models"]
            model = httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"]
            t0 = time.perf_counter()
            pipe = ov_genai.LLMPipeline(str(model_dir), "CPU")
            raw_load = time.perf_counter() - t0
            tok = pipe.get_tokenizer()
            cb = ov_genai.ContinuousBatchingPipeline(str(model_dir), ov_genai.SchedulerConfig(), "CPU", {})
            raw, raw_cb, srv = [], [], []
            for i in range(args.runs + 1):  # the first round is warm-up
                messages = make_messages(tok, i, args.prompt_tokens)
                prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
                r = raw_run(pipe, tok, prompt, args.max_tokens)
                c = raw_cb_batch(cb, tok, [prompt], args.max_tokens)[0]
                s = asyncio.run(server_batch(server.base_url, model, [messages], args.max_tokens))[0]
                if i:
                    raw.append(r)
                    raw_cb.append(c)
                    srv.append(s)
            ttft = ttft_alone(args, pipe, tok, server, model)
            sweep_rows = sweep(args, cb, tok, server, model)
            turns = multi_turn(args, tok, server, model)
    finally:
        server.stop()
    result: dict[str, Any] = {
        "when": timestamp(), "machine": machine(), "model": str(model_dir), "runs": args.runs,
        "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
        "raw": stats(raw), "raw_cb": stats(raw_cb), "server": stats(srv), "sweep": sweep_rows,
        "ttft_alone": ttft, "multi_turn": turns,
        "load_s": {"raw_llm_pipeline": raw_load, "server_llm": ready["llm"]["load_seconds"],
                   "server_image": ready["image"]["load_seconds"]},
        "peak_rss_mib": {"server_both_models": server_rss.peak / 2**20, "bench_process": own_rss.peak / 2**20},
    }
    # single stream: this process's CPU per chunk (all its threads) while it reads the server's stream
    per_chunk = [r["client_cpu_s"] * 1e3 / max(1, len(r["itl_s"])) for r in srv]
    result["client_cpu_ms_per_chunk"] = summary(per_chunk)["p50"]
    # each server run against the raw runs just before it: drifts of the machine's speed cancel out
    result["paired_ratios_tok_s"] = [s["tok_s"] / r["tok_s"] for r, s in zip(raw, srv, strict=True)]
    result["paired_ratio_tok_s"] = summary(result["paired_ratios_tok_s"])["p50"]
    result["paired_ratio_tok_s_ci95"] = median_ci(result["paired_ratios_tok_s"])
    result["paired_ttft_overheads_ms"] = [(s["ttft_s"] - r["ttft_s"]) * 1e3 for r, s in zip(raw, srv, strict=True)]
    result["paired_ttft_overhead_ms"] = summary(result["paired_ttft_overheads_ms"])["p50"]
    result["ratio_tok_s"] = result["server"]["tok_s"]["p50"] / result["raw"]["tok_s"]["p50"]
    result["ratio_tok_s_vs_raw_cb"] = result["server"]["tok_s"]["p50"] / result["raw_cb"]["tok_s"]["p50"]
    result["ttft_overhead_ms"] = result["server"]["ttft_ms"]["p50"] - result["raw"]["ttft_ms"]["p50"]
    plot_lines(out.with_suffix(".sweep.png"), "Aggregate output tokens/s", "concurrent streams", "tokens/s",
               {"raw continuous batching": ([r["concurrency"] for r in sweep_rows],
                                            [r["raw_cb_tok_s"] for r in sweep_rows]),
                "aipc-chat server": ([r["concurrency"] for r in sweep_rows],
                                     [r["server_tok_s"] for r in sweep_rows])})
    plot_distributions(out.with_suffix(".ttft.png"), "Time to first token", "ms",
                       {"raw LLMPipeline": [r["ttft_s"] * 1e3 for r in raw],
                        "raw CB": [r["ttft_s"] * 1e3 for r in raw_cb],
                        "server": [r["ttft_s"] * 1e3 for r in srv]})
    write_outputs(result, out, markdown(result))
    print(markdown(result))  # noqa: T201
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown tables."""
    rows = []
    paths = (("raw LLMPipeline", "raw"), ("raw ContinuousBatching", "raw_cb"), ("server (HTTP/SSE)", "server"))
    for name, key in paths:
        s = r[key]
        rows.append([name, s["tok_s"]["p50"], s["ttft_ms"]["p50"], s["ttft_ms"]["p90"], s["tpot_ms"]["p50"],
                     s["tpot_ms"]["p99"], s["itl_ms"]["p50"], s["itl_ms"]["p99"], s["e2e_s"]["p50"]])
    single = table(["path", "tok/s p50", "TTFT p50 ms", "TTFT p90 ms", "TPOT p50 ms", "TPOT p99 ms", "ITL p50 ms",
                    "ITL p99 ms", "E2E p50 s"], rows)
    sweep_t = table(["streams", "raw CB tok/s", "server tok/s", "server/raw (median)", "per round", "raw TPOT ms",
                     "server TPOT ms"],
                    [[s["concurrency"], s["raw_cb_tok_s"], s["server_tok_s"], s["ratio"],
                      " ".join(f"{x:.3f}" for x in s["ratios"]), s["raw_cb_tpot_ms"], s["server_tpot_ms"]]
                     for s in r["sweep"]])
    ci, t = r["paired_ratio_tok_s_ci95"], r["ttft_alone"]
    return (f"# LLM benchmark ({r['when']})\n\n{machine_line(r['machine'])}; model `{r['model']}`; "
            f"{r['prompt_tokens']} prompt tokens, {r['max_tokens']} output tokens, {r['runs']} interleaved runs.\n\n"
            f"{single}\n\nserver/raw LLMPipeline token rate **{r['ratio_tok_s']:.3f}**, vs raw continuous batching "
            f"**{r['ratio_tok_s_vs_raw_cb']:.3f}**; TTFT overhead **{r['ttft_overhead_ms']:.1f} ms**. Run by run (each "
            f"server run over the raw LLMPipeline run just before it) the token rate ratio has median "
            f"**{r['paired_ratio_tok_s']:.3f}** (95 % CI {ci[0]:.3f}-{ci[1]:.3f}; "
            f"{' '.join(f'{x:.3f}' for x in r['paired_ratios_tok_s'])}) and "
            f"the TTFT overhead median **{r['paired_ttft_overhead_ms']:.1f} ms** "
            f"({' '.join(f'{x:.0f}' for x in r['paired_ttft_overheads_ms'])}). While its aiohttp client read a "
            f"stream this process used {r['client_cpu_ms_per_chunk']:.2f} ms of CPU per chunk (all threads).\n\n"
            f"## TTFT alone\n\n{t['runs']} short runs per path (one output token, alternating order): raw "
            f"LLMPipeline p50 {t['raw_ms']['p50']:.1f} ms, server p50 {t['server_ms']['p50']:.1f} ms; server - raw, "
            f"run by run: median **{t['overhead_ms']:.1f} ms** (95 % CI {t['overhead_ci95_ms'][0]:.1f} to "
            f"{t['overhead_ci95_ms'][1]:.1f} ms).\n\n"
            f"## Concurrency\n\n{sweep_t}\n\n## Multi-turn (prefix caching)\n\nfollow-up turn TTFT "
            f"{r['multi_turn']['followup_ttft_ms']:.1f} ms vs a cold prompt of the same length "
            f"{r['multi_turn']['cold_same_length_ttft_ms']:.1f} ms.\n\n## Load and memory\n\n"
            f"raw LLMPipeline load {r['load_s']['raw_llm_pipeline']:.2f} s; server LLM load "
            f"{r['load_s']['server_llm']} s, image load {r['load_s']['server_image']} s; peak RSS of the server with "
            f"both models {r['peak_rss_mib']['server_both_models']:.0f} MiB.\n")


if __name__ == "__main__":
    sys.exit(main())
