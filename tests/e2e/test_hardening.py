"""Localhost safety, limits and backpressure, metrics, shutdown and crash safety, on live servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import LiveServer, start_server
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
KEY = "s3cret-key"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def strict_server(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """An API key, a tiny LLM queue and a low chat rate, to reach every refusal quickly."""
    root = tmp_path_factory.mktemp("strict")
    server = start_server(demo_models.parent, root / "data", root / "server.log", env={
        "AIPC_API_KEY": KEY, "AIPC_MAX_NUM_SEQS": "2", "AIPC_LLM_QUEUE_SIZE": "2", "AIPC_CHAT_RATE_PER_MINUTE": "3"})
    yield server
    server.stop()


def wait_for(condition: Callable[[], bool]) -> None:
    wait_until(condition, poll=0.01)


def metric(base_url: str, name: str, headers: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{base_url}/metrics", headers=headers).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_foreign_host_is_refused(base_url: str) -> None:
    r = httpx.get(f"{base_url}/v1/models", headers={"host": "attacker.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"
    for host in ("localhost:1234", "127.0.0.1", "[::1]:8000"):
        assert httpx.get(f"{base_url}/health", headers={"host": host}).status_code == 200


def test_a_host_with_userinfo_is_refused(base_url: str) -> None:
    for host in ("localhost:80@evil.example", "localhost:99999", "localhost/x"):
        r = httpx.get(f"{base_url}/v1/models", headers={"host": host})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host", host


def test_cross_site_writes_are_refused_before_any_work(base_url: str) -> None:
    turn = httpx.post(f"{base_url}/chat", json={"user_id": "carol", "message": "Remember me.", "image": "never"},
                      timeout=60)
    assert turn.status_code == 200
    history = f"{base_url}/chat/carol/history"
    for headers in ({"origin": "null"}, {"sec-fetch-site": "cross-site"},
                    {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}):
        r = httpx.delete(history, headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", headers
        r = httpx.post(f"{base_url}/sdapi/v1/interrupt", content=b"{}",
                       headers={**headers, "content-type": "text/plain"})
        assert r.status_code == 403, headers
    assert len(httpx.get(history).json()["messages"]) == 2  # nothing was deleted
    # the same requests from the page's own origin, or from a client that is no browser, still work
    assert httpx.post(f"{base_url}/sdapi/v1/interrupt", headers={"sec-fetch-site": "same-origin"}).status_code == 200
    assert httpx.delete(history).json()["deleted_messages"] == 2


def test_cors_localhost_origin_granted_foreign_refused(base_url: str) -> None:
    local = "http://localhost:5173"
    r = httpx.options(f"{base_url}/v1/chat/completions", headers={
        "origin": local, "access-control-request-method": "POST", "access-control-request-headers": "content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == local
    r = httpx.get(f"{base_url}/v1/models", headers={"origin": local})
    assert r.headers["access-control-allow-origin"] == local
    r = httpx.get(f"{base_url}/v1/models", headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = httpx.options(f"{base_url}/v1/chat/completions", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("origin", ["app://obsidian.md", "tauri://localhost", "vscode-webview://1h2j3k4l5m",
                                    "vscode-file://vscode-app"])
def test_desktop_app_origins_are_allowed(base_url: str, origin: str) -> None:
    for path in ("/v1/chat/completions", "/api/chat"):
        r = httpx.options(f"{base_url}{path}", headers={"origin": origin, "access-control-request-method": "POST",
                                                        "access-control-request-headers": "content-type"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin  # echoed, not *
    r = httpx.get(f"{base_url}/api/tags", headers={"origin": origin, "sec-fetch-site": "cross-site"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["file://", "null", "app://evil.example/path/../x", "tauri-evil://x"])
def test_file_and_opaque_origins_stay_refused(base_url: str, origin: str) -> None:
    r = httpx.post(f"{base_url}/api/chat", json={"model": "x", "messages": []},
                   headers={"origin": origin, "sec-fetch-site": "cross-site"})
    assert r.status_code == 403 and isinstance(r.json()["error"], str)  # Ollama's shape under /api/


def test_huge_body_is_413(base_url: str) -> None:
    body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "a" * (21 * 1024 * 1024)}]})
    r = httpx.post(f"{base_url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body streams in
        for _ in range(21):
            yield b"a" * (1024 * 1024)

    r = httpx.post(f"{base_url}/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_request_id_is_returned(base_url: str) -> None:
    assert len(httpx.get(f"{base_url}/health").headers["x-request-id"]) >= 8
    assert httpx.get(f"{base_url}/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"


def test_api_key_enforced(strict_server: LiveServer) -> None:
    url = strict_server.base_url
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/v1/models", headers=AUTH).status_code == 200
    basic = base64.b64encode(f"user:{KEY}".encode()).decode()
    assert httpx.get(f"{url}/sdapi/v1/options", headers={"authorization": f"Basic {basic}"}).status_code == 200
    assert httpx.post(f"{url}/chat", json={"user_id": "u", "message": "hi"}).status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/ready").status_code == 200
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert client.models.list().data
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()


def test_image_urls_work_without_the_key(strict_server: LiveServer) -> None:
    url = strict_server.base_url
    r = httpx.post(f"{url}/v1/images/generations", headers=AUTH, timeout=60,
                   json={"prompt": "x", "size": "64x64", "num_inference_steps": 1})
    image = r.json()["data"][0]["url"]
    assert httpx.get(image).status_code == 200  # an <img> tag sends no header: the URL is the capability


def test_chat_rate_limit_is_429_with_retry_after(strict_server: LiveServer) -> None:
    codes = []
    for _ in range(5):
        r = httpx.post(f"{strict_server.base_url}/chat", headers=AUTH, timeout=60,
                       json={"user_id": "eager", "message": "Hello!", "image": "never"})
        codes.append(r.status_code)
    assert codes[0] == 200 and 429 in codes
    r = httpx.post(f"{strict_server.base_url}/chat", headers=AUTH, timeout=60,
                   json={"user_id": "eager", "message": "Hello!", "image": "never"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    r = httpx.post(f"{strict_server.base_url}/chat", headers=AUTH, timeout=60,
                   json={"user_id": "someone-else", "message": "Hello!", "image": "never"})
    assert r.status_code == 200


async def _storm(url: str, n: int, headers: dict[str, str]) -> list[tuple[int, str | None, bool]]:
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:
        async def one(i: int) -> tuple[int, str | None, bool]:
            body = {"messages": [{"role": "user", "content": f"storm {i}"}], "max_tokens": 64, "ignore_eos": True,
                    "stream": True}
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                text = (await r.aread()).decode()
                return r.status_code, r.headers.get("retry-after"), text.rstrip().endswith("data: [DONE]")

        return await asyncio.gather(*(one(i) for i in range(n)))


def test_48_concurrent_streams_complete_or_are_refused_cleanly(base_url: str, strict_server: LiveServer) -> None:
    for url, headers in ((base_url, {}), (strict_server.base_url, AUTH)):
        results = asyncio.run(_storm(url, 48, headers))
        for status, retry_after, finished in results:
            assert status == 200 and finished or status in (429, 503) and retry_after is not None
        assert httpx.get(f"{url}/ready").status_code == 200
    # the default server admits at least 8 streams at once; the strict one (2 + 2) refuses the rest
    assert all(s == 200 for s, _, _ in asyncio.run(_storm(base_url, 8, {})))
    assert any(s == 503 for s, _, _ in results)


def assert_a_dropped_stream_stops(base_url: str, path: str, body: dict[str, Any]) -> None:
    """Read a few lines of a long stream, leave, and see the engine stop generating it: the gauge goes back to 0
    and the request never finished (a finished one adds its tokens to the counter; a cancelled one does not)."""
    generated = metric(base_url, "aipc_llm_generated_tokens_total")
    with httpx.stream("POST", f"{base_url}{path}", json=body, timeout=60) as r:
        lines = r.iter_lines()  # kept open: breaking out of a for loop over it would close the connection already
        for _ in range(5):
            next(lines)
        assert metric(base_url, "aipc_llm_active_requests") == 1
    wait_for(lambda: metric(base_url, "aipc_llm_active_requests") == 0)
    assert metric(base_url, "aipc_llm_generated_tokens_total") == generated


def test_dropped_stream_leaves_the_active_gauge_at_once(base_url: str) -> None:
    assert_a_dropped_stream_stops(base_url, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Go on and on."}], "max_tokens": 4000, "ignore_eos": True,
        "stream": True})


def test_a_lone_request_is_not_held_for_the_admission_window(base_url: str) -> None:
    """The shared server waits up to 100 ms for LLM requests on their way; a lone one starts at once.

    Also after a burst that holds a refused request, whose arrival only the end of its response settles: a leaked
    arrival would hold every later request for the whole window.
    """
    url = f"{base_url}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            sent = [client.post(url, json=body) for _ in range(3)]
            sent.append(client.post(url, json={"messages": [], "max_tokens": 3}))
            return [r.status_code for r in await asyncio.gather(*sent)]

    count = metric(base_url, "aipc_llm_queue_seconds_count")
    assert asyncio.run(burst()) == [200, 200, 200, 400]
    count += 3
    wait_for(lambda: metric(base_url, "aipc_llm_queue_seconds_count") == count)  # the burst's observers ran
    before = metric(base_url, "aipc_llm_queue_seconds_sum")
    assert httpx.post(url, json=body, timeout=60).status_code == 200
    wait_for(lambda: metric(base_url, "aipc_llm_queue_seconds_count") == count + 1)
    # Held for the window, it would have queued 100 ms; a lone request starts as soon as the owner thread runs.
    assert metric(base_url, "aipc_llm_queue_seconds_sum") - before < 0.1


def test_metrics_are_exposed(base_url: str) -> None:
    httpx.post(f"{base_url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                        "max_tokens": 5})
    httpx.post(f"{base_url}/v1/images/generations", json={"prompt": "x", "size": "64x64", "num_inference_steps": 1},
               timeout=60)
    text = httpx.get(f"{base_url}/metrics").text
    for name in ("aipc_requests_total", "aipc_request_duration_seconds_bucket", "aipc_llm_ttft_seconds_bucket",
                 "aipc_llm_tokens_per_second_bucket", "aipc_llm_generated_tokens_total",
                 "aipc_llm_queue_seconds_bucket",
                 "aipc_image_job_seconds_bucket",
                 "aipc_image_steps_total", "aipc_llm_queue_depth", "aipc_image_queue_depth",
                 "aipc_model_load_seconds", "aipc_llm_active_requests", "aipc_image_active_jobs"):
        assert name in text, name
    assert 'route="/v1/chat/completions"' in text
    assert all(line.startswith(("aipc_", "#")) for line in text.splitlines() if line)


def test_sigterm_during_generation_exits_cleanly(demo_models: Path, tmp_path: Path) -> None:
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "s.log")
    body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 4000, "ignore_eos": True,
            "stream": True}
    seen: list[str] = []

    def stream() -> None:
        try:
            with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as r:
                seen.extend(r.iter_lines())
        except httpx.HTTPError as exc:
            seen.append(f"error: {exc!r}")

    reader = threading.Thread(target=stream)
    reader.start()
    wait_for(lambda: metric(server.base_url, "aipc_llm_active_requests") >= 1)
    t0 = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=35)
    assert time.monotonic() - t0 < 30
    assert code in (0, -signal.SIGTERM)
    reader.join(10)
    assert seen and not any(s.startswith("error") for s in seen)
    log = server.log()
    assert "Application shutdown complete" in log and "Traceback" not in log


def test_sigkill_mid_turn_keeps_earlier_history(demo_models: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(demo_models.parent, data, tmp_path / "s1.log")
    for text in ("Hello!", "What is an NPU?"):
        httpx.post(f"{server.base_url}/chat", json={"user_id": "crash", "message": text, "image": "never"},
                   timeout=60).raise_for_status()
    def doomed_turn() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server is killed under it
            httpx.post(f"{server.base_url}/chat", timeout=60, json={
                "user_id": "crash", "message": "Draw a ship", "image": "always",
                "image_options": {"steps": 100, "size": "512x512"}})

    pending = threading.Thread(target=doomed_turn)
    pending.start()
    wait_for(lambda: metric(server.base_url, "aipc_image_active_jobs") >= 1)
    server.stop(signal.SIGKILL)
    pending.join(10)
    server = start_server(demo_models.parent, data, tmp_path / "s2.log")
    try:
        users = [m["content"] for m in httpx.get(f"{server.base_url}/chat/crash/history").json()["messages"]
                 if m["role"] == "user"]
        assert users[:2] == ["Hello!", "What is an NPU?"]
    finally:
        server.stop()


@pytest.mark.parametrize(("body", "param"), [
    ('{"messages": [{"role": "user", "content": "a \\ud800"}], "max_tokens": 4}', "messages.0.content"),
    ('{"messages": [{"role": "system", "content": "\\udfff x"}, {"role": "user", "content": "hi"}], "max_tokens": 4}',
     "messages.0.content"),
    ('{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\uD800"], "max_tokens": 4}', "stop.0"),
    ('{"messages": [{"role": "user", "content": [{"type": "text", "text": "x\\ud834"}]}]}',
     "messages.0.content.0.text"),
])
def test_lone_surrogates_are_a_400_naming_the_field(base_url: str, body: str, param: str) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:  # one kept-alive connection
        r = client.post("/v1/chat/completions", content=body.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert "surrogate" in r.json()["error"]["message"]
        pair = b'{"messages": [{"role": "user", "content": "a \\ud83d\\ude00"}], "max_tokens": 4}'
        ok = client.post("/v1/chat/completions", content=pair, headers={"content-type": "application/json"})
        assert ok.status_code == 200  # the same connection serves on; a valid pair is fine
        chat = client.post("/chat", content=b'{"user_id": "s", "message": "\\ud800", "image": "never"}',
                           headers={"content-type": "application/json"})
        assert chat.status_code == 400 and chat.json()["error"]["param"] == "message"


def test_message_shapes_follow_openai(base_url: str) -> None:
    url = f"{base_url}/v1/chat/completions"
    for role in ("user", "system"):
        messages = [{"role": role}, {"role": "user", "content": "hi"}] if role == "system" else [{"role": role}]
        r = httpx.post(url, json={"messages": messages})
        assert r.status_code == 400 and "needs content" in r.json()["error"]["message"], r.text
    image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
    r = httpx.post(url, json={"messages": [image]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.content.1"
    assert "Image input is not supported by this model" in r.json()["error"]["message"]
    # an assistant turn without content (one that called tools) is accepted, as OpenAI accepts it
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"},
                                           {"role": "user", "content": "again"}], "max_tokens": 4})
    assert r.status_code == 200


def cancelled_jobs(base_url: str) -> float:
    try:
        return metric(base_url, 'aipc_image_jobs_total{state="cancelled"}')
    except AssertionError:
        return 0.0


def leave_after(seconds: float, base_url: str, path: str, body: dict[str, object]) -> float:
    """Send a non-streamed request and leave (close the connection) after ``seconds``; when it was left."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}{path}", json=body, timeout=httpx.Timeout(60, read=seconds))
    return time.monotonic()


def test_a_client_that_leaves_a_non_streamed_request_stops_its_work(base_url: str) -> None:
    """4,000 tokens or 100 steps at 512x512 take the demo models several seconds; each stops once the client leaves
    (the gauges are back to 0): the reply never finished (no tokens counted) and the pictures count as cancelled."""
    long_reply = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 4000, "ignore_eos": True}
    generated = metric(base_url, "aipc_llm_generated_tokens_total")
    leave_after(1.0, base_url, "/v1/chat/completions", long_reply)
    wait_for(lambda: metric(base_url, "aipc_llm_active_requests") == 0)
    assert metric(base_url, "aipc_llm_generated_tokens_total") == generated  # cancelled: it never finished

    picture = {"prompt": "a lighthouse", "size": "512x512", "num_inference_steps": 100}
    for path, body in (("/v1/images/generations", picture),
                       ("/sdapi/v1/txt2img", {"prompt": "a lighthouse", "steps": 100, "width": 512, "height": 512}),
                       ("/chat", {"user_id": "leaver", "message": "Draw a lighthouse.", "image": "always",
                                  "image_options": {"steps": 100, "size": "512x512"}})):
        before = cancelled_jobs(base_url)
        leave_after(1.5, base_url, path, body)
        wait_for(lambda: metric(base_url, "aipc_image_active_jobs") == 0)
        wait_for(lambda b=before: cancelled_jobs(base_url) == b + 1)  # type: ignore[misc]
