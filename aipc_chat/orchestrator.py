"""One /chat turn: history + prompts -> LLM -> (image prompt) -> safety -> image engine -> history.

``Orchestrator.run`` yields events as they happen (``reasoning``, ``content``, ``image_prompt``, ``image_queued``,
``image_progress``, ``image_done``, ``image_error``) and ends with ``done`` carrying the whole response. It knows
nothing about HTTP: the route streams the events or returns the last one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from aipc_chat.engines.contract import Arrival, GenParams, ImageJob, ImageParams, TagConstraint
from aipc_chat.errors import AipcError
from aipc_chat.history import HistoryStore, Turn
from aipc_chat.intent import about_subject, asks_for_picture, picture_subject
from aipc_chat.prompts import Prompts, fit_to_context, window
from aipc_chat.reasoning import partial_tag_suffix
from aipc_chat.safety import PromptFilter
from aipc_chat.serving import Asked, Reply, gen_params, open_stream, submit_image
from aipc_chat.serving.aio import wait_job
from aipc_chat.serving.streams import ChatEngine, ImageQueue

log = logging.getLogger(__name__)

ImageMode = Literal["auto", "always", "never"]
Event = tuple[str, dict[str, Any]]
# Bounded lengths: the grammar always terminates, even on a model that would ramble (the demo model).
IMAGE_PROMPT_REGEX = r'\{"prompt": "[^"\\\n]{1,300}"\}'
IMAGE_TAG = TagConstraint("<image>", IMAGE_PROMPT_REGEX, "</image>")
# The request for a picture's prompt alone, under the grammar (ours, not a client's: no API defaults apply).
IMAGE_PROMPT_PARAMS = GenParams(max_tokens=256, regex=IMAGE_PROMPT_REGEX, temperature=0.6, constraint_param="image")
PROGRESS_INTERVAL = 0.1  # seconds between image progress events while a picture renders


class ChatLLM(ChatEngine, Protocol):
    """What the orchestrator needs of an LLM engine."""

    context_length: int
    reasons: bool

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int: ...


@dataclass(frozen=True)
class ImageOptions:
    """The user's image settings for a turn (the LLM writes the prompt)."""

    negative_prompt: str | None = None
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int | None = None
    width: int = 512
    height: int = 512
    sampler: str | None = None  # A1111's name; None: the model's own


@dataclass(frozen=True)
class ChatTurnRequest:
    """One user message, validated."""

    user_id: str
    message: str
    conversation_id: str = "default"
    image: ImageMode = "auto"
    image_options: ImageOptions = field(default_factory=ImageOptions)
    wait_for_image: bool = True
    max_tokens: int | None = None
    temperature: float | None = None  # the answer's sampling (None: the engine's default); seed for repeatable turns
    seed: int | None = None


def turn_params(req: ChatTurnRequest, max_tokens: int) -> GenParams:
    """A turn's generation parameters (``DEFAULTS["chat"]``; ``max_tokens``, AIPC_CHAT_MAX_TOKENS, unless the turn
    asks for fewer or more); the image tag is allowed unless the turn is text only."""
    return gen_params("chat", Asked(max_tokens=req.max_tokens or max_tokens, temperature=req.temperature,
                                    seed=req.seed, tag=None if req.image == "never" else IMAGE_TAG))


@dataclass
class ChatTurnResult:
    """The response of a turn (``done`` event, and the non-streamed body)."""

    conversation_id: str
    assistant_response: str = ""
    reasoning: str | None = ""  # None when the model does not reason
    image_generated: bool = False
    image_state: str | None = None  # queued | done | failed | filtered | None (no image)
    image_job_id: str | None = None
    image_names: list[str] = field(default_factory=list)  # the HTTP layer makes them URLs
    image_prompt: dict[str, Any] | None = None
    image_error: dict[str, str] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self, url: Callable[[str], str]) -> dict[str, Any]:
        """The JSON form, each image name made a URL by ``url``."""
        out = asdict(self)
        out["image_urls"] = [url(name) for name in out.pop("image_names")]
        return out


class TagFilter:
    """Hide ``<image>...</image>`` from streamed answer text and keep its content."""

    def __init__(self, begin: str = IMAGE_TAG.begin, end: str = IMAGE_TAG.end) -> None:
        self.begin, self.end = begin, end
        self._held = ""
        self._inside = False
        self.captured: str | None = None

    def feed(self, text: str) -> str:
        """Visible text of this chunk."""
        buf = self._held + text
        self._held = ""
        if self._inside:
            self.captured = (self.captured or "") + buf
            if self.end in self.captured:
                self.captured, _, rest = self.captured.partition(self.end)
                self._inside = False
                return rest
            return ""
        idx = buf.find(self.begin)
        if idx >= 0:
            self._inside = True
            self.captured = ""
            return buf[:idx] + self.feed(buf[idx + len(self.begin) :])
        keep = partial_tag_suffix(buf, self.begin)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        """What was held back at the end."""
        held, self._held = self._held, ""
        return "" if self._inside else held


def parse_image_prompt(text: str | None) -> str | None:
    """The prompt inside an image tag or JSON reply; None when absent or empty."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    prompt = value.get("prompt") if isinstance(value, dict) else None
    return prompt.strip() or None if isinstance(prompt, str) else None


def _preview_fields(preview: tuple[bytes, int] | None, fresh: bool) -> dict[str, Any]:
    """A progress event's preview (base64 PNG, as A1111's ``current_image``) when it is one not sent before."""
    if preview is None or not fresh:
        return {"preview": None, "preview_step": None}
    return {"preview": base64.b64encode(preview[0]).decode(), "preview_step": preview[1]}


def image_error(exc: AipcError) -> dict[str, str]:
    """A picture's failure as a turn reports it (``image_error``), with no HTTP status: the turn itself went on."""
    return {"code": exc.code or "image_error", "message": exc.message}


class Orchestrator:
    """Runs /chat turns over the engines, the history store, the prompts and the safety filter."""

    def __init__(self, llm: Callable[[], ChatLLM], images: Callable[[], ImageQueue] | None, history: HistoryStore,
                 prompts: Prompts, safety: PromptFilter, *, history_limit: int, max_tokens: int,
                 timeout: float) -> None:
        self._llm, self._images = llm, images
        self.history, self.prompts, self.safety = history, prompts, safety
        self.history_limit, self.max_tokens, self.timeout = history_limit, max_tokens, timeout
        self._followers: set[asyncio.Task[None]] = set()  # pictures a turn did not wait for, recorded as they end

    async def run(self, req: ChatTurnRequest, arrival: Arrival | None = None) -> AsyncIterator[Event]:
        """Run one turn; yield its events, the last being ``done``. ``arrival`` is the turn's admission handle.
        With no image model served (``images`` None), every turn is text only."""
        t0 = time.perf_counter()
        if self._images is None:
            req = replace(req, image="never")
        llm = self._llm()
        result = ChatTurnResult(req.conversation_id)
        tags = TagFilter()
        async for event in self._answer(llm, req, result, tags, arrival):
            yield event
        result.timings["llm_s"] = round(time.perf_counter() - t0, 4)
        prompt = await self._image_prompt(llm, req, tags.captured, result)
        job = await self._start_image(req, prompt, result) if prompt is not None else None
        # Stored now, answer in hand, before anything else is sent: a client that leaves still finds the turn.
        message_id = await asyncio.to_thread(self.history.add_turn, req.user_id, req.conversation_id, Turn(
            req.message, result.assistant_response, result.reasoning or None, result.image_names,
            result.image_prompt, "pending" if job is not None else result.image_state,
            image_job=job.id if job is not None else None))
        if job is not None and not req.wait_for_image:
            self._follow(job, message_id, result)
        finished = job is None or not req.wait_for_image
        try:
            if result.image_prompt is not None:
                yield "image_prompt", {"image_prompt": result.image_prompt}
            if job is not None:
                yield "image_queued", {"job_id": job.id, "image_names": result.image_names}
            elif result.image_error:
                yield "image_error", result.image_error
            if job is not None and req.wait_for_image:
                async for event in self._wait_image(job, result):
                    yield event
                finished = True
                await self._record(message_id, result.image_names, result.image_prompt,
                                   result.image_state or "done")
        finally:
            if not finished and job is not None:  # the client left (Stop, disconnect): stop its picture too
                job.cancel()
                await asyncio.to_thread(self.history.set_images, message_id, [], result.image_prompt, "cancelled")
        result.timings["total_s"] = round(time.perf_counter() - t0, 4)
        yield "done", {"result": result}

    def disable_images(self) -> None:
        """Serve text-only turns from now on (the server has no image model)."""
        self._images = None

    async def followed(self) -> None:
        """Wait until every picture a turn did not wait for has been recorded."""
        if self._followers:
            await asyncio.gather(*self._followers, return_exceptions=True)

    async def _record(self, message_id: int, names: list[str], prompt: dict[str, Any] | None, state: str) -> None:
        """Record how the answer's picture ended; when the answer is gone (its conversation was deleted while the
        picture rendered), delete the picture too, as the deletion would have."""
        if await asyncio.to_thread(self.history.set_images, message_id, names, prompt, state):
            return
        if names and self._images is not None:  # whatever the state: an interrupted picture is kept as far as it got
            try:
                await asyncio.to_thread(self._images().store.delete, names)
            except Exception as exc:  # left to retention
                log.warning("could not delete the pictures of deleted message %d: %s", message_id,
                            getattr(exc, "message", None) or repr(exc))

    def _follow(self, job: ImageJob, message_id: int, result: ChatTurnResult) -> None:
        """Record in history how a picture the turn did not wait for ends (done, failed or cancelled)."""

        async def follow() -> None:
            state = "done"
            try:
                await wait_job(job, self.timeout)
            except AipcError:
                state = "cancelled" if job.state == "cancelled" else "failed"
            prompt = {**(result.image_prompt or {}), "seed": job.seeds[0] if job.seeds else None}
            try:
                await self._record(message_id, list(job.images), prompt, state)
            except AipcError as exc:  # no client is waiting: a full disk is logged; the row stays pending
                log.warning("could not record picture %s of message %d: %s", job.id, message_id, exc.message)

        task = asyncio.get_running_loop().create_task(follow())
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)

    async def _answer(self, llm: ChatLLM, req: ChatTurnRequest, result: ChatTurnResult, tags: TagFilter,
                      arrival: Arrival | None) -> AsyncIterator[Event]:
        """The LLM's reply over the history window; the image tag is kept out of the answer."""
        earlier = await asyncio.to_thread(self.history.messages, req.user_id, req.conversation_id)
        params = turn_params(req, self.max_tokens)
        assert params.max_tokens is not None
        # Counting tokens templates and tokenizes the whole history (seconds for a long one): off the event loop.
        messages = await asyncio.to_thread(
            fit_to_context, lambda kept: self.prompts.messages(kept, req.message, image_auto=req.image != "never"),
            window(earlier, self.history_limit), llm.prompt_tokens, llm.context_length - params.max_tokens)
        async for kind, payload in self._generate(llm, messages, params, tags, arrival):
            if kind == "done":
                reply: Reply = payload["reply"]
                result.usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
                result.reasoning = reply.reasoning.strip() if llm.reasons else None
                continue
            if kind == "content":
                result.assistant_response += payload["text"]
            yield kind, payload
        result.assistant_response = result.assistant_response.strip()

    async def _generate(self, llm: ChatLLM, messages: list[dict[str, str]], params: GenParams,
                        tags: TagFilter, arrival: Arrival | None = None) -> AsyncIterator[Event]:
        """Reasoning and answer text as they come (the image tag filtered out), then ``done`` with the reply."""
        generation = await open_stream(llm, messages, params, arrival, timeout=self.timeout)
        async for chunk in generation.chunks():
            if chunk.reasoning:
                yield "reasoning", {"text": chunk.reasoning}
            if content := tags.feed(chunk.content):
                yield "content", {"text": content}
        if tail := tags.finish():
            yield "content", {"text": tail}
        yield "done", {"reply": generation.reply}

    async def _image_prompt(self, llm: ChatLLM, req: ChatTurnRequest, tag: str | None,
                            result: ChatTurnResult) -> str | None:
        """The picture's prompt: the one the model wrote in its tag; else, with ``always`` or a message that asks
        for a picture outright (``image: auto``; the model may not have written the tag), one asked for apart
        (a second LLM call, timed as ``image_prompt_s``)."""
        if req.image == "never":
            return None
        prompt = parse_image_prompt(tag)
        if prompt is None and (req.image == "always" or asks_for_picture(req.message)):
            t0 = time.perf_counter()
            prompt = await self._ask_image_prompt(llm, req.message)
            result.timings["image_prompt_s"] = round(time.perf_counter() - t0, 4)
        return prompt

    async def _ask_image_prompt(self, llm: ChatLLM, message: str) -> str:
        """Ask for a prompt under a bounded grammar. For an explicit request, the subject it names when the model's
        prompt is not about it (a small model's may not be); else the user's words if it comes back empty."""
        text = ""
        async for kind, payload in self._generate(llm, self.prompts.image_request(message), IMAGE_PROMPT_PARAMS,
                                                  TagFilter()):
            if kind == "content":
                text += payload["text"]
        prompt, subject = parse_image_prompt(text), picture_subject(message)
        if subject is not None and (prompt is None or not about_subject(prompt, subject)):
            return subject
        return prompt or message.strip()

    async def _start_image(self, req: ChatTurnRequest, prompt: str, result: ChatTurnResult) -> ImageJob | None:
        opts = req.image_options
        params = ImageParams(prompt=prompt, negative_prompt=opts.negative_prompt or "", width=opts.width,
                             height=opts.height, steps=opts.steps, guidance_scale=opts.guidance_scale, seed=opts.seed,
                             sampler=opts.sampler)
        result.image_prompt = {"prompt": prompt, "negative_prompt": params.negative_prompt, "width": params.width,
                               "height": params.height, "steps": params.steps,
                               "guidance_scale": params.guidance_scale, "sampler": params.sampler,
                               "seed": params.seed}
        verdict = self.safety.check(prompt)
        if not verdict.allowed:
            result.image_state = "filtered"
            result.image_error = {"code": "content_filter",
                                  "message": f"The image prompt was refused by the content filter ({verdict.term})."}
            return None
        try:
            assert self._images is not None  # a turn asks for pictures only when they are served
            job = await submit_image(self._images(), params, owner=req.user_id)
        except AipcError as exc:
            result.image_state, result.image_error = "failed", image_error(exc)
            return None
        result.image_state, result.image_job_id = "queued", job.id
        result.image_names = list(job.names)
        return job

    async def _wait_image(self, job: ImageJob, result: ChatTurnResult) -> AsyncIterator[Event]:
        t0 = time.perf_counter()
        waiter = asyncio.ensure_future(wait_job(job, self.timeout))
        last, shown = -1, -1
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=PROGRESS_INTERVAL)
                if job.step != last and not waiter.done():
                    last = job.step
                    preview = job.latest_preview  # one read: the PNG and its step belong together
                    fresh = preview is not None and preview[1] != shown
                    yield "image_progress", {"job_id": job.id, "step": job.step, "total_steps": job.total_steps,
                                             "progress": round(job.progress, 4), **_preview_fields(preview, fresh)}
                    shown = preview[1] if preview is not None else shown
            waiter.result()
        except AipcError as exc:
            result.image_state, result.image_names, result.image_error = "failed", [], image_error(exc)
            yield "image_error", result.image_error
            return
        finally:
            waiter.cancel()
        result.image_generated, result.image_state = True, "done"
        result.image_prompt = {**(result.image_prompt or {}), "seed": job.seeds[0] if job.seeds else None}
        result.timings["image_s"] = round(time.perf_counter() - t0, 4)
        yield "image_done", {"job_id": job.id, "image_names": result.image_names, "seeds": job.seeds}

