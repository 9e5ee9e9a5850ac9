"""POST /chat on a live demo server: text turns, image turns, streaming, history, restarts, bad input."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import start_server
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
FAST_IMAGE = {"steps": 2, "size": "64x64"}


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def chat(base_url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base_url}/chat", json=body, timeout=120)


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            name = "message"
    return events


def test_text_only_turn(base_url: str) -> None:
    r = chat(base_url, user_id=new_user(), message="What is OpenVINO?", image="never")
    assert r.status_code == 200
    body = r.json()
    assert body["assistant_response"] and body["reasoning"]
    assert "<think>" not in body["assistant_response"] and "</think>" not in body["assistant_response"]
    assert (body["image_generated"], body["image_urls"], body["image_prompt"]) == (False, [], None)


def test_always_turn_returns_fetchable_pngs(base_url: str) -> None:
    r = chat(base_url, user_id=new_user(), message="A lighthouse at dusk", image="always", image_options=FAST_IMAGE)
    body = r.json()
    assert r.status_code == 200 and body["image_generated"] is True and body["image_state"] == "done"
    assert body["image_prompt"]["prompt"] and body["image_job_id"]
    assert len(body["image_urls"]) == 1
    png = httpx.get(body["image_urls"][0])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    job = httpx.get(f"{base_url}/v1/images/jobs/{body['image_job_id']}").json()
    assert job["state"] == "done" and job["images"] == body["image_urls"]


def test_no_wait_returns_at_once_and_the_url_becomes_valid(base_url: str) -> None:
    r = chat(base_url, user_id=new_user(), message="Draw a fox", image="always", wait_for_image=False,
             image_options={"steps": 30, "size": "256x256"})
    body = r.json()
    assert body["image_state"] == "queued" and body["image_urls"]
    wait_until(lambda: httpx.get(f"{base_url}/v1/images/jobs/{body['image_job_id']}").json()["state"] == "done",
               "the picture done")
    assert httpx.get(body["image_urls"][0]).status_code == 200


def test_streaming_turn_events_in_order(base_url: str) -> None:
    body = {"user_id": new_user(), "message": "Draw a cat on a sofa", "image": "always", "stream": True,
            "image_options": {"steps": 40, "size": "512x512"}}
    with httpx.stream("POST", f"{base_url}/chat", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    names = [n for n, _ in events]
    assert names[-1] == "done"
    assert "reasoning" in names and "content" in names
    order = ["image_prompt", "image_queued", "image_progress", "image_done", "done"]
    positions = [names.index(n) for n in order]
    assert positions == sorted(positions)
    assert max(i for i, n in enumerate(names) if n in ("reasoning", "content")) < names.index("image_prompt")
    final = events[-1][1]
    assert final["assistant_response"] == "".join(d["text"] for n, d in events if n == "content").strip()
    assert final["reasoning"] == "".join(d["text"] for n, d in events if n == "reasoning").strip()
    progress = [d["step"] for n, d in events if n == "image_progress"]
    assert progress == sorted(progress) and all(0 <= p <= 40 for p in progress)
    assert final["image_urls"] == dict(events)["image_done"]["image_urls"]
    # Live previews: each new one once, as a PNG, steps rising.
    previews = [(d["preview_step"], d["preview"]) for n, d in events if n == "image_progress" and d["preview"]]
    assert previews and [s for s, _ in previews] == sorted({s for s, _ in previews})
    assert all(base64.b64decode(png).startswith(b"\x89PNG") for _, png in previews)
    timings = final["timings"]
    assert {"llm_s", "image_s", "total_s"} <= set(timings)
    assert sum(v for k, v in timings.items() if k != "total_s") <= timings["total_s"]


def test_history_is_per_user_and_deletable(base_url: str) -> None:
    alice, bob = new_user(), new_user()
    chat(base_url, user_id=alice, message="Hello!", image="never")
    chat(base_url, user_id=alice, message="What is an NPU?", image="never")
    chat(base_url, user_id=alice, message="Hi", image="never", conversation_id="side")
    chat(base_url, user_id=bob, message="Who are you?", image="never")
    h = httpx.get(f"{base_url}/chat/{alice}/history").json()["messages"]
    assert [m["role"] for m in h] == ["user", "assistant"] * 2
    assert [m["content"] for m in h if m["role"] == "user"] == ["Hello!", "What is an NPU?"]
    assert all("<think>" not in m["content"] for m in h)
    convs = httpx.get(f"{base_url}/chat/{alice}/conversations").json()["conversations"]
    assert {c["conversation_id"] for c in convs} == {"default", "side"}
    side = httpx.get(f"{base_url}/chat/{alice}/history", params={"conversation_id": "side"}).json()["messages"]
    assert [m["content"] for m in side if m["role"] == "user"] == ["Hi"]
    r = httpx.delete(f"{base_url}/chat/{alice}/history", params={"conversation_id": "default"})
    assert r.json()["deleted_messages"] == 4
    assert httpx.get(f"{base_url}/chat/{alice}/history").json()["messages"] == []
    side = httpx.get(f"{base_url}/chat/{alice}/history", params={"conversation_id": "side"}).json()["messages"]
    assert len(side) == 2
    assert len(httpx.get(f"{base_url}/chat/{bob}/history").json()["messages"]) == 2


def test_deleting_a_conversation_deletes_its_pictures(base_url: str) -> None:
    user = new_user()
    drawn = [chat(base_url, user_id=user, message=f"Draw a fox {i}", image="always", image_options=FAST_IMAGE,
                  conversation_id=conv).json()["image_urls"][0] for i, conv in enumerate(("gone", "kept"))]
    assert all(httpx.get(url).status_code == 200 for url in drawn)
    r = httpx.delete(f"{base_url}/chat/{user}/history", params={"conversation_id": "gone"})
    assert r.status_code == 200
    assert (r.json()["deleted_messages"], r.json()["deleted_images"]) == (2, 1) and "image_error" not in r.json()
    assert httpx.get(drawn[0]).status_code == 404  # the file is gone, not only the message
    assert httpx.get(drawn[1]).status_code == 200  # another conversation's picture stays
    again = httpx.delete(f"{base_url}/chat/{user}/history").json()
    assert (again["deleted_messages"], again["deleted_images"]) == (2, 1)
    assert httpx.get(drawn[1]).status_code == 404


def test_a_picture_rendering_when_its_conversation_is_deleted_is_deleted_once_done(base_url: str) -> None:
    user = new_user()
    body = chat(base_url, user_id=user, message="Draw a fox", image="always", wait_for_image=False,
                image_options={"steps": 100, "size": "512x512"}).json()  # 6 s: deleted long before it is done
    assert body["image_state"] == "queued"
    deleted = httpx.delete(f"{base_url}/chat/{user}/history").json()
    assert (deleted["deleted_messages"], deleted["deleted_images"]) == (2, 0)  # still rendering: not the route's
    job = f"{base_url}/v1/images/jobs/{body['image_job_id']}"
    wait_until(lambda: httpx.get(job).json()["state"] == "done", "the picture done")
    wait_until(lambda: httpx.get(body["image_urls"][0]).status_code == 404, "the finished picture deleted")


@pytest.mark.parametrize(
    "body",
    [
        {"message": "hi"},
        {"user_id": "u"},
        {"user_id": "u", "message": ""},
        {"user_id": "u", "message": "   "},
        {"user_id": "../etc", "message": "hi"},
        {"user_id": "u" * 200, "message": "hi"},
        {"user_id": "u", "message": "x" * 20000},
        {"user_id": "u", "message": "hi", "image": "sometimes"},
        {"user_id": "u", "message": "hi", "image_options": {"size": "big"}},
        {"user_id": "u", "message": "hi", "image_options": {"steps": 0}},
        {"user_id": "u", "message": "hi", "unknown_field": 1},
    ],
)
def test_bad_chat_requests_are_400(base_url: str, body: dict[str, Any]) -> None:
    r = httpx.post(f"{base_url}/chat", json=body)
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_image_size_for_the_model_is_reported_not_500(base_url: str) -> None:
    r = chat(base_url, user_id=new_user(), message="Draw a fox", image="always",
             image_options={"steps": 2, "size": "100x100"})
    assert r.status_code == 200
    assert r.json()["image_generated"] is False and r.json()["image_error"]["code"] == "invalid_value"


def test_bad_history_user_id_is_400(base_url: str) -> None:
    assert httpx.get(f"{base_url}/chat/bad%20id/history").status_code == 400


def test_history_survives_a_restart(demo_models: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(demo_models.parent, data, tmp_path / "s1.log")
    try:
        body = chat(server.base_url, user_id="keeper", message="Draw a boat", image="always",
                    image_options=FAST_IMAGE).json()
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    assert "Application shutdown complete" in server.log()
    server = start_server(demo_models.parent, data, tmp_path / "s2.log")
    try:
        history = httpx.get(f"{server.base_url}/chat/keeper/history").json()["messages"]
        assert [m["content"] for m in history] == ["Draw a boat", body["assistant_response"]]
        url = history[1]["image_urls"][0]
        assert url.endswith(body["image_urls"][0].rsplit("/", 1)[-1])
        assert httpx.get(url).status_code == 200
    finally:
        server.stop()


def test_a_picture_cut_by_sigkill_is_marked_interrupted_after_restart(demo_models: Path, tmp_path: Path) -> None:
    """History never points at a picture that does not exist: one in flight when the process died is marked."""
    server = start_server(demo_models.parent, tmp_path / "data", tmp_path / "one.log")
    body = {"user_id": "kim", "message": "Draw a lighthouse.", "image": "always", "stream": True,
            "image_options": {"steps": 100, "size": "512x512"}}
    try:
        with contextlib.suppress(httpx.HTTPError), \
                httpx.stream("POST", f"{server.base_url}/chat", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line == "event: image_progress":
                    assert server.stop(signal.SIGKILL) != 0
                    break
    finally:
        server.stop(signal.SIGKILL)
    again = start_server(demo_models.parent, tmp_path / "data", tmp_path / "two.log")
    try:
        messages = httpx.get(f"{again.base_url}/chat/kim/history").json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["image_state"] == "interrupted" and messages[1]["image_urls"] == []
        assert messages[1]["content"] and messages[1]["image_prompt"]  # the answer itself was kept
        assert "marked interrupted" in again.log()
    finally:
        again.stop()
