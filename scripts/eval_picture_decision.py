"""How well ``/chat`` with ``image: auto`` decides to draw, on a served model, over the labelled set in
``tests/data/picture_requests.jsonl``.

Labels: ``explicit`` (asks for a picture outright: must be drawn), ``implicit`` (a picture would help: the model
decides), ``plain`` and ``trap`` (no picture wanted; traps use picture words without asking for one). Each message
is one ``/chat`` turn in a fresh conversation, answered greedily; a turn that queues a picture counts as drawn
(the picture itself is cancelled at once). Reports, per label, how many were drawn, and precision and recall of
"drawn" against "a picture is wanted" (explicit and implicit).

    python scripts/eval_picture_decision.py --model demo --out bench-results/picture-demo
    python scripts/eval_picture_decision.py --model models/real/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --out bench-results/picture-smollm2

``--model`` is ``demo`` or anything ``AIPC_LLM_PATH`` takes (a model folder, a ``.gguf`` file, ``ollama:NAME``);
the image model is the demo one. ``--base-url`` measures a server already running instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from aipc_chat.intent import asks_for_picture  # noqa: E402
from scripts.bench_common import machine, machine_line, table, timestamp, write_outputs  # noqa: E402
from tests.e2e.conftest import start_server  # noqa: E402

SET = REPO / "tests" / "data" / "picture_requests.jsonl"
LABELS = ("explicit", "implicit", "plain", "trap")
TINY_PICTURE = {"steps": 1, "size": "256x256"}


def decide(base_url: str, message: str, number: int, max_tokens: int) -> bool:
    """Whether the turn queued a picture (which is then cancelled)."""
    r = httpx.post(f"{base_url}/chat", timeout=300, json={
        "user_id": "eval", "conversation_id": f"c{number}", "message": message, "image": "auto", "temperature": 0,
        "max_tokens": max_tokens, "wait_for_image": False, "image_options": TINY_PICTURE})
    r.raise_for_status()
    body = r.json()
    if body.get("image_job_id"):
        httpx.delete(f"{base_url}/v1/images/jobs/{body['image_job_id']}", timeout=30)
    return body.get("image_state") is not None


def evaluate(base_url: str, rows: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    drawn: Counter[str] = Counter()
    by_model: Counter[str] = Counter()  # drawn where the explicit-ask rule does not fire: the model's own choice
    misses: list[dict[str, str]] = []
    for number, row in enumerate(rows):
        hit = decide(base_url, row["message"], number, max_tokens)
        drawn[row["label"]] += hit
        by_model[row["label"]] += hit and not asks_for_picture(row["message"])
        wanted = row["label"] in ("explicit", "implicit")
        if hit != wanted:
            misses.append({**row, "drawn": str(hit)})
    total = Counter(r["label"] for r in rows)
    true_pos = drawn["explicit"] + drawn["implicit"]
    all_drawn = sum(drawn.values())
    unwanted = total["plain"] + total["trap"]
    return {
        "per_label": {k: {"messages": total[k], "drawn": drawn[k], "drawn_by_model": by_model[k]} for k in LABELS},
        "precision": round(true_pos / all_drawn, 3) if all_drawn else None,
        "recall": round(true_pos / (total["explicit"] + total["implicit"]), 3),
        "explicit_recall": round(drawn["explicit"] / total["explicit"], 3),
        "unwanted_drawn_rate": round((drawn["plain"] + drawn["trap"]) / unwanted, 3),
        "targets_met": drawn["explicit"] == total["explicit"] and (drawn["plain"] + drawn["trap"]) * 20 <= unwanted,
        "misses": misses,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", help="demo, or what AIPC_LLM_PATH takes")
    parser.add_argument("--base-url", help="measure this running server instead of starting one")
    parser.add_argument("--max-tokens", type=int, default=256, help="per answer (reasoning included)")
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--out", default="bench-results/picture-decision")
    args = parser.parse_args()
    rows = [json.loads(line) for line in SET.read_text(encoding="utf-8").splitlines() if line.strip()]

    t0 = time.perf_counter()
    model = args.base_url
    if args.base_url:
        result = evaluate(args.base_url, rows, args.max_tokens)
    else:
        env = {} if args.model == "demo" else {"AIPC_LLM_PATH": args.model}
        with tempfile.TemporaryDirectory(prefix="aipc-eval-") as tmp:
            server = start_server(Path(args.models_dir), Path(tmp) / "data", Path(tmp) / "server.log",
                                  env={**env, "AIPC_CHAT_RATE_PER_MINUTE": "100000", "AIPC_LOG_LEVEL": "warning"})
            try:
                model = httpx.get(f"{server.base_url}/v1/models").json()["data"][0]["id"]
                result = evaluate(server.base_url, rows, args.max_tokens)
            finally:
                server.stop()
    result.update(model=model, machine=machine(),
                  when=timestamp(), seconds=round(time.perf_counter() - t0, 1), set_size=len(rows))
    per = result["per_label"]
    lines = [
        f"# Picture decision: {result['model']}", "", machine_line(result["machine"]), "",
        table(["label", "messages", "drawn", "drawn by the model's own tag"],
              [[k, per[k]["messages"], per[k]["drawn"], per[k]["drawn_by_model"]] for k in LABELS]),
        "", f"Precision {result['precision']}, recall {result['recall']} (explicit {result['explicit_recall']}); "
        f"unwanted pictures {result['unwanted_drawn_rate']:.1%} of plain questions and traps. Targets (every explicit "
        f"ask drawn, at most 1 in 20 unwanted): {'met' if result['targets_met'] else 'NOT met'}.", "",
        "Misses: " + ("; ".join(f"{m['label']} \"{m['message']}\" drawn={m['drawn']}" for m in result["misses"])
                      or "none"),
    ]
    write_outputs(result, Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
