"""The database behind history, shared image jobs and shared rate limits: SQLite (a file in the data folder, the
default) or PostgreSQL (``AIPC_DATABASE_URL``), both through SQLAlchemy Core.

One schema and one list of migrations serves both. Migrations run at start in one transaction per step on SQLite
(``BEGIN IMMEDIATE``; the version is ``PRAGMA user_version``, as before SQLAlchemy) and in one transaction under an
advisory lock on PostgreSQL (the version is the ``aipc_schema`` table), so any number of workers may start together:
the first applies them, the others wait and find them applied.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from aipc_chat.errors import StartupError, StorageError, StoreUnavailable

log = logging.getLogger(__name__)

metadata = MetaData()

# The schema as the migrations leave it (queries are built from these; the migrations below create them).
conversations = Table(
    "conversations", metadata,
    Column("user_id", Text, primary_key=True), Column("id", Text, primary_key=True),
    Column("title", Text, nullable=False), Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False))
messages = Table(
    "messages", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True), Column("user_id", Text, nullable=False),
    Column("conversation_id", Text, nullable=False), Column("role", Text, nullable=False),
    Column("content", Text, nullable=False), Column("reasoning", Text), Column("image_urls", Text),
    Column("image_prompt", Text), Column("created", Float, nullable=False), Column("image_names", Text),
    Column("image_state", Text), Column("image_job", Text))
image_jobs = Table(  # every front end's image jobs, so any of them answers for any job
    "image_jobs", metadata,
    Column("id", Text, primary_key=True), Column("worker", Text, nullable=False), Column("owner", Text),
    Column("state", Text, nullable=False), Column("step", Integer, nullable=False),
    Column("steps", Integer, nullable=False), Column("n", Integer, nullable=False),
    Column("prompt", Text, nullable=False), Column("seeds", Text, nullable=False),
    Column("images", Text, nullable=False), Column("infotexts", Text, nullable=False), Column("error", Text),
    Column("created", Float, nullable=False), Column("started", Float), Column("finished", Float),
    Column("partial", Integer, nullable=False), Column("preview", LargeBinary), Column("preview_step", Integer),
    Column("request", Text))  # what another front end asked of it: cancel | interrupt | skip
rate_limits = Table(  # token buckets: tokens left at ``updated`` (wall clock, seconds)
    "rate_limits", metadata,
    Column("key", Text, primary_key=True), Column("tokens", Float, nullable=False),
    Column("updated", Float, nullable=False))
workers = Table(  # the front ends and when each was last seen (a heartbeat)
    "workers", metadata,
    Column("name", Text, primary_key=True), Column("started", Float, nullable=False),
    Column("seen", Float, nullable=False))

Migration = Callable[[Connection, "Dialect"], None]


class Dialect:
    """The few words the two databases spell differently."""

    def __init__(self, name: str) -> None:
        self.name = name
        postgres = name == "postgresql"
        self.serial = "BIGSERIAL PRIMARY KEY" if postgres else "INTEGER PRIMARY KEY AUTOINCREMENT"
        self.real = "DOUBLE PRECISION" if postgres else "REAL"
        self.blob = "BYTEA" if postgres else "BLOB"


def _run(db: Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.exec_driver_sql(statement)


def _m1_initial(db: Connection, d: Dialect) -> None:
    _run(db, f"""
        CREATE TABLE conversations (
            user_id TEXT NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL DEFAULT '',
            created {d.real} NOT NULL, updated {d.real} NOT NULL, PRIMARY KEY (user_id, id));
        CREATE TABLE messages (
            id {d.serial}, user_id TEXT NOT NULL, conversation_id TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), content TEXT NOT NULL,
            reasoning TEXT, image_urls TEXT, image_prompt TEXT, created {d.real} NOT NULL);
        CREATE INDEX messages_by_conversation ON messages (user_id, conversation_id, id);
    """)


def _m2_image_names(db: Connection, d: Dialect) -> None:
    """Store image names, not URL paths: the HTTP layer makes URLs (``/images/NAME.png`` -> ``NAME``)."""
    import json

    db.exec_driver_sql("ALTER TABLE messages ADD COLUMN image_names TEXT")
    rows = db.execute(text("SELECT id, image_urls FROM messages WHERE image_urls IS NOT NULL")).fetchall()
    for message_id, urls in rows:
        names = [u.rsplit("/", 1)[-1].removesuffix(".png") for u in json.loads(urls) or []]
        db.execute(text("UPDATE messages SET image_names = :names WHERE id = :id"),
                   {"names": json.dumps(names), "id": message_id})


def _m3_image_state(db: Connection, d: Dialect) -> None:
    """How an answer's picture stands (pending, done, failed, cancelled, interrupted), so history never lists a
    picture that does not exist."""
    db.exec_driver_sql("ALTER TABLE messages ADD COLUMN image_state TEXT")
    db.exec_driver_sql("UPDATE messages SET image_state = 'done' "
                       "WHERE image_names IS NOT NULL AND image_names != '[]'")


def _m4_shared_state(db: Connection, d: Dialect) -> None:
    """What several front ends share: image jobs, rate-limit buckets, the workers' heartbeats; and which job makes
    a message's picture (so a picture left pending by a worker that died is marked interrupted)."""
    _run(db, f"""
        ALTER TABLE messages ADD COLUMN image_job TEXT;
        CREATE TABLE image_jobs (
            id TEXT PRIMARY KEY, worker TEXT NOT NULL, owner TEXT, state TEXT NOT NULL,
            step INTEGER NOT NULL DEFAULT 0, steps INTEGER NOT NULL, n INTEGER NOT NULL, prompt TEXT NOT NULL,
            seeds TEXT NOT NULL DEFAULT '[]', images TEXT NOT NULL DEFAULT '[]', infotexts TEXT NOT NULL DEFAULT '[]',
            error TEXT, created {d.real} NOT NULL, started {d.real}, finished {d.real},
            partial INTEGER NOT NULL DEFAULT 0, preview {d.blob}, preview_step INTEGER, request TEXT);
        CREATE INDEX image_jobs_by_worker ON image_jobs (worker, state);
        CREATE INDEX image_jobs_by_created ON image_jobs (created);
        CREATE TABLE rate_limits (key TEXT PRIMARY KEY, tokens {d.real} NOT NULL, updated {d.real} NOT NULL);
        CREATE TABLE workers (name TEXT PRIMARY KEY, started {d.real} NOT NULL, seen {d.real} NOT NULL);
        CREATE INDEX messages_pending ON messages (image_job) WHERE image_state = 'pending'
    """)


# Append-only: each function moves the schema one version on.
MIGRATIONS: list[Migration] = [_m1_initial, _m2_image_names, _m3_image_state, _m4_shared_state]

# A server that stops answering (not only one that refuses) must give 503s, not hang a request or a thread: every
# statement and lock wait is bounded, and TCP notices a peer that went silent.
POSTGRES_CONNECT = {
    "connect_timeout": 5, "tcp_user_timeout": 10_000, "keepalives": 1, "keepalives_idle": 10,
    "keepalives_interval": 5, "keepalives_count": 3,
    "options": "-c statement_timeout=15000 -c lock_timeout=15000 -c idle_in_transaction_session_timeout=60000"}

_ADVISORY_LOCK = 0x61697063  # "aipc": the one lock every worker's migration takes on PostgreSQL


def redact(url: str) -> str:
    """The URL with its password hidden (for logs and messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the database URL"


def driver_url(url: str) -> URL:
    """The URL as SQLAlchemy takes it: PostgreSQL through psycopg 3 (``postgresql://`` names no driver)."""
    parsed = make_url(url)
    postgres = parsed.get_backend_name() in ("postgresql", "postgres")
    return parsed.set(drivername="postgresql+psycopg") if postgres else parsed


def upsert(db: Connection, table: Table, values: dict[str, Any], keys: list[str],
           update_cols: list[str] | None) -> None:
    """INSERT, or on a key conflict UPDATE ``update_cols`` (None: do nothing), in either dialect."""
    stmt = (postgresql.insert if db.dialect.name == "postgresql" else sqlite.insert)(table).values(**values)
    if update_cols is None:
        db.execute(stmt.on_conflict_do_nothing(index_elements=keys))
    else:
        db.execute(stmt.on_conflict_do_update(index_elements=keys,
                                              set_={c: stmt.excluded[c] for c in update_cols}))


STALL_SECONDS = 20.0  # a step the server has not answered in this long is past its own 15 s bounds: it froze


class StallWatch:
    """Ends calls to a PostgreSQL server that stopped answering without closing the connection: frozen (``docker
    pause``, a stopped process, a host swapping to death) or behind a stuck proxy. Such a server takes the query and
    never replies, which its ``statement_timeout`` cannot end (it never runs the query) and TCP keepalives cannot
    notice (its kernel still acknowledges). A call whose current step (checking a connection out, a statement, a
    commit) has waited ``limit`` seconds gets every connection to the server shut down under it: that call and any
    other waiting fail (StoreUnavailable, 503) and the next ones connect afresh (within ``connect_timeout``)."""

    def __init__(self, engine: Engine, label: str, limit: float = STALL_SECONDS) -> None:
        self.label, self.limit = label, limit
        self.stalls = 0  # how many times the watch cut the connections
        self._steps: dict[int, float] = {}  # thread id -> when its call's current step began
        self._depth: dict[int, int] = {}  # thread id -> calls it is in (a call inside a call is one)
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()  # every open DBAPI connection
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        event.listen(engine, "connect", self.connected)
        for name in ("checkout", "before_cursor_execute", "commit", "rollback"):  # checkout: after the pre-ping
            event.listen(engine, name, lambda *_, **__: self.step())

    def connected(self, dbapi_connection: Any, _record: Any = None) -> None:
        """A new connection to the server (the pool's ``connect`` event): one to cut in a stall."""
        with self._lock:
            self._conns.add(dbapi_connection)

    @contextmanager
    def call(self) -> Iterator[None]:
        """Watch the calling thread's steps while the block runs."""
        me = threading.get_ident()
        with self._lock:
            self._depth[me] = self._depth.get(me, 0) + 1
            self._steps[me] = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-stall-watch", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._depth[me] -= 1
                if not self._depth[me]:
                    del self._depth[me], self._steps[me]

    def step(self) -> None:
        """A new step of the calling thread's call begins (a thread not in a watched call is left alone)."""
        me = threading.get_ident()
        with self._lock:
            if me in self._steps:
                self._steps[me] = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.limit / 4)):
            try:
                self._look()
            except Exception:  # a bug of ours must not end the watch
                log.exception("the database stall watch failed")

    def _look(self) -> None:
        now = time.monotonic()
        with self._lock:
            stalled = any(now - began >= self.limit for began in self._steps.values())
            if not stalled:
                return
            self._steps = dict.fromkeys(self._steps, now)  # one cut per stall
            conns = list(self._conns)
        self.stalls += 1
        log.error("the database (%s) has not answered for %g s: its connections are cut", self.label, self.limit)
        for conn in conns:
            _shut_down(conn)

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()


def _shut_down(dbapi_connection: Any) -> None:
    """Shut the connection's socket down (not close it: the driver still owns the descriptor), so a read waiting
    on it ends at once with an error."""
    try:
        fd = dbapi_connection.pgconn.socket
        sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a duplicate of the descriptor
    except Exception:  # closed meanwhile, or a platform without fromfd: nothing to cut
        return
    with sock:
        try:  # still open with that number after the duplicate was made: the duplicate is this connection's socket
            # (a closed connection never opens again), not another's that took the number meanwhile
            ours = not dbapi_connection.closed and dbapi_connection.pgconn.socket == fd
        except Exception:
            ours = False
        if ours:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Database:
    """A SQLAlchemy engine over SQLite or PostgreSQL, with the schema migrated, and errors made clients' errors."""

    def __init__(self, url: str, *, label: str | None = None, stall_after: float = STALL_SECONDS) -> None:
        parsed = driver_url(url)
        self.dialect = Dialect("postgresql" if parsed.get_backend_name() == "postgresql" else "sqlite")
        self.label = label or redact(url)
        # the SQLite file (None for PostgreSQL or an in-memory database): its folder is what a full disk names
        self.path: Path | None = None
        if self.dialect.name == "postgresql":
            self.engine: Engine = create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=16,
                                                pool_timeout=10, connect_args=POSTGRES_CONNECT)
            self._watch: StallWatch | None = StallWatch(self.engine, self.label, stall_after)
        else:
            self._watch = None  # a local file: no server to freeze
            if parsed.database and parsed.database != ":memory:":
                self.path = Path(parsed.database)
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 10},
                                        pool_size=4, max_overflow=8)
            _sqlite_settings(self.engine)
        self.migrate()

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        """The default: a SQLite file."""
        return cls(f"sqlite:///{path}", label=str(path))

    @property
    def schema_version(self) -> int:
        """The migrations applied."""
        with self.transaction() as db:
            return self._version(db)

    def _version(self, db: Connection) -> int:
        if self.dialect.name == "sqlite":
            return int(db.exec_driver_sql("PRAGMA user_version").scalar_one())
        db.exec_driver_sql("CREATE TABLE IF NOT EXISTS aipc_schema (version INTEGER NOT NULL)")
        found = db.exec_driver_sql("SELECT version FROM aipc_schema").scalar()
        return int(found or 0)

    def migrate(self) -> None:
        """Apply the migrations not yet applied (once, however many workers start together)."""
        try:
            if self.dialect.name == "sqlite":
                self._migrate_sqlite()
            else:
                self._migrate_postgres()
        except OperationalError as exc:  # SQLite: a folder it cannot write; PostgreSQL: a server that does not answer
            raise self._error(exc) from None
        except DBAPIError as exc:  # the server answered no (a user without the right to create tables, ...)
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
            raise StartupError(f"The database ({self.label}) refused the schema's set-up: {reason}") from None

    def _migrate_sqlite(self) -> None:
        while True:
            with self.engine.begin() as db:  # BEGIN IMMEDIATE: one writer at a time
                version = self._version(db)
                if version >= len(MIGRATIONS):
                    return
                MIGRATIONS[version](db, self.dialect)
                db.exec_driver_sql(f"PRAGMA user_version={version + 1}")
                log.info("history schema migrated to version %d", version + 1)

    def _migrate_postgres(self) -> None:
        with self.engine.begin() as db:  # DDL is transactional here: all the steps, or none of them
            db.exec_driver_sql("SET LOCAL lock_timeout = 0")  # another worker's migration: wait for it, however
            db.exec_driver_sql("SET LOCAL statement_timeout = 0")  # long (and a big table's may take long)
            db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
            version = self._version(db)
            for number in range(version, len(MIGRATIONS)):
                MIGRATIONS[number](db, self.dialect)
                log.info("database schema migrated to version %d", number + 1)
            if version < len(MIGRATIONS):
                db.exec_driver_sql("DELETE FROM aipc_schema")
                db.execute(text("INSERT INTO aipc_schema (version) VALUES (:v)"), {"v": len(MIGRATIONS)})

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The client's error for a database that does not answer."""
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StoreUnavailable(f"The database ({self.label}) cannot be reached now ({reason}); retry shortly. "
                                "What is already stored is kept.")

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (each statement its own transaction)."""
        try:
            with self._watched(), self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
                yield db
        except OperationalError as exc:
            raise self._error(exc) from None
        except PoolTimeout as exc:  # every pooled connection is stuck on a server that stopped answering
            raise self.unavailable(exc) from None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises. A write the disk refuses is a
        StorageError; a database that does not answer is StoreUnavailable (503)."""
        try:
            with self._watched(), self.engine.begin() as db:
                yield db
        except OperationalError as exc:
            raise self._error(exc) from None
        except PoolTimeout as exc:  # every pooled connection is stuck on a server that stopped answering
            raise self.unavailable(exc) from None

    def _watched(self) -> contextlib.AbstractContextManager[None]:
        return self._watch.call() if self._watch is not None else contextlib.nullcontext()

    def _error(self, exc: DBAPIError) -> StorageError | StoreUnavailable:
        if self.dialect.name == "sqlite":
            folder = self.path.parent if self.path is not None else Path(".")
            return StorageError(f"The conversation history could not be saved ({exc.orig}): free some disk space "
                                f"or check that {folder} is writable. What is already stored is kept.")
        return self.unavailable(exc)

    def close(self) -> None:
        """Close every pooled connection."""
        if self._watch is not None:
            self._watch.close()
        self.engine.dispose()


def _sqlite_settings(engine: Engine) -> None:
    """WAL, full sync (laptops lose power: a stored turn must survive it), and transactions that take the write
    lock at once (``BEGIN IMMEDIATE``), with the driver's own transaction handling off."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":  # reads take no lock
            conn.exec_driver_sql("BEGIN IMMEDIATE")
