"""``GET /metrics`` in Prometheus text format; every name starts with ``aipc_``.

Request counts and latencies come from an ASGI middleware; engine figures from the engines' finish hooks (they run
on the owner threads; prometheus-client is thread-safe); live gauges are read at scrape time.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aipc_chat.api.security import ASGIApp, Message, Receive, Scope, Send
from aipc_chat.engines.contract import Done, ImageJob
from aipc_chat.engines.memory import rss_mb
from aipc_chat.runtime import ModelStatus, Runtime

router = APIRouter(tags=["health"])
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The registry and every metric of one app."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("aipc_requests", "HTTP requests by route and status", ["route", "method", "status"],
                                registry=r)
        self.request_seconds = Histogram("aipc_request_duration_seconds", "HTTP request latency", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("aipc_llm_ttft_seconds", "Time to first token, queueing included",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("aipc_llm_queue_seconds", "Time from submit to the first pipeline step",
                                       buckets=QUEUE_BUCKETS, registry=r)
        self.token_rate = Histogram("aipc_llm_tokens_per_second", "Decode rate of finished requests",
                                    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=r)
        self.generated = Counter("aipc_llm_generated_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("aipc_llm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.image_seconds = Histogram("aipc_image_job_seconds", "Image job latency, queueing excluded",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.image_steps = Counter("aipc_image_steps", "Denoising steps run", registry=r)
        self.image_jobs = Counter("aipc_image_jobs", "Image jobs finished, by state", ["state"], registry=r)
        Gauge("aipc_llm_active_requests", "LLM requests generating now", registry=r).set_function(
            lambda: runtime.llm.active if runtime.llm else 0)
        Gauge("aipc_llm_queue_depth", "LLM requests admitted and waiting", registry=r).set_function(
            lambda: runtime.llm.waiting if runtime.llm else 0)
        Gauge("aipc_image_active_jobs", "Image jobs rendering now", registry=r).set_function(
            lambda: int(runtime.image is not None and runtime.image.current is not None))
        Gauge("aipc_image_queue_depth", "Image jobs waiting", registry=r).set_function(
            lambda: runtime.image.queue_depth if runtime.image else 0)
        load = Gauge("aipc_model_load_seconds", "Model load time", ["kind"], registry=r)
        for kind, status in runtime.status.items():
            load.labels(kind).set_function(partial(_load_seconds, status))
        r.register(ModelsCollector(runtime))
        runtime.llm_observers.append(self.observe_llm)
        runtime.image_observers.append(self.observe_image)

    def observe_llm(self, done: Done) -> None:
        """A finished LLM request."""
        t = done.timing
        self.generated.inc(done.completion_tokens)
        self.prompt_tokens.inc(done.prompt_tokens)
        if t.ttft is not None:
            self.ttft.observe(t.ttft)
        if t.started is not None:
            self.queue_seconds.observe(t.started - t.queued)
        if t.first_token and t.finished and done.completion_tokens > 1 and t.finished > t.first_token:
            self.token_rate.observe((done.completion_tokens - 1) / (t.finished - t.first_token))

    def observe_image(self, job: ImageJob) -> None:
        """A finished image job."""
        self.image_jobs.labels(job.state).inc()
        self.image_steps.inc(job.step)
        if job.started and job.finished and job.state == "done":
            self.image_seconds.observe(job.finished - job.started)


class ModelsCollector(Collector):
    """The models as one snapshot of the scheduler shows them, and the process's memory: restarts, state, size
    measured at load, requests holding each, and the resident memory of the whole process to compare with."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Any:
        """One sample per kind of model (0 until it is loaded here; a remote one is never)."""
        snap = self.runtime.scheduler.snapshot()
        restarts = CounterMetricFamily("aipc_engine_restarts", "Pipelines rebuilt after a failure", labels=["kind"])
        loaded = GaugeMetricFamily("aipc_model_loaded", "1 while the model is resident here", labels=["kind"])
        size = GaugeMetricFamily("aipc_model_resident_bytes", "What the model's load added to the process's RSS",
                                 labels=["kind"])
        held = GaugeMetricFamily("aipc_model_requests_holding", "Requests holding the model now", labels=["kind"])
        for kind in dict.fromkeys([*self.runtime.status, *snap.models]):  # the embedding model too, if served
            view = snap.models.get(kind)
            restarts.add_metric([kind], view.restarts if view is not None else 0)
            loaded.add_metric([kind], int(view is not None and view.size_mb is not None))
            size.add_metric([kind], (view.size_mb or 0.0) * 2**20 if view is not None else 0.0)
            held.add_metric([kind], view.refs if view is not None else 0)
        process = GaugeMetricFamily("aipc_process_resident_bytes", "This process's resident memory (RSS)")
        process.add_metric([], rss_mb() * 2**20)
        yield from (restarts, loaded, size, held, process)
        if snap.limit_mb is not None:
            limit = GaugeMetricFamily("aipc_memory_limit_bytes", "AIPC_MEMORY_LIMIT")
            limit.add_metric([], snap.limit_mb * 2**20)
            yield limit


def _load_seconds(status: ModelStatus) -> float:
    return status.load_seconds or 0.0


class MetricsMiddleware:
    """Count and time every HTTP request by its route template (not its raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope.get("method", ""), str(status[0])).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    registry: Any = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
