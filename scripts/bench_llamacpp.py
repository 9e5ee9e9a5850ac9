"""llama.cpp beside openvino-genai and the aipc-chat server, on one network, interleaved run by run.

Each engine runs in its own process and is loaded once; the rounds then take turns: in each round every engine
gets the same prompt (token ids, different each round so that no engine reuses a prefix cache) for one stream,
then four streams at once. Greedy, ``--max-tokens`` new tokens each, end of sequence ignored. Reported: decode
tok/s of one stream (from the first token to the last), TTFT, the steady aggregate of four streams (tokens after
the last stream's first token, over that window), and each process's peak RSS. Ratios are against llama.cpp's
first GGUF (or, with ``--no-llamacpp``, the first IR).

    python scripts/bench_llamacpp.py --rounds 8                       # bench/llm against bench/llm-gguf Q4_0
    python scripts/bench_llamacpp.py --ir models/bench/variants/sym_cw --gguf a.gguf --gguf b.gguf --no-server

llama-cpp-python is an optional benchmark dependency (``pip install '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from scripts.bench_common import machine, machine_line, table, timestamp, write_outputs  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402

THREADS = psutil.cpu_count(logical=False) or 2


# --- engines, each in a worker process -----------------------------------------------------------------------


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level API: one context with room for four sequences, greedy."""

    def __init__(self, path: str, streams: int, ctx_per_stream: int, mmap: bool) -> None:
        import llama_cpp as lc

        self.lc = lc
        lc.llama_backend_init()
        mparams = lc.llama_model_default_params()
        mparams.use_mmap = mmap
        self.model = lc.llama_model_load_from_file(path.encode(), mparams)
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = ctx_per_stream * streams
        cparams.n_batch = cparams.n_ubatch = 512
        cparams.n_seq_max = streams
        cparams.n_threads = cparams.n_threads_batch = THREADS
        cparams.kv_unified = True
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.batch = lc.llama_batch_init(512 * streams, 0, streams)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) entries."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (tok, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        if self.lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, i: int) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
        return int(logits.argmax())

    def run(self, prompts: list[list[int]], max_tokens: int) -> list[list[float]]:
        """Generate for each prompt at once; the arrival time of every token of each."""
        mem = self.lc.llama_get_memory(self.ctx)
        self.lc.llama_memory_clear(mem, True)
        stamps: list[list[float]] = [[] for _ in prompts]
        last: list[int] = []
        for seq, ids in enumerate(prompts):  # prefill each prompt, in chunks of the batch size
            for start in range(0, len(ids), 512):
                chunk = ids[start:start + 512]
                self._decode([(t, start + j, seq, start + j == len(ids) - 1) for j, t in enumerate(chunk)])
            last.append(self._argmax(len(ids) - 1 - (len(ids) - 1) // 512 * 512))
            stamps[seq].append(time.perf_counter())
        pos = [len(ids) for ids in prompts]
        for _ in range(max_tokens - 1):
            self._decode([(last[s], pos[s], s, True) for s in range(len(prompts))])
            now = time.perf_counter()
            for s in range(len(prompts)):
                last[s] = self._argmax(s)
                pos[s] += 1
                stamps[s].append(now)
        return stamps


class OpenVINOGenAI:
    """openvino-genai's ContinuousBatchingPipeline configured as the server configures it, stepped by hand."""

    def __init__(self, path: str, streams: int, ctx_per_stream: int, mmap: bool) -> None:
        import openvino_genai as ov_genai

        from aipc_chat.engines.llm import device_properties, scheduler_config
        from aipc_chat.settings import Settings

        settings = Settings(models_dir=REPO / "models", max_num_seqs=max(streams, 4))
        self.ov = ov_genai
        self.pipe = ov_genai.ContinuousBatchingPipeline(path, scheduler_config(settings), "CPU",
                                                        device_properties(settings, "CPU"))
        self.ids = 0

    def run(self, prompts: list[list[int]], max_tokens: int) -> list[list[float]]:
        """Add the prompts together and step until done; the arrival time of every token of each."""
        import openvino as ov

        config = self.ov.GenerationConfig(max_new_tokens=max_tokens, ignore_eos=True, do_sample=False)
        handles = []
        for ids in prompts:
            self.ids += 1
            handles.append(self.pipe.add_request(self.ids, ov.Tensor(_int64(ids)), config))
        stamps: list[list[float]] = [[] for _ in prompts]
        while self.pipe.has_non_finished_requests():
            self.pipe.step()
            now = time.perf_counter()
            for k, handle in enumerate(handles):
                while handle.can_read():
                    for out in handle.read().values():
                        stamps[k].extend([now] * len(out.generated_ids))
        return stamps


def _int64(ids: list[int]) -> Any:
    import numpy as np

    return np.asarray([ids], dtype=np.int64)


ENGINES = {"llama.cpp": LlamaCpp, "openvino-genai": OpenVINOGenAI}


def worker(kind: str, path: str, streams: int, ctx: int, mmap: bool, conn: Any) -> None:
    """Load one engine, then answer ("run", prompts, max_tokens) until told to stop."""
    if kind == "llama.cpp":  # its loader logs hundreds of lines to stderr
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    t0 = time.perf_counter()
    engine = ENGINES[kind](path, streams, ctx, mmap)
    conn.send({"load_s": time.perf_counter() - t0})
    while (msg := conn.recv()) is not None:
        _, prompts, max_tokens = msg
        t0 = time.perf_counter()
        stamps = engine.run(prompts, max_tokens)
        conn.send({"t0": t0, "stamps": stamps})


class Worker:
    """A loaded engine in its own process."""

    def __init__(self, name: str, kind: str, path: str, args: argparse.Namespace) -> None:
        self.name = name
        parent, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(
            target=worker, args=(kind, path, 4, args.prompt_tokens + args.max_tokens + 64, not args.no_mmap, child),
            daemon=True)
        self.proc.start()
        self.conn = parent
        self.load_s = float(self.conn.recv()["load_s"])
        self.ps = psutil.Process(self.proc.pid)
        self.peak = self.ps.memory_info().rss

    def run(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        self.conn.send(("run", prompts, max_tokens))
        out: dict[str, Any] = self.conn.recv()
        self.peak = max(self.peak, self.ps.memory_info().rss)
        return out

    def stop(self) -> None:
        self.conn.send(None)
        self.proc.join(30)


# --- the server, through its OpenAI endpoint -------------------------------------------------------------------


async def _server_stream(session: aiohttp.ClientSession, url: str, text: str, max_tokens: int) -> list[float]:
    body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "ignore_eos": True,
            "temperature": 0, "stream": True, "reasoning_budget": max_tokens}
    stamps: list[float] = []
    async with session.post(f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if line.startswith(b"data: {") and b'"delta":{}' not in line.replace(b" ", b""):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content") or delta.get("reasoning_content"):
                    stamps.append(time.perf_counter())
    return stamps


def server_run(url: str, texts: list[str], max_tokens: int) -> dict[str, Any]:
    async def go() -> list[list[float]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
            return list(await asyncio.gather(*(_server_stream(session, url, t, max_tokens) for t in texts)))

    t0 = time.perf_counter()
    stamps = asyncio.run(go())
    return {"t0": t0, "stamps": stamps}


# --- measuring -----------------------------------------------------------------------------------------------


def single(result: dict[str, Any], max_tokens: int) -> dict[str, float]:
    s = result["stamps"][0]
    decode = s[-1] - s[0]
    # the server sends chunks: count the tokens it was asked for, not the chunks
    return {"ttft_s": s[0] - result["t0"], "tok_s": (max_tokens - 1) / decode if decode > 0 else float("nan")}


def _median(values: list[float]) -> float:
    """The median of the rounds that could be measured: a stream that arrived in one chunk (a tiny model outruns a
    busy client, and the server sends what piled up at once) has no decode time to divide by (NaN)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


def aggregate(result: dict[str, Any], max_tokens: int) -> float:
    """Tokens per second of all streams together once every stream has its first token."""
    starts = [s[0] for s in result["stamps"]]
    begin, end = max(starts), max(s[-1] for s in result["stamps"])
    chunks = sum(sum(1 for t in s if t > begin) for s in result["stamps"])
    per_chunk = max_tokens / max(1, min(len(s) for s in result["stamps"]))  # a server chunk may hold several tokens
    return chunks * per_chunk / (end - begin) if end > begin else float("nan")


def prompts_for(tokenizer: Any, round_no: int, n: int, length: int) -> tuple[list[list[int]], list[str]]:
    """``n`` prompts of ``length`` token ids, different each round, and their text (for the server)."""
    import random

    rng = random.Random(round_no)
    words = ["the", "a", "model", "laptop", "runs", "fast", "memory", "tokens", "energy", "picture", "answer",
             "reason", "quiet", "light", "river"]
    ids_list, texts = [], []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(length * 2))
        ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False).input_ids.data[0][:length]]
        ids_list.append(ids)
        texts.append(tokenizer.decode(ids))
    return ids_list, texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--ir", action="append", help="OpenVINO IR folders (default <models>/bench/llm)")
    parser.add_argument("--gguf", action="append", help="GGUF files (default <models>/bench/llm-gguf/model-Q4_0.gguf)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--no-server", action="store_true", help="time the raw engines only")
    parser.add_argument("--no-llamacpp", action="store_true",
                        help="openvino-genai and the server only (no llama-cpp-python installed; ratios are then "
                             "against the first IR)")
    parser.add_argument("--no-mmap", action="store_true", help="llama.cpp reads its file into memory")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "llamacpp"))
    args = parser.parse_args()
    import openvino_genai as ov_genai

    models = Path(args.models_dir)
    irs = [Path(p) for p in (args.ir or [models / "bench" / "llm"])]
    ggufs = [] if args.no_llamacpp else [Path(p) for p in (args.gguf or [models / "bench" / "llm-gguf" /
                                                                           "model-Q4_0.gguf"])]
    tokenizer = ov_genai.Tokenizer(str(irs[0]))
    workers = [Worker(f"llama.cpp {g.stem.removeprefix('model-')}", "llama.cpp", str(g), args) for g in ggufs]
    workers += [Worker(f"openvino-genai {p.name}", "openvino-genai", str(p), args) for p in irs]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    server = None if args.no_server else start_server(models, out.parent / "bench-data", out.with_suffix(".server.log"),
                                                      env={"AIPC_LLM_PATH": str(irs[0])}, ready_timeout=900)
    names = [w.name for w in workers] + ([] if server is None else [f"aipc-chat server ({irs[0].name})"])
    runs: dict[str, dict[str, list[float]]] = {n: {"tok_s": [], "ttft_s": [], "agg4": []} for n in names}
    try:
        for r in range(args.rounds + 1):  # round 0 warms every engine up
            one, one_text = prompts_for(tokenizer, r, 1, args.prompt_tokens)
            four, four_text = prompts_for(tokenizer, 1000 + r, 4, args.prompt_tokens)
            for name in names:
                worker_ = next((w for w in workers if w.name == name), None)
                if worker_ is not None:
                    s1, s4 = worker_.run(one, args.max_tokens), worker_.run(four, args.max_tokens)
                else:
                    assert server is not None
                    s1 = server_run(server.base_url, one_text, args.max_tokens)
                    s4 = server_run(server.base_url, four_text, args.max_tokens)
                if r:
                    m = single(s1, args.max_tokens)
                    runs[name]["tok_s"].append(m["tok_s"])
                    runs[name]["ttft_s"].append(m["ttft_s"])
                    runs[name]["agg4"].append(aggregate(s4, args.max_tokens))
            print(f"round {r} done", flush=True)  # noqa: T201
        server_rss = psutil.Process(server.proc.pid).memory_info().rss if server else None
    finally:
        for w in workers:
            w.stop()
        if server is not None:
            server.stop()
    summary = {n: {k: _median(v) for k, v in runs[n].items()} for n in names}
    peaks = {w.name: w.peak / 2**20 for w in workers}
    if server is not None and server_rss is not None:
        peaks[names[-1]] = server_rss / 2**20
    base = summary[names[0]]
    result = {"when": timestamp(), "machine": machine(), "rounds": args.rounds, "prompt_tokens": args.prompt_tokens,
              "baseline": names[0],
              "max_tokens": args.max_tokens, "threads": THREADS, "mmap": not args.no_mmap, "summary": summary,
              "ratios": {n: {"tok_s": s["tok_s"] / base["tok_s"], "agg4": s["agg4"] / base["agg4"]}
                         for n, s in summary.items()},
              "rss_mib": peaks, "load_s": {w.name: w.load_s for w in workers}, "runs": runs}
    write_outputs(result, out, markdown(result))
    print(markdown(result))  # noqa: T201
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The run as Markdown."""
    rows = [[name, s["tok_s"], f"{r['ratios'][name]['tok_s']:.2f}x", s["ttft_s"] * 1e3, s["agg4"],
             f"{r['ratios'][name]['agg4']:.2f}x", round(r["rss_mib"].get(name, float("nan")))]
            for name, s in r["summary"].items()]
    return (f"# llama.cpp side by side ({r['when']})\n\n{machine_line(r['machine'])}; {r['threads']} threads; "
            f"{r['prompt_tokens']}-token prompts, {r['max_tokens']} new tokens, greedy; medians of {r['rounds']} "
            f"interleaved rounds; llama.cpp mmap {'on' if r['mmap'] else 'off'}.\n\n"
            + table(["engine", "decode tok/s (1 stream)", f"vs {r['baseline']}", "TTFT ms",
                     "4 streams, steady tok/s", f"vs {r['baseline']}", "RSS MiB"], rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
