"""/ready's view of the engines: an LLM engine whose owner thread died is reported failed, not ready."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from aipc_chat.engines.contract import GenParams
from aipc_chat.engines.llm_loop import BatchLoop
from aipc_chat.runtime import Runtime
from aipc_chat.serving.aio import Reader
from aipc_chat.settings import Settings
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def test_a_stopped_llm_engine_makes_the_server_not_ready(demo_settings: Settings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Runtime(demo_settings)
    runtime.load()
    try:
        assert runtime.ready and runtime.describe()["llm"]["state"] == "ready"

        def broken(self: BatchLoop, batch: object) -> None:
            raise RuntimeError("a bug in the owner loop")

        monkeypatch.setattr(BatchLoop, "_detokenize", broken)
        stream = runtime.require_llm().submit([{"role": "user", "content": "Hi"}], GenParams(max_tokens=8))

        async def drain() -> None:
            with contextlib.suppress(Exception):
                async for _ in Reader(stream):
                    pass

        asyncio.run(drain())
        wait_until(lambda: not runtime.ready, "the runtime not ready")
        described = runtime.describe()["llm"]
        assert not runtime.ready
        assert described["state"] == "failed"
        assert "the owner loop stopped: RuntimeError: a bug in the owner loop" in str(described["error"])
    finally:
        runtime.close()
