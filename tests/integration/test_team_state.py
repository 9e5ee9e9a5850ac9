"""The shared state of a team (aipc_chat/team.py) on a real database: two ``Team`` members on one database see each
other's image jobs, steer them, share rate limits, and sweep a member that died. Each runs on SQLite and on a real
PostgreSQL (skipped, saying why, where it cannot start). The members' threads are not started: each step is called
as the thread would, so nothing here waits on a timer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from aipc_chat.db import Database, image_jobs, messages, workers
from aipc_chat.engines.contract import ImageJob, ImageParams
from aipc_chat.errors import Busy
from aipc_chat.team import SharedImageEngine, SharedJob, SharedRateLimiter, Team


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        db = Database.sqlite(tmp_path / "team.sqlite3")
    else:
        db = Database(request.getfixturevalue("database_url"))
    yield db
    db.close()


def member(db: Database, name: str, dead_after: float = 15.0) -> Team:
    team = Team(db, name, dead_after=dead_after)
    team.start(threads=False)  # the test plays the threads' part
    return team


def age(db: Database, name: str, seconds: float) -> None:
    """As if ``name``'s last heartbeat (and its joining) were ``seconds`` older."""
    with db.transaction() as conn:
        conn.execute(update(workers).where(workers.c.name == name)
                     .values(seen=workers.c.seen - seconds, started=workers.c.started - seconds))


def submitted(team: Team, steps: int = 10, owner: str | None = "alice") -> ImageJob:
    job = ImageJob(ImageParams(prompt="a fox", steps=steps), owner=owner, names=["a" * 32])
    team.track(job)
    team.announce(job)
    return job


def test_a_job_is_seen_and_followed_by_the_other_member(database: Database) -> None:
    a, b = member(database, "a"), member(database, "b")
    job = submitted(a)
    seen = b.job(job.id)
    assert isinstance(seen, SharedJob) and seen.state == "queued" and seen.owner == "alice"
    assert seen.params.prompt == "a fox" and seen.total_steps == 10
    job.state, job.started, job.step = "running", job.created, 4
    job.set_preview(b"\x89PNG-preview", 4)
    a._flush()
    seen = b.job(job.id)
    assert seen is not None and seen.state == "running" and seen.step == 4 and seen.progress == 0.4
    assert seen.preview == b"\x89PNG-preview" and seen.preview_step == 4
    b._read_elsewhere()
    running = b.running()
    assert running is not None and running.id == job.id and b.queued_elsewhere() == 0
    a._read_elsewhere()
    assert a.running() is None  # a member's own running job is its engine's to report
    job.images.append("a" * 32)
    job.seeds = [7]
    job.end("done")  # the end is written before whoever waits for the job hears of it
    seen = b.job(job.id)
    assert seen is not None and seen.state == "done" and seen.images == ["a" * 32] and seen.seeds == [7]
    assert seen.as_dict()["progress"] == 1.0
    assert job.id not in a._local


@pytest.mark.parametrize("what", ["cancel", "interrupt", "skip"])
def test_a_request_through_the_other_member_reaches_the_job(database: Database, what: str) -> None:
    a, b = member(database, "a"), member(database, "b")
    job = submitted(a)
    job.state = "running"
    a._flush()
    seen = b.job(job.id)
    assert seen is not None
    getattr(seen, what)()
    assert not job.cancelled and not job.take_skip()  # nothing happens until the member looks
    a._apply_requests()
    if what == "skip":
        assert job.take_skip() and not job.cancelled
    else:
        assert job.cancelled and job.partial == (what == "interrupt")
    with database.connect() as db:  # the request is used up: a second skip can be asked for
        assert db.execute(select(image_jobs.c.request).where(image_jobs.c.id == job.id)).scalar() is None


def test_interrupt_reaches_only_the_owners_running_jobs_elsewhere(database: Database) -> None:
    a, b = member(database, "a"), member(database, "b")
    mine, theirs = submitted(a, owner="alice"), submitted(a, owner="bob")
    for job in (mine, theirs):
        job.state = "running"
    a._flush()

    class Idle:  # b's own engine has nothing running
        def interrupt(self, owner: str | None = None) -> None:
            pass

    SharedImageEngine(Idle(), b).interrupt(owner="alice")  # type: ignore[arg-type]
    a._apply_requests()
    assert mine.cancelled and not theirs.cancelled


def _pending_message(db: Database, job_id: str) -> int:
    with db.transaction() as conn:
        return int(conn.execute(insert(messages).values(
            user_id="u", conversation_id="default", role="assistant", content="here", created=0.0,
            image_names="[]", image_state="pending", image_job=job_id).returning(messages.c.id)).scalar_one())


def _message_state(db: Database, message_id: int) -> tuple[str, list[str]]:
    with db.connect() as conn:
        row = conn.execute(select(messages.c.image_state, messages.c.image_names)
                           .where(messages.c.id == message_id)).one()
    return row.image_state, json.loads(row.image_names)


def test_a_member_unheard_for_too_long_is_swept(database: Database) -> None:
    a, b = member(database, "a"), member(database, "b", dead_after=10.0)
    running, finished = submitted(a), submitted(a)
    running.state = "running"
    finished.images.append("a" * 32)
    finished.end("done")
    a._flush()
    pending_running, pending_done = _pending_message(database, running.id), _pending_message(database, finished.id)
    b._connected_since = (b._connected_since or 0) - 11  # b has been beating longer than dead_after
    b._beat()  # a was seen just now: nothing happens
    assert b.job(running.id).state == "running"  # type: ignore[union-attr]
    age(database, "a", 11)  # a's heartbeat stopped 11 s ago
    b._beat()
    swept = b.job(running.id)
    assert swept is not None and swept.state == "failed" and "stopped (a)" in (swept.error or "")
    assert _message_state(database, pending_running) == ("interrupted", [])
    assert _message_state(database, pending_done) == ("done", ["a" * 32])  # its picture exists: it is shown
    with database.connect() as conn:
        assert list(conn.execute(select(workers.c.name)).scalars()) == ["b"]


def test_a_member_restarted_under_its_name_settles_its_earlier_jobs(database: Database) -> None:
    a = member(database, "a")
    job = submitted(a)
    job.state = "running"
    a._flush()
    message = _pending_message(database, job.id)
    again = member(database, "a")  # the process died and came back before anyone swept it
    seen = again.job(job.id)
    assert seen is not None and seen.state == "failed" and "restarted" in (seen.error or "")
    assert _message_state(database, message) == ("interrupted", [])


def test_a_member_that_was_swept_joins_again_at_its_next_heartbeat(database: Database) -> None:
    a = member(database, "a")
    with database.transaction() as conn:
        conn.execute(workers.delete())
    a._beat()
    with database.connect() as conn:
        assert list(conn.execute(select(workers.c.name)).scalars()) == ["a"]


def test_rate_limits_are_one_bucket_across_members(database: Database) -> None:
    first, second = SharedRateLimiter(database, 6), SharedRateLimiter(database, 6)  # a burst of 2
    first.check("alice")
    second.check("alice")
    with pytest.raises(Busy) as refused:
        first.check("alice")
    assert refused.value.status == 429 and refused.value.retry_after and refused.value.retry_after >= 1
    with pytest.raises(Busy):
        second.check("alice")
    second.check("bob")  # each user has a bucket of their own


def test_a_bucket_refills_with_time(database: Database) -> None:
    limiter = SharedRateLimiter(database, 60, burst=1)  # one a second
    limiter.check("carol")
    with pytest.raises(Busy):
        limiter.check("carol")
    from aipc_chat.db import rate_limits

    with database.transaction() as conn:  # as if two seconds went by
        conn.execute(update(rate_limits).values(updated=rate_limits.c.updated - 2))
    limiter.check("carol")


def test_after_an_outage_no_member_takes_the_others_for_dead(database: Database) -> None:
    a, b = member(database, "a", dead_after=10.0), member(database, "b", dead_after=10.0)
    job = submitted(a)
    job.state = "running"
    a._flush()
    age(database, "a", 30)  # the database was away for 30 s: every mark is old, b's too
    age(database, "b", 30)
    b._connected_since = None  # b's heartbeats failed meanwhile
    b._beat()  # b is back, but has not been back long enough to judge anyone
    assert b.job(job.id).state == "running"  # type: ignore[union-attr]
    a._heartbeat()
    b._connected_since = (b._connected_since or 0) - 11  # both have been back for longer than dead_after
    b._beat()
    assert b.job(job.id).state == "running"  # type: ignore[union-attr]


def test_a_member_taken_for_dead_writes_its_jobs_again(database: Database) -> None:
    a, b = member(database, "a", dead_after=10.0), member(database, "b", dead_after=10.0)
    job = submitted(a)
    job.state, job.step = "running", 3
    a._flush()
    age(database, "a", 11)
    b._connected_since = (b._connected_since or 0) - 11
    b._beat()
    assert b.job(job.id).state == "failed"  # type: ignore[union-attr]
    a._beat()  # a was only slow: it joins again...
    a._flush()  # ...and its job's row says what the job is doing
    seen = b.job(job.id)
    assert seen is not None and seen.state == "running" and seen.step == 3


def test_a_jobs_end_is_written_once_the_database_answers_again(database: Database,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = member(database, "a"), member(database, "b")
    job = submitted(a)
    job.state = "running"
    a._flush()
    real = Database.transaction
    from aipc_chat.errors import StoreUnavailable

    def away(self: Database) -> object:
        raise StoreUnavailable("the database is away")

    monkeypatch.setattr(Database, "transaction", away)
    job.images.append("a" * 32)
    job.end("done")  # its end could not be written
    monkeypatch.setattr(Database, "transaction", real)
    assert b.job(job.id).state == "running"  # type: ignore[union-attr]
    a._flush()
    assert b.job(job.id).state == "done"  # type: ignore[union-attr]
    assert job.id not in a._local


def test_a_stronger_request_is_not_replaced_by_a_weaker_one(database: Database) -> None:
    a, b = member(database, "a"), member(database, "b")
    job = submitted(a)
    job.state = "running"
    a._flush()
    b.request(job.id, "cancel")
    b.request(job.id, "skip")  # asked before a looked: the cancel stands
    a._apply_requests()
    assert job.cancelled and not job.take_skip()


def test_a_member_that_leaves_ends_its_unfinished_jobs(database: Database) -> None:
    a, b = member(database, "a"), member(database, "b")
    job = submitted(a)
    job.state = "running"
    a._flush()
    message = _pending_message(database, job.id)
    a._local.clear()  # its engine could not end the job in time
    a.close()
    seen = b.job(job.id)
    assert seen is not None and seen.state == "failed" and "stopped (a)" in (seen.error or "")
    assert _message_state(database, message) == ("interrupted", [])


def test_a_picture_whose_turn_could_not_record_it_is_settled_later(database: Database) -> None:
    a, b = member(database, "a", dead_after=10.0), member(database, "b", dead_after=10.0)
    job = submitted(a)
    message = _pending_message(database, job.id)
    job.images.append("a" * 32)
    job.end("done")  # the job's row says done, but the turn never recorded it (set_images failed)
    b._connected_since = (b._connected_since or 0) - 11
    b._beat()
    assert _message_state(database, message) == ("pending", [])  # just ended: its turn may still record it
    with database.transaction() as conn:
        conn.execute(update(image_jobs).where(image_jobs.c.id == job.id).values(finished=image_jobs.c.finished - 11))
    b._beat()
    assert _message_state(database, message) == ("done", ["a" * 32])


def test_pictures_pending_from_before_the_team_are_settled_at_start(database: Database) -> None:
    with database.transaction() as conn:
        message = int(conn.execute(insert(messages).values(
            user_id="u", conversation_id="default", role="assistant", content="old", created=0.0,
            image_names="[]", image_state="pending").returning(messages.c.id)).scalar_one())
    member(database, "a")
    assert _message_state(database, message) == ("interrupted", [])


def test_a_job_whose_member_left_without_a_word_is_ended_with_its_picture(database: Database) -> None:
    a, b = member(database, "a", dead_after=10.0), member(database, "b", dead_after=10.0)
    job = submitted(a)
    job.state = "running"
    a._flush()
    message = _pending_message(database, job.id)
    with database.transaction() as conn:  # a's row is gone (removed by hand, or a sweep that raced its join)
        conn.execute(workers.delete().where(workers.c.name == "a"))
    b._connected_since = (b._connected_since or 0) - 11
    b._beat()
    assert b.job(job.id).state == "failed"  # type: ignore[union-attr]
    assert _message_state(database, message) == ("interrupted", [])
