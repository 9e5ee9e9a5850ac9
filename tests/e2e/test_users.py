"""Per-user keys (AIPC_USERS_FILE) on a live server: two users who cannot see or touch each other's data."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aipc_chat.users import add_user, hash_key
from tests.e2e.conftest import LiveServer, start_server
from tests.e2e.test_hardening import metric, wait_for
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e
SLOW_PICTURE = {"steps": 100, "size": "512x512"}  # several seconds on the demo image model


class People:
    """The server and each user's client."""

    def __init__(self, server: LiveServer, users_file: Path, keys: dict[str, str]) -> None:
        self.server, self.users_file, self.keys = server, users_file, keys

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.base_url, timeout=60,
                            headers={"authorization": f"Bearer {self.keys[user]}"})


@pytest.fixture(scope="module")
def people(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[People]:
    root = tmp_path_factory.mktemp("users")
    users_file = root / "users.txt"
    keys = {name: add_user(users_file, name) for name in ("alice", "bob")}
    server = start_server(demo_models.parent, root / "data", root / "server.log",
                          env={"AIPC_USERS_FILE": str(users_file)})
    yield People(server, users_file, keys)
    server.stop()


def turn(client: httpx.Client, user: str, message: str, **extra: Any) -> httpx.Response:
    return client.post("/chat", json={"user_id": user, "message": message, "image": "never", **extra})


def test_the_file_keeps_only_hashes(people: People) -> None:
    text = people.users_file.read_text()
    for user, key in people.keys.items():
        assert key not in text and f"{user}:{hash_key(key)}" in text


def test_a_key_is_required_and_names_its_user(people: People) -> None:
    base = people.server.base_url
    for headers in ({}, {"authorization": "Bearer not-a-key"}, {"authorization": f"Bearer {people.keys['alice']}x"}):
        r = httpx.get(f"{base}/chat/me", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", headers
        assert httpx.get(f"{base}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{base}/ready").status_code == 200  # open, as without keys
    with people.client("alice") as alice, people.client("bob") as bob:
        assert alice.get("/chat/me").json() == {"user_id": "alice", "users_separated": True}
        assert bob.get("/chat/me").json()["user_id"] == "bob"
    basic = httpx.get(f"{base}/chat/me", auth=("anyone", people.keys["bob"]))  # A1111 clients send Basic
    assert basic.json()["user_id"] == "bob"


def test_users_cannot_read_write_or_delete_each_others_history(people: People) -> None:
    with people.client("alice") as alice, people.client("bob") as bob:
        assert turn(bob, "bob", "My secret is tangerine.", conversation_id="private").status_code == 200
        assert turn(alice, "alice", "Hello").status_code == 200

        denied = turn(alice, "bob", "I am bob now.")
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden_user"
        assert denied.json()["error"]["type"] == "permission_error"
        for method, path in (("GET", "/chat/bob/history?conversation_id=private"), ("GET", "/chat/bob/conversations"),
                             ("DELETE", "/chat/bob/history"), ("DELETE", "/chat/bob/history?conversation_id=private")):
            r = alice.request(method, path)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_user", (method, path)
            assert "tangerine" not in r.text

        own = alice.get("/chat/alice/conversations").json()["conversations"]
        assert [c["conversation_id"] for c in own] == ["default"]  # bob's conversation is not listed
        kept = bob.get("/chat/bob/history", params={"conversation_id": "private"}).json()["messages"]
        assert [m["content"] for m in kept if m["role"] == "user"] == ["My secret is tangerine."]
        assert alice.delete("/chat/alice/history").json()["deleted_messages"] == 2


def test_another_users_picture_is_not_listed_nor_stoppable(people: People) -> None:
    base = people.server.base_url
    with people.client("alice") as alice, people.client("bob") as bob:
        started = bob.post("/chat", json={"user_id": "bob", "message": "Draw a lighthouse", "image": "always",
                                          "wait_for_image": False, "image_options": SLOW_PICTURE})
        assert started.status_code == 200, started.text
        job_id = started.json()["image_job_id"]
        auth = {"authorization": f"Bearer {people.keys['bob']}"}
        wait_for(lambda: metric(base, "aipc_image_active_jobs", auth) >= 1)

        def seen_by(client: httpx.Client) -> str:
            return str(client.get("/sdapi/v1/progress").json()["state"]["job"])

        assert seen_by(bob) == job_id
        assert seen_by(alice) == ""  # idle, as far as alice can tell
        assert alice.get(f"/v1/images/jobs/{job_id}").status_code == 404
        assert alice.delete(f"/v1/images/jobs/{job_id}").status_code == 404
        assert alice.post("/sdapi/v1/interrupt").status_code == 200  # A1111 answers 200 ... and stops nothing
        time.sleep(0.3)
        job = bob.get(f"/v1/images/jobs/{job_id}").json()
        assert job["state"] == "running", job

        # alice's own picture is hers alone, and her interrupt stops her job only
        result: dict[str, Any] = {}
        mine = threading.Thread(target=lambda: result.update(alice.post("/sdapi/v1/txt2img", json={
            "prompt": "a red cube", "steps": 100, "width": 512, "height": 512}).json()))
        mine.start()
        assert bob.delete(f"/v1/images/jobs/{job_id}").json()["id"] == job_id
        wait_for(lambda: seen_by(alice) != "")
        assert seen_by(bob) == ""
        assert bob.post("/sdapi/v1/interrupt").status_code == 200
        time.sleep(0.3)
        assert seen_by(alice) != ""  # still running after bob's interrupt
        alice.post("/sdapi/v1/interrupt")
        mine.join(30)
        assert '"interrupted": true' in result["info"]
        assert bob.get(f"/v1/images/jobs/{job_id}").json()["state"] == "cancelled"


def test_a_user_added_while_serving_can_use_the_server(people: People) -> None:
    key = add_user(people.users_file, "carol")
    base = people.server.base_url
    r = wait_until(lambda: (got := httpx.get(f"{base}/chat/me", headers={"authorization": f"Bearer {key}"}))
                   .status_code != 401 and got, "the new key read")
    assert r.json()["user_id"] == "carol"
