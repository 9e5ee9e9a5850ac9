"""Which engine serves a model: the composition root of the engines (the runtime asks it, nothing else does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aipc_chat.engines.admission import Arrivals
from aipc_chat.engines.contract import ImageEngineClient, LLMEngineClient
from aipc_chat.engines.image import image_pipelines, local_image_engine
from aipc_chat.engines.llm import LLMEngine, OpenVINOPipelines
from aipc_chat.engines.scheduler import Scheduler
from aipc_chat.provision.resolve import Kind, ModelChoice
from aipc_chat.settings import Settings

PipelineFactory = Callable[[], Any]
# Wraps the factory of each local pipeline: tests inject faults through it; None serves the pipelines as built.
PipelineWrapper = Callable[[Kind, PipelineFactory], PipelineFactory]
Engine = LLMEngineClient | ImageEngineClient


class EngineFactory:
    """Builds the engine that serves a model choice (local over openvino-genai, or optimum-intel for pictures when
    chosen; or remote)."""

    def __init__(self, settings: Settings, arrivals: Arrivals, pipelines: PipelineWrapper | None = None,
                 scheduler: Scheduler | None = None) -> None:
        self.settings, self.arrivals, self.pipelines = settings, arrivals, pipelines
        self.scheduler = scheduler

    def __call__(self, kind: Kind, choice: ModelChoice, device: str) -> Engine:
        """A new, not yet loaded engine."""
        s = self.settings
        if choice.source == "remote":
            return self._remote(kind, choice)
        assert choice.path is not None
        if kind == "llm":
            return LLMEngine(s, choice.path, choice.name, device, arrivals=self.arrivals, scheduler=self.scheduler,
                             pipelines=self._wrap(kind, OpenVINOPipelines(s, choice.path, device)))
        max_size = min(s.image_max_size, 512) if choice.source == "demo" else s.image_max_size
        return local_image_engine(s, choice.path, choice.name, device, max_size=max_size, scheduler=self.scheduler,
                                  pipelines=self._wrap(kind, image_pipelines(s, choice.path, device)))

    def _wrap(self, kind: Kind, factory: PipelineFactory) -> PipelineFactory:
        return self.pipelines(kind, factory) if self.pipelines is not None else factory

    def _remote(self, kind: Kind, choice: ModelChoice) -> Engine:
        from aipc_chat.engines.remote import RemoteLLM, remote_image_engine  # httpx: imported when a remote is used

        s = self.settings
        assert choice.endpoint is not None
        if kind == "llm":
            key = s.llm_endpoint_api_key.get_secret_value() if s.llm_endpoint_api_key else None
            return RemoteLLM(s, choice.endpoint, key, s.llm_endpoint_model)
        key = s.image_endpoint_api_key.get_secret_value() if s.image_endpoint_api_key else None
        return remote_image_engine(s, choice.endpoint, key)
