"""JSON mode as both APIs ask for it, over many seeds: every reply must be a JSON object ``json.loads`` reads."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

PROMPT = "Describe a cat as JSON with its name, age and colour."


def json_mode_replies(base_url: str, model: str, seeds: range, max_tokens: int) -> list[tuple[str, str, Any]]:
    """(api, finish reason, content) of one OpenAI json_object and one Ollama format json request per seed."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=120)
    out: list[tuple[str, str, Any]] = []
    for seed in seeds:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPT}], response_format={"type": "json_object"},
            seed=seed, temperature=1.0, max_tokens=max_tokens)
        out.append(("openai", str(reply.choices[0].finish_reason), reply.choices[0].message.content))
        body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "format": "json",
                "stream": False, "options": {"seed": seed, "temperature": 1.0, "num_predict": max_tokens}}
        answer = httpx.post(f"{base_url}/api/chat", json=body, timeout=120).json()
        out.append(("ollama", str(answer.get("done_reason")), answer["message"]["content"]))
    return out


def assert_all_json_objects(replies: list[tuple[str, str, Any]]) -> None:
    bad = []
    for api, finish, content in replies:
        try:
            ok = isinstance(json.loads(content), dict)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append((api, finish, content))
    assert not bad, f"{len(bad)} of {len(replies)} replies are not JSON objects: {bad[:3]}"
