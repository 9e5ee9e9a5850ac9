"""Remote engines: an LLM behind any OpenAI-compatible ``/v1/chat/completions`` (OVMS ``/v3``, vLLM, another
aipc-chat) and Stable Diffusion behind an AUTOMATIC1111 ``/sdapi/v1/txt2img`` server.

They implement the engine contract (``contract.py``): ``RemoteLLM`` as an LLM engine, ``A1111Renderer`` as the
renderer of an ``ImageEngine`` (the same job queue as the local one), so ``/chat``, the OpenAI and A1111 routes and
the page work unchanged.
Upstream failures become 502 / 503 / 504; connect errors are retried, nothing else is; cancelling a request closes
its upstream request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from aipc_chat.engines.admission import Arrival
from aipc_chat.engines.contract import (
    Delta,
    Done,
    EngineHealth,
    GenParams,
    ImageJob,
    ImageParams,
    Interrupted,
    LLMStream,
    Timing,
    constrains_whole_reply,
)
from aipc_chat.engines.jobs import ImageEngine
from aipc_chat.engines.store import ImageStore, infotext
from aipc_chat.engines.tools import plain_history
from aipc_chat.errors import (
    AipcError,
    Busy,
    Cancelled,
    InvalidRequest,
    RequestTimeout,
    UnsupportedParameter,
    UpstreamError,
    UpstreamUnavailable,
)
from aipc_chat.reasoning import ReasoningSplitter
from aipc_chat.settings import Settings, env_name, public_url

log = logging.getLogger(__name__)

CONNECT_RETRIES = 3
REMOTE_CONTEXT = 32768


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def remote_label(what: str, url: str, setting: str) -> str:
    """How messages name a remote engine: ``the remote LLM at http://host:8000/v1 (AIPC_LLM_ENDPOINT)``."""
    return f"the remote {what} at {public_url(url)} ({setting})"


def _upstream_error(exc: Exception, where: str) -> AipcError:
    """Translate an httpx failure at the boundary (one place); ``where`` names the remote (``remote_label``)."""
    what = where[0].upper() + where[1:]
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(f"{what} did not answer in time ({type(exc).__name__}).")
    if isinstance(exc, httpx.TransportError):
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return UpstreamUnavailable(f"{what} is unreachable ({type(exc).__name__}{': ' + detail if detail else ''}).")
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        try:
            message = exc.response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.response.text[:300]
        if 400 <= status < 500 and status not in (401, 403, 429):
            return InvalidRequest(f"{what} refused the request: {message}")
        if status in (429, 503):
            return Busy(f"{what} is busy: {message}", retry_after=2)
        return UpstreamError(f"{what} failed ({status}): {message}")
    return UpstreamError(f"{what} failed: {type(exc).__name__}")


def _with_retries(call: Callable[[], httpx.Response]) -> httpx.Response:
    """Retry connect errors only (a request that reached the server is never sent twice)."""
    for attempt in range(CONNECT_RETRIES):
        try:
            return call()
        except httpx.ConnectError:
            if attempt == CONNECT_RETRIES - 1:
                raise
            time.sleep(0.3 * (attempt + 1))
    raise AssertionError("unreachable")


class RemoteLLM:
    """An OpenAI-compatible chat endpoint as an LLM engine."""

    def __init__(self, settings: Settings, base_url: str, api_key: str | None, model: str | None) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.where = remote_label("LLM", self.base_url, env_name("llm_endpoint"))
        self.api_key = api_key
        self.model_name = model or ""
        self.device = "remote"
        self.context_length = settings.context_length or REMOTE_CONTEXT
        self.reasons = True  # a remote model's reasoning, if any, arrives apart as reasoning_content
        self.active = 0
        self.waiting = 0
        self.observers: list[Callable[[Done], None]] = []
        self._live: dict[LLMStream, asyncio.Future[None]] = {}
        self._io: asyncio.AbstractEventLoop | None = None
        self._io_lock = threading.Lock()
        self._timeout = httpx.Timeout(settings.request_timeout, connect=5.0)
        self._client: httpx.AsyncClient | None = None  # made on the engine's loop, used only there

    def _http(self) -> httpx.AsyncClient:
        """The engine loop's one client: connections to the remote are kept between requests (a client per request
        built a TLS context and opened a connection every time, most of a front end's cost per turn)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=64))
        return self._client

    def load(self, preload: bool | None = None) -> None:
        """Find the model id (the first the remote lists, unless configured); a remote that is down now is
        looked up again later (/ready reports it unreachable meanwhile)."""
        try:
            self.discover()
        except AipcError as exc:
            log.warning("%s", exc.message)

    @property
    def chat_template(self) -> str:
        """Not known here: the remote templates."""
        return ""

    def preload(self, keep_alive: float | None = None, *, timeout: float | None = None) -> None:
        """Nothing is loaded here."""

    def release(self, wait: bool = True, *, if_idle: bool = False) -> None:
        """Nothing is held here."""

    def discover(self) -> None:
        """Ask the remote for its models; take the first id unless one is configured."""
        models = self.list_models()
        if not self.model_name:
            if not models:
                raise UpstreamError(f"{self.where[0].upper()}{self.where[1:]} lists no models.")
            self.model_name = str(models[0])

    def health(self) -> EngineHealth:
        """Ready while the remote answers (asked now), else unreachable with why."""
        try:
            self.discover()
        except AipcError as exc:
            return EngineHealth("unreachable", exc.message)
        return EngineHealth("ready")

    def check_serving(self) -> None:
        """The remote says for itself, per request."""

    def list_models(self) -> list[str]:
        """The remote's model ids (also the health check)."""
        try:
            r = _with_retries(lambda: httpx.get(f"{self.base_url}/models", headers=_headers(self.api_key),
                                                timeout=5.0))
            r.raise_for_status()
            return [m["id"] for m in r.json()["data"]]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise _upstream_error(exc, self.where) if isinstance(exc, httpx.HTTPError) else UpstreamError(
                f"The /models answer of {self.where} is not OpenAI-shaped.") from exc

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """An estimate (the tokenizer is remote): about four characters a token."""
        return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages)

    def cancel_all(self) -> None:
        """Cancel every request in flight."""
        for stream in list(self._live):
            stream.cancel()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what is in flight (each stream ends, each upstream request is closed), then stop the engine's
        event loop thread."""
        with self._io_lock:
            loop, self._io = self._io, None
        if loop is None:
            return
        with contextlib.suppress(Exception):  # a loop that is gone already: nothing in flight
            asyncio.run_coroutine_threadsafe(_cancel_all_tasks(), loop).result(timeout)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)

    def _io_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the upstream requests run on (httpx's async client), on a thread of its own: the engine
        contract is plain, so the engine brings its own loop rather than borrowing the server's."""
        with self._io_lock:
            if self._io is None:
                self._io = asyncio.new_event_loop()
                threading.Thread(target=_run_loop, args=(self._io,), name="remote-llm", daemon=True).start()
            return self._io

    def submit_prompt(self, prompt: str, params: GenParams, arrival: Arrival | None = None) -> LLMStream:
        """A plain prompt cannot be passed on: the remote templates every request itself."""
        if arrival is not None:
            arrival.settle()
        raise UnsupportedParameter("A plain prompt (no chat template) cannot be sent to a remote LLM; use chat "
                                   "completions.", param="prompt")

    def submit(self, messages: list[dict[str, Any]], params: GenParams, arrival: Arrival | None = None) -> LLMStream:
        """Start the upstream request on this engine's own event loop thread; any thread may call this."""
        if arrival is not None:  # nothing is batched here: the request is on its way no longer
            arrival.settle()
        if params.max_tokens is not None and params.max_tokens > self.settings.max_tokens_limit:
            raise InvalidRequest(f"max_tokens is {params.max_tokens}; this server allows at most "
                                 f"{self.settings.max_tokens_limit}.", param="max_tokens")
        if params.tools is not None:
            raise UnsupportedParameter("Tool calling is served by the local LLM only, not a remote one.",
                                       param="tools")
        messages = plain_history(messages)  # earlier calls and results as text: any upstream takes them
        if not self.model_name:
            self.discover()
        stream = _RemoteStream(f"chatcmpl-{uuid.uuid4().hex[:24]}", 0)
        future = asyncio.run_coroutine_threadsafe(self._run(stream, messages, params), self._io_loop())
        stream.future = future
        return stream

    def _body(self, messages: list[dict[str, str]], params: GenParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "temperature": params.temperature, "top_p": params.top_p,
        }
        optional = {"max_tokens": params.max_tokens, "seed": params.seed, "stop": list(params.stop) or None,
                    "top_k": params.top_k, "presence_penalty": params.presence_penalty or None,
                    "frequency_penalty": params.frequency_penalty or None,
                    "repetition_penalty": None if params.repetition_penalty == 1.0 else params.repetition_penalty,
                    "ignore_eos": params.ignore_eos or None}
        body.update({k: v for k, v in optional.items() if v is not None})
        if params.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "reply", "schema": json.loads(params.json_schema)}}
        elif constrains_whole_reply(params):  # a regex or grammar: ask for the JSON object the prompt asks for
            body["response_format"] = {"type": "json_object"}
        return body

    async def _run(self, stream: _RemoteStream, messages: list[dict[str, str]], params: GenParams) -> None:
        timing = Timing()
        self.active += 1
        self._live[stream] = asyncio.current_task()  # type: ignore[assignment]
        done: Done | None = None
        try:
            done = await self._stream_upstream(stream, messages, params, timing)
            stream.put(done)
        except asyncio.CancelledError:
            stream.put(Cancelled("The request was cancelled."))
        except httpx.HTTPError as exc:
            stream.put(_upstream_error(exc, self.where))
        except AipcError as exc:
            stream.put(exc)
        finally:
            self.active -= 1
            self._live.pop(stream, None)
            stream.close()
        if done is not None:
            for observe in self.observers:
                observe(done)

    async def _stream_upstream(self, stream: _RemoteStream, messages: list[dict[str, str]], params: GenParams,
                               timing: Timing) -> Done:
        splitter = ReasoningSplitter(in_think=False)
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        finish = "stop"
        client = self._http()
        for attempt in range(CONNECT_RETRIES):
            try:
                async with client.stream("POST", f"{self.base_url}/chat/completions",
                                         json=self._body(messages, params), headers=_headers(self.api_key)) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        r.raise_for_status()
                    timing.started = time.perf_counter()
                    async for chunk in _sse_json(r):
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        for choice in chunk.get("choices") or []:
                            finish = choice.get("finish_reason") or finish
                            self._deliver(stream, splitter, choice.get("delta") or {}, timing)
                break
            except httpx.ConnectError:
                if attempt == CONNECT_RETRIES - 1:
                    raise
                await asyncio.sleep(0.3 * (attempt + 1))
        reasoning, content = splitter.finish()
        if reasoning or content:
            stream.put(Delta(reasoning, content, 0))
        timing.finished = time.perf_counter()
        return Done("length" if finish == "length" else "stop", int(usage.get("prompt_tokens", 0)),
                    int(usage.get("completion_tokens", 0)), timing)

    @staticmethod
    def _deliver(stream: LLMStream, splitter: ReasoningSplitter, delta: dict[str, Any], timing: Timing) -> None:
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        inline_reasoning, content = splitter.feed(delta.get("content") or "")  # a <think> the remote left inline
        reasoning += inline_reasoning
        if reasoning or content:
            if timing.first_token is None:
                timing.first_token = time.perf_counter()
            stream.put(Delta(reasoning, content, 1))


class _RemoteStream(LLMStream):
    """Cancelling it cancels the task that holds the upstream request, which closes that request."""

    future: Any = None

    def cancel(self) -> None:
        super().cancel()
        if self.future is not None:
            self.future.cancel()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _cancel_all_tasks() -> None:
    """Cancel every task of the running loop but this one, and wait until each has ended."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _sse_json(response: httpx.Response) -> Any:
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            if data:
                chunk = json.loads(data)
                if "error" in chunk:
                    raise UpstreamError(f"The remote LLM failed mid-stream: {chunk['error'].get('message')}")
                yield chunk


class A1111Renderer:
    """An AUTOMATIC1111 server as the renderer of an image engine: the same jobs, queue, progress and storage as the
    local one."""

    local = False

    def __init__(self, settings: Settings, base_url: str, api_key: str | None) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.where = remote_label("image server", self.base_url, env_name("image_endpoint"))
        self.api_key = api_key
        self.model_name = "remote"
        self.device = "remote"
        self.model_dir = Path("remote")
        self.max_size = settings.image_max_size
        self.step_multiple = 64
        self.native_size = 512  # what size "auto" asks of it
        self.static_size: tuple[int, int] | None = None
        self.sampler = self.default_sampler = "Euler a"
        self.http = httpx.Client()  # one pool of kept connections for every call (thread-safe), not one per call

    @staticmethod
    def sampler_names() -> None:
        """Not known here: the remote server takes or refuses a sampler itself."""
        return

    def load(self) -> None:
        """Take the remote's checkpoint name if it answers now."""
        try:
            self.model_name = self.health()
        except AipcError as exc:
            log.warning("%s", exc.message)

    def prepare(self) -> None:
        """The same as ``load``: nothing is held here."""
        self.load()

    def imports(self) -> None:
        """Nothing to import."""

    def unload(self) -> None:
        """Nothing is held here."""

    def check(self, params: ImageParams) -> None:
        """The remote checks its own limits; image to image is not passed on."""
        if params.init_image is not None:
            raise InvalidRequest("Image to image is not available with a remote image engine.", param="init_images")

    def unreachable(self) -> str | None:
        """Why the remote does not answer now, or None."""
        try:
            self.health()
        except AipcError as exc:
            return exc.message
        return None

    def health(self) -> str:
        """The remote's current checkpoint (raises an upstream error when it does not answer)."""
        try:
            r = _with_retries(lambda: self.http.get(f"{self.base_url}/sdapi/v1/sd-models",
                                                headers=_headers(self.api_key), timeout=5.0))
            r.raise_for_status()
            models = r.json()
            return str(models[0]["model_name"]) if models else "remote"
        except httpx.HTTPError as exc:
            raise _upstream_error(exc, self.where) from exc

    def render(self, job: ImageJob, store: ImageStore) -> None:
        """One txt2img call per image, its progress polled; an interrupt is passed on."""
        from PIL import Image

        p = job.params
        self.sampler = p.sampler or self.default_sampler  # the remote switches per request
        seed = p.seed if p.seed is not None and p.seed >= 0 else int.from_bytes(uuid.uuid4().bytes[:4], "big")
        job.seeds = [seed + i for i in range(p.n)]
        for index, image_seed in enumerate(job.seeds):
            body = {"prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": image_seed, "steps": p.steps,
                    "cfg_scale": p.guidance_scale, "width": p.width, "height": p.height, "batch_size": 1,
                    "sampler_name": self.sampler}
            watcher = _ProgressWatcher(self, job, index * p.steps)
            watcher.start()
            try:
                r = self.http.post(f"{self.base_url}/sdapi/v1/txt2img", json=body, headers=_headers(self.api_key),
                               timeout=httpx.Timeout(self.settings.request_timeout, connect=5.0))
                r.raise_for_status()
            except httpx.HTTPError as exc:
                raise _upstream_error(exc, self.where) from exc
            finally:
                watcher.stop()
            if job.cancelled:
                raise Interrupted
            images = r.json().get("images") or []
            if not images:
                raise Interrupted  # an interrupted A1111 job answers 200 with no image
            image = Image.open(io.BytesIO(base64.b64decode(images[0])))
            image.load()
            text = infotext(p, seed=image_seed, sampler=self.sampler, model=self.model_name)
            job.infotexts.append(text)
            job.images.append(store.save(image, text, name=job.names[index]))
            job.step = (index + 1) * p.steps


def remote_image_engine(settings: Settings, base_url: str, api_key: str | None) -> ImageEngine:
    """An image engine whose pictures an AUTOMATIC1111 server makes."""
    return ImageEngine(settings, A1111Renderer(settings, base_url, api_key))


class _ProgressWatcher(threading.Thread):
    """Polls the remote's /progress while a txt2img call runs; interrupts it when the job is cancelled."""

    def __init__(self, engine: A1111Renderer, job: ImageJob, done_before: int) -> None:
        super().__init__(daemon=True, name="remote-image-progress")
        self.engine, self.job, self.done_before = engine, job, done_before
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2)

    def run(self) -> None:
        url = self.engine.base_url
        headers = _headers(self.engine.api_key)
        interrupted = False
        while not self._stop_event.wait(0.25):
            try:
                if self.job.cancelled and not interrupted:
                    self.engine.http.post(f"{url}/sdapi/v1/interrupt", headers=headers, timeout=5.0)
                    interrupted = True
                answer = self.engine.http.get(f"{url}/sdapi/v1/progress", headers=headers, timeout=5.0)
                state = answer.json().get("state", {})
                step = int(state.get("sampling_step") or 0)
                self.job.step = max(self.job.step, self.done_before + step)
            except (httpx.HTTPError, ValueError):
                continue
