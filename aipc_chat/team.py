"""Several front ends on one shared database (``AIPC_DATABASE_URL``): what one of them does, every other one sees.

- **Image jobs.** Each front end renders its own jobs (through its engine, usually a remote image server) and writes
  their state, progress and latest preview to the ``image_jobs`` table: at submission, as they progress, and as they
  end (before whoever waits for them hears of it). A client may poll, cancel, interrupt or skip a job through any
  front end: the one that does not run it records the request in the job's row, and the one that runs it applies
  it at its next look (every ``POLL`` seconds while it has jobs).
- **Rate limits.** One token bucket per user in the ``rate_limits`` table, taken in a transaction that locks the row.
- **Heartbeats.** Each front end marks itself seen every ``HEARTBEAT`` seconds. One that has not been seen for
  ``DEAD_AFTER`` seconds (killed, or its host lost) is swept by the others: its unfinished jobs fail, and pictures
  that history lists as pending are marked done (when the job had finished) or interrupted.

Heartbeats, sweeps and rate limits use the database's clock, so front ends on hosts whose clocks differ agree; a
job's own times (created, started, finished) are its front end's, as they are without a team.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import threading
import time
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, text, update

from aipc_chat.db import Database, image_jobs, messages, rate_limits, upsert, workers
from aipc_chat.engines.contract import ImageEngineClient, ImageJob, ImageParams
from aipc_chat.errors import AipcError, Busy

log = logging.getLogger(__name__)

POLL = 0.25  # how often a front end with jobs in flight writes their progress and reads requests for them
HEARTBEAT = 2.0
DEAD_AFTER = 15.0  # unseen this long: the front end is gone (a pause for garbage collection is far shorter)
KEEP_FINISHED = 3600.0  # finished jobs stay visible this long (the engine itself keeps its last 256)
ACTIVE = ("queued", "running")


def default_worker_name() -> str:
    """``host:pid``: unique among the front ends of one deployment."""
    return f"{socket.gethostname()}:{os.getpid()}"


def db_now(db: Connection) -> float:
    """The database's clock (seconds since the epoch); on SQLite, which serves one host, this host's."""
    if db.dialect.name == "postgresql":
        return float(db.execute(text("SELECT EXTRACT(EPOCH FROM clock_timestamp())")).scalar_one())
    return time.time()


class SharedJob(ImageJob):
    """A job another front end runs, as its row in the shared table says; cancel, interrupt and skip are requests
    written to that row."""

    board: Team
    requested: str | None = None  # what was asked of it and not yet applied

    def cancel(self) -> None:
        self.board.request(self.id, "cancel")

    def interrupt(self) -> None:
        self.partial = True
        self.board.request(self.id, "interrupt")

    def skip(self) -> None:
        self.board.request(self.id, "skip")

    @property
    def cancelled(self) -> bool:
        return self.state == "cancelled" or self.requested in ("cancel", "interrupt")


def _job_values(job: ImageJob, worker: str) -> dict[str, Any]:
    preview = job.latest_preview
    return {
        "id": job.id, "worker": worker, "owner": job.owner, "state": job.state, "step": job.step,
        "steps": job.params.steps, "n": job.params.n, "prompt": job.params.prompt,
        "seeds": json.dumps(job.seeds), "images": json.dumps(job.images), "infotexts": json.dumps(job.infotexts),
        "error": job.error, "created": job.created, "started": job.started, "finished": job.finished,
        "partial": int(job.partial), "preview": preview[0] if preview else None,
        "preview_step": preview[1] if preview else None}


_FIXED = ("id", "request", "created", "owner", "prompt", "steps", "n")  # set at submission, or by the others
_MIRRORED = [c.name for c in image_jobs.columns if c.name not in _FIXED]


class Team:
    """This front end's membership of the team: its heartbeat, the sweep of dead members, the jobs it mirrors."""

    def __init__(self, db: Database, name: str | None = None, *, heartbeat: float = HEARTBEAT,
                 dead_after: float = DEAD_AFTER) -> None:
        self.db = db
        self.name = name or default_worker_name()
        self.heartbeat, self.dead_after = min(heartbeat, dead_after / 4), dead_after
        self._local: dict[str, tuple[ImageJob, tuple[Any, ...] | None]] = {}  # jobs in flight: last state written
        self._writes = threading.Lock()  # one write of a job at a time: the last written is the latest state
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_seen: float | None = None  # when the heartbeat last reached the database (monotonic)
        self.problem: str | None = None  # why the last heartbeat failed
        # Since when (database clock) every heartbeat has reached the database: only a member that has been there
        # longer than ``dead_after`` may take others for dead (after an outage, everyone's mark is old).
        self._connected_since: float | None = None
        # What the poll thread last read of the other members' jobs, for /progress and /metrics (no query there).
        self._running_elsewhere: SharedJob | None = None
        self._queued_elsewhere = 0

    # --- membership ----------------------------------------------------------------------------------------------

    def start(self, *, threads: bool = True) -> None:
        """Join: mark this name's unfinished work from an earlier life ended, then beat, sweep and mirror in
        threads (``threads=False``: the caller plays their part, as tests do)."""
        with self.db.transaction() as db:
            now = db_now(db)
            upsert(db, workers, {"name": self.name, "started": now, "seen": now}, ["name"], ["started", "seen"])
            # pictures left pending before the team kept jobs (no job to ask): they were in flight, and are not
            legacy = db.execute(update(messages).where(messages.c.image_state == "pending",
                                                       messages.c.image_job.is_(None))
                                .values(image_state="interrupted", image_names="[]")).rowcount
        if legacy:
            log.warning("%d picture(s) pending from before the shared database: marked interrupted", legacy)
        swept = self._end_jobs(image_jobs.c.worker == self.name, f"the front end that ran it restarted ({self.name})")
        if swept:
            log.warning("%d image job(s) of an earlier run of %s were unfinished: marked failed", swept, self.name)
        self.last_seen, self._connected_since = time.monotonic(), now
        if threads:
            self._threads = [threading.Thread(target=self._loop, args=(POLL, self._mirror), name="team-jobs",
                                              daemon=True),
                             threading.Thread(target=self._loop, args=(self.heartbeat, self._heartbeat),
                                              name="team-heartbeat", daemon=True)]
            for thread in self._threads:
                thread.start()
        log.info("joined the team as %s (database %s)", self.name, self.db.label)

    def close(self) -> None:
        """Leave: write the jobs' last states, end those still unfinished, and remove this front end's row."""
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        try:
            self._flush()
            self._end_jobs(image_jobs.c.worker == self.name, f"the front end that ran it stopped ({self.name})")
            with self.db.transaction() as db:
                db.execute(delete(workers).where(workers.c.name == self.name))
        except AipcError as exc:
            log.warning("could not leave the team cleanly: %s", exc.message)

    def healthy(self) -> str | None:
        """Why this front end cannot serve the team now (the database has not answered its heartbeat), or None."""
        if self.last_seen is None or time.monotonic() - self.last_seen <= max(3 * self.heartbeat, 5.0):
            return None
        return self.problem or "the shared database has not answered"

    def _loop(self, every: float, step: Any) -> None:
        while not self._stop.wait(every):
            step()

    def _mirror(self) -> None:
        """Write the progress of this member's jobs, apply what others asked of them, read the others' jobs."""
        try:
            self._flush()
            self._apply_requests()
            self._read_elsewhere()
        except AipcError as exc:
            log.debug("team: %s", exc.message)
        except Exception:
            log.exception("team: mirroring the jobs failed")

    def _heartbeat(self) -> None:
        try:
            self._beat()
            self.last_seen, self.problem = time.monotonic(), None
        except AipcError as exc:
            self.problem, self._connected_since = exc.message, None
            log.warning("team heartbeat failed: %s", exc.message)
        except Exception as exc:
            self.problem, self._connected_since = f"{type(exc).__name__}: {exc}", None
            log.exception("team heartbeat failed")

    def _beat(self) -> None:
        with self.db.transaction() as db:
            now = db_now(db)
            found = db.execute(update(workers).where(workers.c.name == self.name).values(seen=now)).rowcount
            if not found:  # taken for dead while away: join again, and write every job's row afresh
                db.execute(insert(workers).values(name=self.name, started=now, seen=now))
                with self._writes:
                    self._local = {job_id: (job, None) for job_id, (job, _) in self._local.items()}
            if self._connected_since is None:
                self._connected_since = now
            db.execute(delete(image_jobs).where(image_jobs.c.finished < now - KEEP_FINISHED))
            if now - self._connected_since < self.dead_after:  # others may not have had the time to mark
                return
            dead = list(db.execute(select(workers.c.name).where(workers.c.seen < now - self.dead_after)).scalars())
        members = select(workers.c.name)
        orphans = and_(image_jobs.c.worker.not_in(members), image_jobs.c.state.in_(ACTIVE))
        where = or_(image_jobs.c.worker.in_(dead), orphans) if dead else orphans
        swept = self._end_jobs(where, f"the front end that ran it stopped ({', '.join(dead) or 'it left'})")
        self._settle_late(now)
        if dead:
            with self.db.transaction() as db:
                db.execute(delete(workers).where(workers.c.name.in_(dead), workers.c.seen < now - self.dead_after))
            log.warning("front end(s) %s stopped answering: %d unfinished image job(s) marked failed",
                        ", ".join(dead), swept)

    def _end_jobs(self, where: Any, reason: str) -> int:
        """End the unfinished jobs ``where`` says (failed, for ``reason``), and settle the pictures history lists
        as pending for any of those jobs, ended now or before: done if the job was, else interrupted."""
        with self.db.transaction() as db:
            now = db_now(db)
            ended = list(db.execute(update(image_jobs).where(where, image_jobs.c.state.in_(ACTIVE)).values(
                state="failed", error=reason, finished=now).returning(image_jobs.c.id)).scalars())
            theirs = messages.c.image_job.in_(select(image_jobs.c.id).where(where))  # those that had ended too
            _settle(db, or_(messages.c.image_job.in_(ended), theirs) if ended else theirs)
        return len(ended)

    def _settle_late(self, now: float) -> None:
        """Pictures still pending a while after their job ended (the turn's own record of it failed)."""
        with self.db.transaction() as db:
            late = select(image_jobs.c.id).where(image_jobs.c.state.not_in(ACTIVE),
                                                 image_jobs.c.finished < now - self.dead_after)
            _settle(db, messages.c.image_job.in_(late))

    # --- jobs ----------------------------------------------------------------------------------------------------

    def track(self, job: ImageJob) -> None:
        """A job this front end runs (on the event loop, at submission): its row is written before whoever waits
        for it hears it ended, and kept in step until then."""
        self._local[job.id] = (job, None)
        job.when_done(self._ended)

    def announce(self, job: ImageJob) -> None:
        """Write the job's row (a worker thread, right after submission): from now on every front end knows it.
        A database that does not answer cancels the job and raises StoreUnavailable."""
        try:
            self._write(job)
        except AipcError:
            job.cancel()
            raise

    def _ended(self, job: ImageJob) -> None:
        try:
            self._write(job)
        except AipcError as exc:  # the poll thread writes it once the database answers
            log.warning("could not record the end of image job %s: %s", job.id, exc.message)

    def _snapshot(self, job: ImageJob) -> tuple[Any, ...]:
        preview = job.latest_preview
        return (job.state, job.step, len(job.images), job.error, preview[1] if preview else None, job.partial,
                job.finished)

    def _write(self, job: ImageJob, only_if_changed: bool = False) -> None:
        """Write the job's row as it is now; once a row with its end is written, the job is no longer tracked."""
        with self._writes:
            entry = self._local.get(job.id)
            snap = self._snapshot(job)  # read before the values: a row is never newer than what it is kept as
            if only_if_changed and entry is not None and entry[1] == snap:
                return
            values = _job_values(job, self.name)
            with self.db.transaction() as db:
                upsert(db, image_jobs, values, ["id"], _MIRRORED)
            if values["finished"] is not None:
                self._local.pop(job.id, None)
            elif job.id in self._local:
                self._local[job.id] = (job, snap)

    def _flush(self) -> None:
        for job, _ in list(self._local.values()):
            self._write(job, only_if_changed=True)

    def _apply_requests(self) -> None:
        if not self._local:
            return
        with self.db.transaction() as db:  # the rows locked while read and cleared: a request made meanwhile waits
            rows = db.execute(select(image_jobs.c.id, image_jobs.c.request).where(
                image_jobs.c.worker == self.name, image_jobs.c.request.is_not(None)).with_for_update()).all()
            for job_id, request in rows:
                db.execute(update(image_jobs).where(image_jobs.c.id == job_id, image_jobs.c.request == request)
                           .values(request=None))
        for job_id, request in rows:
            entry = self._local.get(job_id)
            if entry is None:
                continue
            job = entry[0]
            log.info("image job %s: %s, as another front end asked", job_id, request)
            if request == "cancel":
                job.cancel()
            elif request == "interrupt":
                job.interrupt()
            elif request == "skip":
                job.skip()

    def _asking(self, what: str) -> Any:
        """A request may replace only a weaker one not yet applied (cancel > interrupt > skip)."""
        return or_(image_jobs.c.request.is_(None), image_jobs.c.request.in_(_WEAKER_OR_SAME[what]))

    def request(self, job_id: str, what: str) -> None:
        """Ask the front end that runs ``job_id`` to cancel, interrupt or skip it."""
        with self.db.transaction() as db:
            db.execute(update(image_jobs).where(image_jobs.c.id == job_id, image_jobs.c.state.in_(ACTIVE),
                                                self._asking(what)).values(request=what))

    def request_running(self, what: str, owner: str | None) -> None:
        """Ask every other front end to interrupt or skip its running job (``owner``'s only, when named)."""
        where = and_(image_jobs.c.state == "running", image_jobs.c.worker != self.name, self._asking(what))
        if owner is not None:
            where = and_(where, image_jobs.c.owner == owner)
        with self.db.transaction() as db:
            db.execute(update(image_jobs).where(where).values(request=what))

    def job(self, job_id: str) -> SharedJob | None:
        """A job of any front end, as its row says (blocking: call it in a worker thread)."""
        with self.db.connect() as db:
            row = db.execute(select(image_jobs).where(image_jobs.c.id == job_id)).first()
        return _view(row, self) if row is not None else None

    def _read_elsewhere(self) -> None:
        with self.db.connect() as db:
            row = db.execute(select(image_jobs).where(image_jobs.c.state == "running",
                                                      image_jobs.c.worker != self.name)
                             .order_by(image_jobs.c.started.desc()).limit(1)).first()
            queued = int(db.execute(select(func.count()).select_from(image_jobs).where(
                image_jobs.c.state == "queued", image_jobs.c.worker != self.name)).scalar_one())
        self._running_elsewhere, self._queued_elsewhere = (_view(row, self) if row is not None else None), queued

    def running(self) -> SharedJob | None:
        """The job another front end started last and is still running, as last read (at most ``POLL`` ago)."""
        return self._running_elsewhere

    def queued_elsewhere(self) -> int:
        """Jobs other front ends have queued, as last read."""
        return self._queued_elsewhere


_WEAKER_OR_SAME = {"skip": ("skip",), "interrupt": ("skip", "interrupt"), "cancel": ("skip", "interrupt", "cancel")}


def _settle(db: Connection, which: Any) -> None:
    """Pending pictures of ended jobs: done (with the job's pictures) where the job was, else interrupted."""
    rows = db.execute(select(messages.c.id, image_jobs.c.state, image_jobs.c.images)
                      .join(image_jobs, image_jobs.c.id == messages.c.image_job)
                      .where(messages.c.image_state == "pending", which)).all()
    for message_id, state, images in rows:
        done = state == "done"
        db.execute(update(messages).where(messages.c.id == message_id, messages.c.image_state == "pending")
                   .values(image_state="done" if done else "interrupted", image_names=images if done else "[]"))


def _view(row: Any, board: Team) -> SharedJob:
    job = SharedJob(ImageParams(prompt=row.prompt, steps=row.steps, n=row.n), owner=row.owner, id=row.id,
                    state=row.state, step=row.step, seeds=json.loads(row.seeds), images=json.loads(row.images),
                    infotexts=json.loads(row.infotexts), error=row.error, created=row.created, started=row.started,
                    finished=row.finished, partial=bool(row.partial), preview=row.preview,
                    preview_step=row.preview_step or 0)
    job.names = list(job.images)
    job.latest_preview = (row.preview, row.preview_step or 0) if row.preview else None
    job.board, job.requested = board, row.request
    return job


class SharedImageEngine:
    """The image engine of a front end in a team: its own engine for what it runs, the shared table for jobs the
    others run (looked up, cancelled, interrupted and skipped through this one)."""

    def __init__(self, inner: ImageEngineClient, team: Team) -> None:
        self.inner = inner
        self.team = team

    def __getattr__(self, name: str) -> Any:  # everything else is the engine's own
        return getattr(self.inner, name)

    def submit(self, params: ImageParams, owner: str | None = None) -> ImageJob:
        """Queue on this front end's engine; ``announce`` (in a worker thread) then makes it known to all."""
        job = self.inner.submit(params, owner)
        self.team.track(job)
        return job

    def announce(self, job: ImageJob) -> None:
        """Write the job's row (blocking: call it in a worker thread)."""
        self.team.announce(job)

    def get_job(self, job_id: str) -> ImageJob | None:
        """This front end's job, or another's from the shared table."""
        return self.inner.get_job(job_id) or self.team.job(job_id)

    @property
    def current(self) -> ImageJob | None:
        """The job rendering here, else the one another front end started last."""
        return self.inner.current or self.team.running()

    @property
    def queue_depth(self) -> int:
        """Jobs waiting here and on the other front ends."""
        return self.inner.queue_depth + self.team.queued_elsewhere()

    def interrupt(self, owner: str | None = None) -> None:
        """Interrupt the running job here and on every other front end (``owner``'s only, when named)."""
        self.inner.interrupt(owner)
        self.team.request_running("interrupt", owner)

    def skip(self, owner: str | None = None) -> None:
        """Skip the current picture here and on every other front end."""
        self.inner.skip(owner)
        self.team.request_running("skip", owner)


class SharedRateLimiter:
    """The token buckets of ``api.ratelimit.RateLimiter``, kept in the shared database: every front end takes
    from the same bucket. Each check is one transaction that locks the user's row."""

    shared = True

    def __init__(self, db: Database, per_minute: int, burst: int | None = None) -> None:
        self.db = db
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, per_minute // 3))

    def check(self, key: str) -> None:
        """Take one token for ``key`` or raise Busy (429) with the seconds until the next one (blocking: call it
        in a worker thread)."""
        with self.db.transaction() as db:
            now = db_now(db)
            upsert(db, rate_limits, {"key": key, "tokens": self.burst, "updated": now}, ["key"], None)
            row = db.execute(select(rate_limits.c.tokens, rate_limits.c.updated)
                             .where(rate_limits.c.key == key).with_for_update()).one()
            now = max(db_now(db), row.updated)  # read again once the row is ours: never a refill backwards
            tokens = min(self.burst, row.tokens + max(0.0, now - row.updated) * self.rate)
            allowed = tokens >= 1
            db.execute(update(rate_limits).where(rate_limits.c.key == key)
                       .values(tokens=tokens - 1 if allowed else tokens, updated=now))
            if random.random() < 0.001:  # now and then, drop buckets long since full again (a bounded table)
                db.execute(delete(rate_limits).where(rate_limits.c.updated < now - self.burst / self.rate - 60))
        if not allowed:
            wait = math.ceil((1 - tokens) / self.rate)
            raise Busy(f"Too many chat turns for this user; retry in {wait} s.", retry_after=wait, status=429)
