"""Engine work from submit to its end, in one place: ``open_stream`` is the only call that submits to an LLM engine
(``submit_image`` the only one to an image engine), and ``Generation`` drains what comes back once for every API.

``open_stream`` runs the blocking ``submit`` in a worker thread and returns once the request is queued, so its
errors (a prompt too long, a model not ready) reach the client before any header is sent; the rest of the
request's life runs inside ``_lifetime``, one async generator whose ``finally`` ends it however it ends (the last
``Done``, an error, the client leaving, a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, cast

from aipc_chat.engines.contract import (
    Arrival,
    Delta,
    Done,
    GenParams,
    ImageEngineClient,
    ImageJob,
    ImageParams,
    LLMEngineClient,
    LLMStream,
    Timing,
)
from aipc_chat.serving.aio import batches

if TYPE_CHECKING:
    from aipc_chat.engines.store import ImageStore
    from aipc_chat.runtime import Runtime

Request = list[dict[str, Any]] | str  # chat messages (templated), or a prompt as it is
# submit blocks while a model loads (a request waits for it there): its own threads, so that waiting requests never
# take the default pool's few threads from /ready, history and the other work the event loop hands out
SUBMITS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="llm-submit")
Batch = list[Delta | Done]


class ChatEngine(Protocol):
    """What ``open_stream`` needs of an LLM engine for chat messages (a prompt needs ``submit_prompt`` too)."""

    def submit(self, messages: list[dict[str, Any]], params: GenParams, arrival: Arrival | None = None) -> LLMStream:
        ...

    def release(self, wait: bool = True, *, if_idle: bool = False) -> None: ...


class ImageQueue(Protocol):
    """What ``submit_image`` and the orchestrator need of an image engine."""

    store: ImageStore

    def submit(self, params: ImageParams, owner: str | None = None) -> ImageJob: ...


class Chunk(NamedTuple):
    """The text of one batch of deltas: reasoning and answer."""

    reasoning: str
    content: str


@dataclass(frozen=True)
class Reply:
    """What a finished stream came to."""

    request_id: str
    reasoning: str
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timing: Timing

    @property
    def usage(self) -> dict[str, int]:
        """OpenAI's ``usage``."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class Generation:
    """One LLM request in flight: its chunks as they come, then its ``Reply``."""

    def __init__(self, stream: LLMStream, life: AsyncGenerator[LLMStream | Batch, None]) -> None:
        self._stream, self._life = stream, life
        self.request_id = stream.request_id
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._done: Done | None = None

    def cancel(self) -> None:
        """Stop the work (a client gone, a shutdown); the stream then ends."""
        self._stream.cancel()

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Each batch's text, as it comes (batches with no text are skipped); the whole is kept for ``reply``."""
        try:
            async for batch in self._life:
                assert isinstance(batch, list)
                chunk = Chunk("".join(d.reasoning for d in batch if isinstance(d, Delta)),
                              "".join(d.content for d in batch if isinstance(d, Delta)))
                self._reasoning.append(chunk.reasoning)
                self._content.append(chunk.content)
                self._done = next((d for d in batch if isinstance(d, Done)), self._done)
                if chunk.reasoning or chunk.content:
                    yield chunk
        finally:
            await self._life.aclose()

    @property
    def reply(self) -> Reply:
        """The whole reply, once ``chunks`` has run to the end."""
        done = self._done
        assert done is not None, "the stream ended without its Done"
        return Reply(self.request_id, "".join(self._reasoning), "".join(self._content), done.finish_reason,
                     done.prompt_tokens, done.completion_tokens, done.timing)

    async def collect(self) -> Reply:
        """Drain the stream and return the whole reply."""
        async for _ in self.chunks():
            pass
        return self.reply


async def open_stream(engine: ChatEngine, request: Request, params: GenParams, arrival: Arrival | None = None,
                      *, timeout: float) -> Generation:
    """Submit ``request`` (messages through the chat template, a string as it is) and return it in flight; the
    engine's refusal is raised here. Past ``timeout`` the stream ends with RequestTimeout (or NotReady)."""
    life = _lifetime(engine, request, params, arrival, timeout)
    stream = await anext(life)  # started: the event loop finalises it even if nobody iterates it again
    assert isinstance(stream, LLMStream)
    return Generation(stream, life)


async def _lifetime(engine: ChatEngine, request: Request, params: GenParams, arrival: Arrival | None,
                    timeout: float) -> AsyncGenerator[LLMStream | Batch, None]:
    """The one place an LLM request starts and ends: first the stream once submitted, then its batches."""
    loop = asyncio.get_running_loop()
    if isinstance(request, str):
        prompt = cast(LLMEngineClient, engine).submit_prompt
        submitted = loop.run_in_executor(SUBMITS, prompt, request, params, arrival)
    else:
        submitted = loop.run_in_executor(SUBMITS, engine.submit, request, params, arrival)
    try:
        stream = await asyncio.shield(submitted)
    except asyncio.CancelledError:  # the caller left while the engine took the request: cancel it once it has
        submitted.add_done_callback(_cancel_when_submitted)
        raise
    try:
        yield stream
        drained = cast(AsyncGenerator[Batch, None], batches(stream, timeout))
        async with contextlib.aclosing(drained):
            async for batch in drained:
                yield batch
        if params.keep_alive == 0:  # the request gave the model back with keep_alive 0: unloaded before the reply
            await asyncio.to_thread(engine.release, if_idle=True)  # (unless another request holds it now)
    finally:
        stream.cancel()  # idempotent; frees the engine's slot when the consumer stopped early


def _cancel_when_submitted(submitted: asyncio.Future[LLMStream]) -> None:
    if not submitted.cancelled() and submitted.exception() is None:
        submitted.result().cancel()


async def load_only(runtime: Runtime, kind: Literal["llm", "image"], keep_alive: float | None) -> Literal[
        "load", "unload"]:
    """A request with no work (Ollama's with no prompt, A1111's reload/unload-checkpoint): load the model and keep
    it ``keep_alive`` seconds (None: the server's default), or unload it (0); nothing is generated."""
    engine: LLMEngineClient | ImageEngineClient = runtime.require_llm() if kind == "llm" else runtime.require_image()
    if keep_alive == 0:
        await asyncio.to_thread(engine.release)  # returns once it is unloaded (unless a request holds it)
        return "unload"
    # the submit pool: a request waiting for a load never takes the default pool's threads; a client's wait is
    # bounded by the request timeout (the start's own load is not)
    await asyncio.get_running_loop().run_in_executor(
        SUBMITS, partial(engine.preload, keep_alive, timeout=runtime.settings.request_timeout))
    return "load"


async def submit_image(engine: ImageQueue, params: ImageParams, owner: str | None = None) -> ImageJob:
    """The one place an image job is submitted. On the event loop: it only checks and queues (cheap), and the job
    table it updates is not safe to update from several threads at once."""
    job = engine.submit(params, owner)
    announce = getattr(engine, "announce", None)
    if announce is not None:  # a team's front end: every other one learns of the job before its id is given out
        try:
            await asyncio.to_thread(announce, job)
        except BaseException:  # the database did not answer, or the client left meanwhile: no one will ask for it
            job.cancel()
            raise
    return job
