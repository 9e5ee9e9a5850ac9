"""/ready's view of the engines: an LLM engine whose owner thread died is reported failed, not ready."""

from __future__ import annotations

import pytest

from aipc_chat.engines.llm import LLMEngine
from aipc_chat.runtime import Runtime
from aipc_chat.settings import Settings

pytestmark = pytest.mark.integration


def test_a_stopped_llm_engine_makes_the_server_not_ready(demo_settings: Settings) -> None:
    runtime = Runtime(demo_settings)
    runtime.load()
    try:
        assert runtime.ready and runtime.describe()["llm"]["state"] == "ready"
        assert isinstance(runtime.llm, LLMEngine)
        runtime.llm.failure = "RuntimeError: a bug in the owner loop"  # what the owner thread records as it dies
        described = runtime.describe()["llm"]
        assert not runtime.ready
        assert described["state"] == "failed"
        assert described["error"] == "the engine stopped: RuntimeError: a bug in the owner loop"
    finally:
        runtime.close()
