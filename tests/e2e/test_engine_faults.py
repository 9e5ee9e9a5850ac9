"""A request can fail, the engine cannot: uncompilable constraints against the shared demo server, and a pipeline
fault injected (through the runtime's pipeline factory) into a server running in this process, seen over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from aipc_chat.api.app import create_app
from aipc_chat.engines import scheduler
from aipc_chat.runtime import Runtime
from aipc_chat.settings import Settings
from tests.e2e.conftest import free_port
from tests.e2e.test_hardening import metric
from tests.faults import Factories, Faulty
from tests.waiting import HANG, wait_until

pytestmark = pytest.mark.e2e

SCHEMAS = {  # what openvino-genai's grammar compiler (XGrammar) says of each
    '{"type": "objectt"}': 'Unsupported type \\"objectt\\"',
    '{"type": "string", "pattern": "["}': "Unclosed '['",
    '{"$ref": "#/nowhere"}': "Cannot find field nowhere",
}


@pytest.mark.parametrize("stream", [False, True])
def test_uncompilable_schemas_are_400_and_the_server_goes_on(base_url: str, stream: bool) -> None:
    for schema, said in SCHEMAS.items():
        body = {"messages": [{"role": "user", "content": "Reply in JSON."}], "max_tokens": 16, "stream": stream,
                "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": json.loads(schema)}}}
        r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_value" and error["param"] == "response_format"
        assert said in json.dumps(error["message"]) and "does not compile" in error["message"]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}],
                                           max_tokens=30, temperature=0)
    assert reply.choices[0].message.content
    turn = httpx.post(f"{base_url}/chat", json={"user_id": "after-bad-schemas", "message": "Hello!",
                                                "image": "never"}, timeout=60)
    assert turn.status_code == 200 and turn.json()["assistant_response"]
    assert httpx.get(f"{base_url}/ready").status_code == 200
    assert metric(base_url, 'aipc_engine_restarts_total{kind="llm"}') == 0


def test_a_valid_schema_is_still_served(base_url: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 20}}, "required": ["answer"]}
    body = {"messages": [{"role": "user", "content": "Reply in JSON."}], "max_tokens": 60, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    if r.json()["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content)["answer"], str)
    else:
        assert content.startswith("{")


@contextmanager
def serve(runtime: Runtime, settings: Settings) -> Iterator[str]:
    """The app on a real socket, uvicorn in a thread of this process (so its pipelines can be faulted)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, runtime), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HANG
    try:
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the in-process server did not get ready")
        yield url
    finally:
        server.should_exit = True
        thread.join(60)


def sse_events(response: httpx.Response) -> list[str]:
    return [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]


def test_a_pipeline_fault_ends_streams_cleanly_and_ready_tells_the_truth(demo_models: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "REBUILD_BACKOFF_SECONDS", (0.0, 0.0, 0.0))
    factories: dict[str, Factories] = {}

    def wrap(kind: str, real: Any) -> Any:
        script = (lambda p: Faulty(p, "step", after=4), "block") if kind == "llm" else ()
        factories[kind] = Factories(real, *script)
        return factories[kind]

    settings = Settings(demo=True, models_dir=demo_models.parent, data_dir=tmp_path / "data", llm_warmup=False)
    with serve(Runtime(settings, pipelines=wrap), settings) as url:
        body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 64, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
            events = sse_events(r)
        assert r.status_code == 200 and events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "engine_error" and "being restarted" in error["message"]

        assert factories["llm"].blocked.wait(30)  # the rebuild is under way, and held there
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
        assert ready.json()["models"]["llm"]["state"] == "recovering"
        assert ready.json()["models"]["image"]["state"] == "ready"
        refused = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=60)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "model_not_ready"
        chat = httpx.post(f"{url}/chat", json={"user_id": "u", "message": "Hi", "image": "never"}, timeout=60)
        assert chat.status_code == 503 and chat.headers.get("retry-after")
        images = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a cube", "size": "64x64",
                                                                   "num_inference_steps": 2}, timeout=60)
        assert images.status_code == 200  # the other engine serves on

        factories["llm"].release.set()
        wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, "ready again")
        ready = httpx.get(f"{url}/ready")
        assert ready.status_code == 200 and ready.json()["models"]["llm"]["restarts"] == 1
        assert metric(url, 'aipc_engine_restarts_total{kind="llm"}') == 1
        assert metric(url, 'aipc_engine_restarts_total{kind="image"}') == 0
        again = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=60)
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 64
