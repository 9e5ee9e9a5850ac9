"""Serving a team: two front ends (``aipc-chat serve`` processes) sharing a real PostgreSQL and a real S3-compatible
store (SeaweedFS), over one engine node (a third aipc-chat serving the demo models, used through
AIPC_LLM_ENDPOINT and AIPC_IMAGE_ENDPOINT). A client may land on either front end for any request."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import LiveServer, start_server
from tests.waiting import HANG, wait_until

pytestmark = pytest.mark.e2e

WORKER_TIMEOUT = 4  # seconds unheard before the other front end takes one for dead (the setting's floor is 3)


@dataclass
class Team:
    engine: LiveServer
    a: LiveServer
    b: LiveServer
    env: dict[str, str]
    root: Path

    def front_end(self, name: str, **extra: str) -> LiveServer:
        """Start another front end on the shared database and store."""
        return start_server(self.root, self.root / name, self.root / f"{name}.log", demo=False,
                            env={**self.env, "AIPC_WORKER_NAME": name, **extra})


@pytest.fixture(scope="module")
def engine_node(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("engine")
    server = start_server(demo_models.parent, root / "data", root / "engine.log")
    yield server
    server.stop()


def _team_env(engine: LiveServer, database_url: str, s3: Any, bucket: str, **extra: str) -> dict[str, str]:
    return {"AIPC_LLM_ENDPOINT": f"{engine.base_url}/v1", "AIPC_IMAGE_ENDPOINT": engine.base_url,
            "AIPC_DATABASE_URL": database_url, "AIPC_IMAGE_STORE_URL": f"s3://{bucket}/team",
            "AIPC_S3_ENDPOINT": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_DEFAULT_REGION": "us-east-1",
            "AIPC_WORKER_TIMEOUT": str(WORKER_TIMEOUT), "AIPC_REQUEST_TIMEOUT": "120", **extra}


@pytest.fixture
def team(engine_node: LiveServer, database_url: str, s3_bucket: tuple[Any, str],
         tmp_path: Path) -> Iterator[Team]:
    s3, bucket = s3_bucket
    env = _team_env(engine_node, database_url, s3, bucket)
    t = Team(engine_node, None, None, env, tmp_path)  # type: ignore[arg-type]
    t.a = t.front_end("front-a")
    t.b = t.front_end("front-b")
    yield t
    for server in (t.a, t.b):
        server.stop()


def chat(server: LiveServer, user: str, message: str, **extra: Any) -> dict[str, Any]:
    r = httpx.post(f"{server.base_url}/chat", timeout=HANG, json={
        "user_id": user, "message": message, "image": "never", "max_tokens": 24, **extra})
    assert r.status_code == 200, r.text
    return dict(r.json())


def history(server: LiveServer, user: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.base_url}/chat/{user}/history", timeout=30)
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


def test_both_front_ends_are_ready_on_the_shared_stores(team: Team) -> None:
    for server in (team.a, team.b):
        body = httpx.get(f"{server.base_url}/ready").json()
        assert body["ready"] is True
        assert body["storage"]["database"]["state"] == "ok" and body["storage"]["image_store"]["state"] == "ok"
        assert body["models"]["llm"]["source"] == "remote" and body["models"]["image"]["source"] == "remote"
    names = {httpx.get(f"{s.base_url}/ready").json()["storage"]["database"]["worker"] for s in (team.a, team.b)}
    assert names == {"front-a", "front-b"}


def test_a_conversation_continued_alternately_on_each(team: Team) -> None:
    said = [f"turn {i}: the word is {word}" for i, word in enumerate(["amber", "basil", "cedar", "delta"])]
    answers = []
    for i, message in enumerate(said):
        answers.append(chat(team.a if i % 2 == 0 else team.b, "alice", message)["assistant_response"])
    for server in (team.a, team.b):  # either front end lists the whole conversation, in order
        messages = history(server, "alice")
        assert [m["content"] for m in messages if m["role"] == "user"] == said
        assert [m["role"] for m in messages] == ["user", "assistant"] * 4
        assert [m["content"] for m in messages if m["role"] == "assistant"] == answers


def test_a_picture_made_on_one_is_served_by_the_other(team: Team) -> None:
    r = httpx.post(f"{team.a.base_url}/v1/images/generations", timeout=HANG, json={
        "prompt": "a lighthouse", "size": "64x64", "num_inference_steps": 2})
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert url.startswith(team.a.base_url)
    from_a = httpx.get(url).content
    from_b = httpx.get(url.replace(team.a.base_url, team.b.base_url))
    assert from_b.status_code == 200 and from_b.content == from_a and from_a.startswith(b"\x89PNG")
    assert not list((team.root / "front-a").rglob("*.png")), "pictures belong in the object store"


def _long_job(server: LiveServer, user: str) -> str:
    """Start a picture that takes a while (a /chat turn that does not wait for it; 100 steps at 512x512 take 6 s
    on the demo model here, several times what a request through the other front end takes to reach it); its job
    id."""
    body = chat(server, user, "Draw a red fox in the snow", image="always", wait_for_image=False,
                image_options={"steps": 100, "size": "512x512"})
    assert body["image_state"] == "queued", body
    return str(body["image_job_id"])


def test_a_job_polled_and_interrupted_through_the_other(team: Team) -> None:
    job_id = _long_job(team.a, "bob")
    job_url = f"{team.b.base_url}/v1/images/jobs/{job_id}"
    wait_until(lambda: httpx.get(job_url).json()["step"] > 0, "the job shows progress through the other front end")
    def progress() -> dict[str, Any]:
        return dict(httpx.get(f"{team.b.base_url}/sdapi/v1/progress").json())

    # A1111's progress is the other front end's job as last read (each quarter second): wait for a read with steps
    wait_until(lambda: progress()["progress"] > 0, "A1111 progress through the other front end shows the job")
    assert progress()["state"]["job"] == job_id
    assert httpx.post(f"{team.b.base_url}/sdapi/v1/interrupt").status_code == 200
    wait_until(lambda: httpx.get(job_url).json()["state"] not in ("queued", "running"), "the job ends")
    seen_b, seen_a = httpx.get(job_url).json(), httpx.get(f"{team.a.base_url}/v1/images/jobs/{job_id}").json()
    assert seen_b["state"] == seen_a["state"] == "cancelled"
    assert seen_b["step"] < 100


def test_a_job_cancelled_through_the_other(team: Team) -> None:
    job_id = _long_job(team.b, "carol")
    r = httpx.delete(f"{team.a.base_url}/v1/images/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["id"] == job_id
    wait_until(lambda: httpx.get(f"{team.b.base_url}/v1/images/jobs/{job_id}").json()["state"] == "cancelled",
               "the front end running it hears the cancel")
    wait_until(lambda: history(team.a, "carol")[-1]["image_state"] == "cancelled", "history records it")


def test_an_unknown_job_is_404_on_both(team: Team) -> None:
    for server in (team.a, team.b):
        r = httpx.get(f"{server.base_url}/v1/images/jobs/0123456789abcdef")
        assert r.status_code == 404 and r.json()["error"]["param"] == "id"


def test_rate_limits_are_counted_across_both(engine_node: LiveServer, database_url: str,
                                             s3_bucket: tuple[Any, str], tmp_path: Path) -> None:
    s3, bucket = s3_bucket
    env = _team_env(engine_node, database_url, s3, bucket, AIPC_CHAT_RATE_PER_MINUTE="1")  # a burst of 1 a minute
    t = Team(engine_node, None, None, env, tmp_path)  # type: ignore[arg-type]
    a, b = t.front_end("limit-a"), t.front_end("limit-b")
    try:
        assert chat(a, "dave", "hello")["assistant_response"] is not None
        refused = httpx.post(f"{b.base_url}/chat", timeout=HANG, json={"user_id": "dave", "message": "again"})
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded" and int(refused.headers["retry-after"]) > 1
        assert httpx.post(f"{a.base_url}/chat", timeout=HANG,
                          json={"user_id": "dave", "message": "and again"}).status_code == 429
        assert chat(b, "erin", "hello")["assistant_response"] is not None  # another user has a bucket of their own
    finally:
        a.stop()
        b.stop()


def test_a_front_end_killed_mid_turn_loses_nothing_acknowledged(team: Team) -> None:
    earlier = chat(team.a, "frank", "remember the word juniper")
    picture = chat(team.a, "frank", "Draw a small boat", image="always", image_options={"steps": 2, "size": "64x64"})
    assert picture["image_generated"] and picture["image_urls"]
    # A turn whose answer is stored (image_queued comes after) and whose picture is still being made: then SIGKILL.
    job_id = None
    with httpx.stream("POST", f"{team.a.base_url}/chat", timeout=HANG, json={
            "user_id": "frank", "message": "Draw a mountain at dawn", "image": "always", "stream": True,
            "image_options": {"steps": 100, "size": "512x512"}}) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "image_progress":
                job_id = json.loads(line[6:])["job_id"]
                team.a.stop(signal.SIGKILL)
                break
    assert job_id is not None and team.a.proc.returncode == -signal.SIGKILL

    messages = history(team.b, "frank")
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        "remember the word juniper", "Draw a small boat", "Draw a mountain at dawn"]
    assert messages[1]["content"] == earlier["assistant_response"]
    assert messages[3]["image_urls"] and httpx.get(
        messages[3]["image_urls"][0].replace(team.a.base_url, team.b.base_url)).content.startswith(b"\x89PNG")
    # The dead front end's picture is settled by the other once it is taken for dead: never left pending.
    wait_until(lambda: history(team.b, "frank")[-1]["image_state"] != "pending", "the pending picture is settled")
    assert history(team.b, "frank")[-1]["image_state"] == "interrupted"
    job = httpx.get(f"{team.b.base_url}/v1/images/jobs/{job_id}").json()
    assert job["state"] == "failed" and "front-a" in job["error"]
    assert "front-a" in team.b.log() and "stopped answering" in team.b.log()
    # The conversation goes on on the front end that is left.
    chat(team.b, "frank", "and now?")
    assert len(history(team.b, "frank")) == 8


def test_a_restarted_front_end_settles_its_own_unfinished_jobs(team: Team) -> None:
    job_id = _long_job(team.a, "gina")
    wait_until(lambda: httpx.get(f"{team.b.base_url}/v1/images/jobs/{job_id}").json()["state"] == "running",
               "the job runs")
    assert history(team.b, "gina")[-1]["image_state"] == "pending"
    team.b.stop()  # no other front end is left to take front-a for dead: only its own restart can settle the job
    team.a.stop(signal.SIGKILL)
    again = team.front_end("front-a")
    try:
        job = httpx.get(f"{again.base_url}/v1/images/jobs/{job_id}").json()
        assert job["state"] == "failed" and "restarted" in job["error"]
        assert history(again, "gina")[-1]["image_state"] == "interrupted"
    finally:
        again.stop()


def test_doctor_checks_the_shared_stores_and_creates_nothing(engine_node: LiveServer, database_url: str,
                                                             s3_bucket: tuple[Any, str], tmp_path: Path) -> None:
    s3, bucket = s3_bucket
    env = _team_env(engine_node, database_url, s3, bucket)
    from tests.e2e.test_doctor import run

    found = run("doctor", tmp_path, env=env)
    assert "database postgresql://postgres@127.0.0.1" in found.stdout and "answers" in found.stdout
    assert f"picture store s3://{bucket}/team answers" in found.stdout
    assert found.returncode == 0, found.stdout
    import psycopg

    with psycopg.connect(database_url) as db:  # it looked, and made no table
        assert db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)

    gone = run("doctor", tmp_path, env={**env, "AIPC_DATABASE_URL": "postgresql://aipc:s3cret@127.0.0.1:9/aipc",
                              "AIPC_IMAGE_STORE_URL": "s3://no-such-bucket-here"})
    assert gone.returncode == 1
    assert "database postgresql://aipc:***@127.0.0.1:9/aipc does not answer" in gone.stdout
    assert "s3cret" not in gone.stdout + gone.stderr
    assert any(line.startswith("[warn]") and "no-such-bucket-here" in line
               for line in (x.strip() for x in gone.stdout.splitlines()))
