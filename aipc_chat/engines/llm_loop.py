"""The LLM owner loops: the one thread that calls the pipeline, apart from the engine that validates and queues.

``BatchLoop`` drives a ``ContinuousBatchingPipeline`` (``add_request`` / ``step``; CPU, GPU): admission with a short
window for requests sent together, one step for all running requests, detokenizing, the hand-off that lets the
event loop send each token before the next step, the reasoning budget. ``SerialLoop`` drives an ``LLMPipeline``
one request at a time (NPU). Both isolate failures: a request the pipeline refuses fails alone; a step that raises
fails the requests in the pipeline (it cannot tell which caused it) and the pipeline is rebuilt before the next.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aipc_chat.engines.admission import Arrivals
from aipc_chat.engines.contract import Delta, Done, LLMStream, Timing
from aipc_chat.engines.detokenize import IncrementalDetokenizer
from aipc_chat.engines.scheduler import Lease, Recovery, in_flight_failure
from aipc_chat.errors import AipcError, Busy, Cancelled, EngineFailure, NotReady
from aipc_chat.reasoning import ReasoningSplitter
from aipc_chat.settings import Settings

log = logging.getLogger(__name__)

HANDOFF_SECONDS = 0.010  # the longest the owner waits, per step, for waiting clients to be sent their tokens
HANDOFF_MIN_STEP_SECONDS = 0.005  # steps shorter than this are not worth a hand-off (it costs ~0.5 ms)
ARRIVAL_POLL_SECONDS = 0.001  # while requests are on their way, how often the owner looks whether they still are
Decoder = Callable[[list[list[int]]], list[str]]
BROKEN = NotReady("The LLM engine has failed (three rebuilds in a row failed); restart the server.")


class AnswerStop(Protocol):
    """Ends the answer early (``reasoning.StopMatcher``, ``tools.RepeatedCallStop``): fed the answer, it gives
    back what may be sent."""

    @property
    def hit(self) -> bool: ...

    def feed(self, text: str) -> str: ...

    def finish(self) -> str: ...


@dataclass
class LoopRequest:
    """Owner-thread state of one request."""

    stream: LLMStream
    prompt_ids: list[int]
    config: Any  # openvino_genai.GenerationConfig
    max_new_tokens: int
    budget: int | None
    splitter: ReasoningSplitter
    timing: Timing = field(default_factory=Timing)
    handle: Any = None
    detok: IncrementalDetokenizer | None = None
    generated: list[int] = field(default_factory=list)
    think_tokens: int = 0
    forced_tokens: int = 0
    forced: bool = False  # the think block was closed by the engine (once at most)
    unsent_tokens: int = 0
    text_out: list[str] = field(default_factory=list)
    keep_alive: float | None = None  # the request's own keep-alive for the model (seconds; inf: never)
    lease: Lease | None = None  # the model held for this request (given back when it finishes)
    stopper: AnswerStop | None = None  # stop strings matched on the answer only (a reasoning model's request), a
    # repeated tool call
    answer_config: Any = None  # the config once the engine closes the think block (the constraint's answer part)

    @property
    def stopped(self) -> bool:
        """The answer reached one of its stop strings: the request ends now."""
        return self.stopper is not None and self.stopper.hit


@dataclass(frozen=True)
class Vocabulary:
    """What the loops need of the tokenizer: batched decoding and the ids they insert or look for."""

    decode_many: Decoder
    close_ids: list[int]  # "</think>" with its newlines, as the engine writes it when closing a think block
    eos_id: int


class OwnerLoop:
    """What both loops share: the inbox, admission counts, finishing requests, the thread and recovery."""

    name = "llm-owner"

    def __init__(self, settings: Settings, vocab: Vocabulary, *, arrivals: Arrivals,
                 observers: list[Callable[[Done], None]], recover: Callable[[BaseException], Recovery],
                 release: Callable[[Lease, float | None], None]) -> None:
        self.settings = settings
        self.pipe: Any = None  # installed and taken away by the model scheduler (never while a request holds it)
        self.vocab = vocab
        self._recover = recover  # has the scheduler rebuild the pipeline
        self._release_lease = release  # gives a finished request's hold on the model back to the scheduler
        self.arrivals = arrivals
        self.observers = observers
        self.error: str | None = None  # why the owner thread stopped, if it did
        self.active = 0  # generating right now
        self._pending = 0  # admitted and not finished
        self._pending_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[LoopRequest | None] = queue.SimpleQueue()
        self._live: dict[LLMStream, LoopRequest] = {}  # admitted and not finished
        self._stopped = False  # the owner thread has ended: nothing is admitted any more
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        """Requests admitted and not yet generating."""
        return max(0, self._pending - self.active)

    @property
    def stopped(self) -> bool:
        """True once the owner thread has ended, or is ending (it failed: ``error`` says why, set before the
        requests it held are failed)."""
        thread = self._thread
        return self.error is not None or self._stopped or (thread is not None and not thread.is_alive())

    def start(self) -> None:
        """Start the owner thread."""
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is in flight and stop the owner thread."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join(timeout)
            self._thread = None

    def admit(self, req: LoopRequest) -> None:
        """Queue a request (any thread); Busy when the queue is full."""
        with self._pending_lock:
            if self._stopped:
                raise NotReady(f"The LLM engine has stopped ({self.error or 'shutting down'}).")
            if self._pending >= (limit := capacity(self.settings)):
                raise Busy(f"The LLM queue is full ({limit} requests); retry shortly.", retry_after=2)
            self._pending += 1
            self._live[req.stream] = req
        self._inbox.put(req)

    def cancel_all(self) -> None:
        """Cancel every request in flight (the owner drops them at its next step)."""
        for stream in list(self._live):
            stream.cancel()

    # --- the owner thread ----------------------------------------------------------------------------------------

    def _main(self) -> None:
        error: AipcError = Cancelled("The server is shutting down.")
        try:
            self.run()
        except Exception as exc:  # a bug of ours, not the pipeline's: fail whatever is left, refuse what comes
            log.exception("LLM owner thread failed")
            self.error = f"the owner loop stopped: {type(exc).__name__}: {exc}"
            error = EngineFailure("The LLM engine stopped after an internal error; restart the server.")
        finally:
            with self._pending_lock:
                self._stopped = True
            self._fail_live(error)

    def run(self) -> None:
        """The loop itself (owner thread)."""
        raise NotImplementedError

    def _fail_live(self, error: AipcError) -> None:
        """End whatever was admitted and not finished (the loop has stopped): each gives its model back."""
        for req in list(self._live.values()):
            self.finish(req, error)

    def recover(self, cause: BaseException, failed: list[LoopRequest]) -> bool:
        """The pipeline may be broken: it is marked recovering, the requests it failed end, and the scheduler
        rebuilds it; False when the engine has failed for good."""
        self.pipe = None  # release the broken one before the scheduler builds its replacement
        recovery = self._recover(cause)  # first: whoever sees a failed request sees the model recovering
        for req in failed:
            self.finish(req, in_flight_failure("LLM"))
        ok = recovery.wait()
        if not ok:
            self._fail_remaining(BROKEN)
        return ok

    def _fail_remaining(self, error: AipcError) -> None:
        """The engine has failed: end what is queued (the caller ends what it holds)."""
        while True:
            try:
                req = self._inbox.get_nowait()
            except queue.Empty:
                return
            if req is not None:
                self.finish(req, error)

    def finish(self, req: LoopRequest, result: Done | BaseException) -> None:
        """End a request with its result or error (once: a request already ended is left as it is)."""
        if req.timing.finished is not None:
            return
        if req.timing.started is not None:
            self.active -= 1
        req.timing.finished = time.perf_counter()
        with self._pending_lock:
            self._pending -= 1
        self._live.pop(req.stream, None)
        if req.lease is not None:  # before the result is seen: keep_alive 0 has begun the unload by then
            self._release_lease(req.lease, req.keep_alive)
            req.lease = None
        req.stream.put(result)
        req.stream.close()
        if isinstance(result, Done):
            _log_timing(req.stream.request_id, result)
            for observe in self.observers:
                try:
                    observe(result)
                except Exception:
                    log.exception("an LLM observer failed")

    def push_text(self, req: LoopRequest, tokens: int) -> None:
        """Split what was decoded into reasoning and answer and send it (held-back text rides with the next)."""
        text = "".join(req.text_out)
        req.text_out.clear()
        reasoning, content = req.splitter.feed(text) if text else ("", "")
        if req.stopper is not None:
            content = req.stopper.feed(content)
        req.unsent_tokens += tokens
        if reasoning or content:
            req.stream.put(Delta(reasoning, content, req.unsent_tokens))
            req.unsent_tokens = 0

    def flush(self, req: LoopRequest) -> None:
        """Send what the splitter held back at the end."""
        self.push_text(req, 0)
        reasoning, content = req.splitter.finish()
        if req.stopper is not None:
            content = req.stopper.feed(content) + req.stopper.finish()
        if reasoning or content:
            req.stream.put(Delta(reasoning, content, 0))


class BatchLoop(OwnerLoop):
    """Continuous batching over ``ContinuousBatchingPipeline.add_request`` / ``step``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ids = itertools.count(1)

    def run(self) -> None:
        """Admit, step, hand out, until stopped (or failed for good)."""
        waiting: deque[LoopRequest] = deque()
        running: dict[int, LoopRequest] = {}
        while not self._take_inbox(waiting, block=not running and not waiting):
            self._drop_cancelled(waiting, running)
            if not running and not waiting:
                continue
            while waiting and len(running) < self.settings.max_num_seqs:
                self._start(waiting.popleft(), running, None)
            if running and not self._step(running):
                for req in waiting:
                    self.finish(req, BROKEN)
                return
        for req in running.values():
            if req.handle is not None:
                req.handle.cancel()
        self._release()  # before the requests end: their models may be unloaded as soon as they are given back
        for req in [*waiting, *running.values()]:
            self.finish(req, Cancelled("The server is shutting down."))

    def _release(self) -> None:
        """Let the scheduler free the KV blocks of cancelled requests (it does so on its next step)."""
        pipe = self.pipe
        try:
            if pipe is not None and pipe.has_non_finished_requests():
                pipe.step()
        except Exception:
            log.exception("releasing cancelled requests failed")

    def _step(self, running: dict[int, LoopRequest]) -> bool:
        """One pipeline step for every running request, then hand out what it produced; False when the engine
        has failed for good."""
        started = time.perf_counter()
        try:
            self.pipe.step()
        except Exception as exc:  # the pipeline cannot tell whose request broke it, and it cannot step again
            log.exception("pipeline step failed with %d requests running", len(running))
            failed = list(running.values())
            running.clear()
            return self.recover(exc, failed)
        outputs = {}
        for rid, req in list(running.items()):
            try:
                outputs[rid] = self._read(req)
            except Exception:  # this request's output cannot be read: it fails alone
                log.exception("%s: reading its output failed", req.stream.request_id)
                del running[rid]
                self._cancel_handle(req)
                self.finish(req, EngineFailure("Reading this request's output failed; retry it."))
        texts = self._detokenize([(rid, running[rid], out[0]) for rid, out in outputs.items() if out[0]])
        for rid, (new, finish, status) in outputs.items():
            if self._collect(running[rid], running, rid, new, finish, status, texts.get(rid, "")):
                del running[rid]
        if time.perf_counter() - started >= HANDOFF_MIN_STEP_SECONDS:
            self._hand_off(running)
        return True

    @staticmethod
    def _cancel_handle(req: LoopRequest) -> None:
        try:
            req.handle.cancel()
        except Exception:
            log.exception("cancelling a failed request's handle failed")

    def _detokenize(self, batch: list[tuple[int, LoopRequest, list[int]]]) -> dict[int, str]:
        """The new text of each request's new tokens, decoded in one tokenizer call for all of them."""
        detoks: list[IncrementalDetokenizer] = []
        windows: list[list[int]] = []
        for _, req, ids in batch:
            assert req.detok is not None
            detoks.append(req.detok)
            windows.extend(req.detok.extend(ids))
        texts = self.vocab.decode_many(windows)
        return {rid: detok.take(texts[2 * i], texts[2 * i + 1])
                for i, ((rid, _, _), detok) in enumerate(zip(batch, detoks, strict=True))}

    @staticmethod
    def _hand_off(running: dict[int, LoopRequest]) -> None:
        """Let the event loop send this step's tokens to clients waiting for them before the next step starts.

        ``ContinuousBatchingPipeline.step()`` holds the GIL for the whole step (openvino-genai 2026.4), so without
        this a token reaches its client one step after it exists: a whole decode step added to TTFT and ITL. Only
        worth it when steps are long: with millisecond steps (tiny models) the event loop gets its turns between
        steps anyway and sends several tokens per chunk.
        """
        owed = [req.stream for req in running.values() if req.stream.owes_handoff]
        if owed:
            deadline = time.perf_counter() + HANDOFF_SECONDS
            for stream in owed:
                stream.wait_handed_off(deadline)

    def _take_inbox(self, waiting: deque[LoopRequest], *, block: bool) -> bool:
        """Move new requests into ``waiting``; True when asked to stop.

        Woken from idle, it waits, for at most ``batch_window_ms``, while other requests are still on their way
        (being read, validated or tokenized): requests sent together (a desktop app's parallel calls, a benchmark's
        streams) then prefill in one step instead of each waiting out the other's prefill, and a lone request does
        not wait at all.
        """
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
        except queue.Empty:
            return False
        deadline = time.perf_counter() + (self.settings.batch_window_ms / 1000 if block else 0.0)
        while item is not None:
            waiting.append(item)
            nxt = self._next_arrival(deadline)
            if nxt is False:
                return False
            item = nxt
        return True

    def _next_arrival(self, deadline: float) -> LoopRequest | None | Literal[False]:
        """The next queued request, waiting for one until ``deadline`` only while others are on their way."""
        while True:
            try:
                return self._inbox.get_nowait()
            except queue.Empty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self.arrivals.count <= 0:
                return False
            try:  # in short waits: a request on its way may end without submitting (a 4xx)
                return self._inbox.get(timeout=min(remaining, ARRIVAL_POLL_SECONDS))
            except queue.Empty:
                continue

    def _drop_cancelled(self, waiting: deque[LoopRequest], running: dict[int, LoopRequest]) -> None:
        for req in [r for r in waiting if r.stream.cancelled]:
            waiting.remove(req)
            self.finish(req, Cancelled("The request was cancelled."))
        dropped = [running.pop(rid) for rid, req in list(running.items()) if req.stream.cancelled]
        for req in dropped:
            self._cancel_handle(req)
        if dropped and not running:
            self._release()  # the pipeline is used before the requests give their model back, not after
        for req in dropped:
            self.finish(req, Cancelled("The request was cancelled."))

    def _start(self, req: LoopRequest, running: dict[int, LoopRequest], ids: list[int] | None,
               max_new: int | None = None) -> None:
        import openvino as ov

        if max_new is not None:
            req.config.max_new_tokens = max_new
        rid = next(self._ids)
        try:
            req.handle = self.pipe.add_request(rid, ov.Tensor(as_array(req.prompt_ids if ids is None else ids)),
                                               req.config)
        except Exception as exc:  # the culprit is known: it fails alone, the pipeline goes on
            log.exception("%s: the pipeline refused the request", req.stream.request_id)
            self.finish(req, EngineFailure(f"Generation failed: {type(exc).__name__}"))
            return
        if req.timing.started is None:
            req.timing.started = time.perf_counter()
            self.active += 1
            req.detok = IncrementalDetokenizer(lambda w: self.vocab.decode_many([w])[0], req.prompt_ids)
        running[rid] = req

    @staticmethod
    def _read(req: LoopRequest) -> tuple[list[int], Any, Any]:
        """What a step produced for one request: new token ids, finish reason (or None), status."""
        import openvino_genai as ov_genai

        new: list[int] = []
        finish = None
        while req.handle.can_read():
            for out in req.handle.read().values():
                new.extend(out.generated_ids)
                if out.finish_reason != ov_genai.GenerationFinishReason.NONE:
                    finish = out.finish_reason
        return new, finish, req.handle.get_status()

    def _collect(self, req: LoopRequest, running: dict[int, LoopRequest], rid: int, new: list[int], finish: Any,
                 status: Any, text: str) -> bool:
        """Hand out what a step produced for one request; True when the request is finished."""
        import openvino_genai as ov_genai

        if new:
            self._emit(req, new, text)
        if req.stopped:  # the answer reached a stop string: the rest is not wanted
            self._cancel_handle(req)
            self.flush(req)
            self.finish(req, Done("stop", len(req.prompt_ids), len(req.generated) + req.forced_tokens, req.timing))
            return True
        done = finish is not None or status not in (ov_genai.GenerationStatus.RUNNING,)
        if not done and req.budget is not None and req.splitter.in_think and req.think_tokens >= req.budget:
            return self._force_answer(req, running, rid)
        if not done:
            return False
        if self._ended_inside_think(req, finish):
            return self._force_answer(req, running, rid)
        if status == ov_genai.GenerationStatus.IGNORED:
            self.finish(req, EngineFailure("The request did not fit the KV cache; lower the prompt or retry."))
            return True
        length = finish == ov_genai.GenerationFinishReason.LENGTH and not req.config.ignore_eos or (
            req.config.ignore_eos and len(req.generated) + req.forced_tokens >= req.max_new_tokens)
        self.flush(req)
        self.finish(req, Done("length" if length else "stop", len(req.prompt_ids),
                              len(req.generated) + req.forced_tokens, req.timing))
        return True

    def _ended_inside_think(self, req: LoopRequest, finish: Any) -> bool:
        """The model stopped (EOS) before closing its think block: it owes an answer."""
        import openvino_genai as ov_genai

        return (finish == ov_genai.GenerationFinishReason.STOP and req.splitter.in_think and not req.forced
                and bool(req.generated) and req.generated[-1] == self.vocab.eos_id and not req.config.ignore_eos)

    def _emit(self, req: LoopRequest, ids: list[int], text: str) -> None:
        if req.timing.first_token is None:
            req.timing.first_token = time.perf_counter()
        req.generated.extend(ids)
        if text:
            req.text_out.append(text)
        if req.splitter.in_think:
            req.think_tokens += len(ids)
        self.push_text(req, len(ids))

    def _force_answer(self, req: LoopRequest, running: dict[int, LoopRequest], rid: int) -> bool:
        """The reasoning budget is spent (or the model ended inside it): close the think block, then answer."""
        self._cancel_handle(req)
        del running[rid]
        req.forced = True
        if req.generated and req.generated[-1] == self.vocab.eos_id:
            req.generated.pop()  # the continuation must not hold an end-of-sequence token
        close_ids = self.vocab.close_ids
        req.forced_tokens += len(close_ids)
        assert req.detok is not None
        text = req.detok.push(close_ids)
        if text:
            req.text_out.append(text)
        self.push_text(req, len(close_ids))
        remaining = req.max_new_tokens - len(req.generated) - req.forced_tokens
        log.info("%s: closing the think block after %d tokens; answering", req.stream.request_id, req.think_tokens)
        req.budget = None
        if req.answer_config is not None:  # the constraint allowed reasoning first: the rest is the answer's part
            req.config, req.answer_config = req.answer_config, None
        if remaining <= 0:
            self.flush(req)
            self.finish(req, Done("length", len(req.prompt_ids), len(req.generated) + req.forced_tokens,
                                  req.timing))
            return False
        self._start(req, running, req.prompt_ids + req.generated + close_ids, max_new=remaining)
        return False


class SerialLoop(OwnerLoop):
    """NPU: one request at a time through ``LLMPipeline.generate`` with a cancelling streamer."""

    name = "llm-owner-serial"

    def run(self) -> None:
        """Serve requests in order until stopped (or failed for good)."""
        while True:
            req = self._inbox.get()
            if req is None:
                break
            if req.stream.cancelled:
                self.finish(req, Cancelled("The request was cancelled."))
            elif not self._serve_one(req):
                return
        self._fail_remaining(Cancelled("The server is shutting down."))

    def _serve_one(self, req: LoopRequest) -> bool:
        import openvino as ov
        import openvino_genai as ov_genai

        req.timing.started = time.perf_counter()
        self.active += 1

        def on_text(text: str) -> Any:
            if req.timing.first_token is None:
                req.timing.first_token = time.perf_counter()
            req.text_out.append(text)
            self.push_text(req, 1)
            if req.stream.cancelled:
                return ov_genai.StreamingStatus.CANCEL
            return ov_genai.StreamingStatus.STOP if req.stopped else ov_genai.StreamingStatus.RUNNING

        try:
            res = self.pipe.generate(ov.Tensor(as_array(req.prompt_ids)), req.config, on_text)
            n = int(res.perf_metrics.get_num_generated_tokens())
        except Exception as exc:  # one request at a time: the culprit is known; the pipeline is rebuilt anyway
            log.exception("%s: generation failed", req.stream.request_id)
            return self.recover(exc, [req])
        if req.stream.cancelled:
            self.finish(req, Cancelled("The request was cancelled."))
            return True
        self.flush(req)
        length = n >= req.max_new_tokens and not req.stopped
        self.finish(req, Done("length" if length else "stop", len(req.prompt_ids), n, req.timing))
        return True


def capacity(settings: Settings) -> int:
    """Requests the LLM admits at once: generating plus waiting."""
    return settings.max_num_seqs + settings.llm_queue_size


def as_array(ids: list[int]) -> Any:
    """Token ids as the [1, n] int64 array the pipelines take."""
    import numpy as np

    return np.asarray([ids], dtype=np.int64)


def _log_timing(request_id: str, done: Done) -> None:
    t = done.timing
    if t.started is None or t.finished is None:
        return
    decode = (t.finished - t.first_token) if t.first_token else 0.0
    rate = (done.completion_tokens - 1) / decode if decode > 0 and done.completion_tokens > 1 else 0.0
    log.info("%s: queue %.1f ms, ttft %.1f ms, %d+%d tokens, %.1f tokens/s, %s", request_id,
             (t.started - t.queued) * 1e3, (t.ttft or 0.0) * 1e3, done.prompt_tokens, done.completion_tokens,
             rate, done.finish_reason)
