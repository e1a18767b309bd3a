"""A project-local PostgreSQL + TimescaleDB cluster (initdb / pg_ctl with the system binaries).

Used as the default database when DATABASE_URL is unset (`python -m app db start`, called by
`make run`) and by the test suite for its throwaway clusters. It never touches the machine's own
PostgreSQL service. PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path


class EmbeddedPgError(RuntimeError):
    pass


def pg_bindir() -> Path:
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise EmbeddedPgError("PostgreSQL server binaries not found: run `scripts/setup.sh`")


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except (ValueError, IndexError):
        return 0


def _run_as() -> str | None:
    """The user the server must run as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise EmbeddedPgError("running as root needs the `postgres` system user") from None
    return "postgres"


def _cmd(args: list[str]) -> list[str]:
    user = _run_as()
    return ["runuser", "-u", user, "--", *args] if user else args


class Cluster:
    """One cluster in `datadir`, listening on 127.0.0.1:`port` and a socket inside datadir."""

    def __init__(self, datadir: str | os.PathLike[str], port: int) -> None:
        self.datadir = Path(datadir).resolve()
        self.port = port
        self.bindir = pg_bindir()

    @property
    def socket_dir(self) -> Path:
        return self.datadir

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def running(self) -> bool:
        rc = subprocess.run(_cmd([str(self.bindir / "pg_ctl"), "status", "-D", str(self.datadir)]),
                            capture_output=True).returncode
        return rc == 0

    def init(self) -> None:
        if self.initialized():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        if user:
            shutil.chown(self.datadir, user=user)
            self.datadir.chmod(0o700)
            reach = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(self.datadir)])
            if reach.returncode != 0:
                raise EmbeddedPgError(f"the `{user}` user cannot reach {self.datadir}; set DATA_DIR to a "
                                      "directory outside private home folders (e.g. /var/lib/wealth-terminal)")
        out = subprocess.run(
            _cmd([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]),
            capture_output=True, text=True)
        if out.returncode != 0:
            raise EmbeddedPgError(f"initdb failed: {out.stderr.strip()[-500:]}")
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(
                "shared_preload_libraries = 'timescaledb'\n"
                "timescaledb.telemetry_level = off\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 200\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
            )

    def start(self, timeout: float = 30.0) -> None:
        self.init()
        if self.running():
            return
        log = self.datadir / "server.log"
        out = subprocess.run(
            _cmd([str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)), "-D", str(self.datadir),
                  "-l", str(log), "-o", f"-p {self.port}"]),
            capture_output=True, text=True)
        if out.returncode != 0:
            tail = log.read_text()[-1500:] if log.exists() else out.stderr
            raise EmbeddedPgError(f"could not start PostgreSQL in {self.datadir}: {tail.strip()}")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                                 "-U", "postgres"], capture_output=True).returncode
            if rc == 0:
                return
            time.sleep(0.1)
        raise EmbeddedPgError(f"PostgreSQL on port {self.port} did not become ready")

    def stop(self, mode: str = "fast") -> None:
        if not self.initialized() or not self.running():
            return
        subprocess.run(_cmd([str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.datadir)]),
                       capture_output=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> None:
        out = subprocess.run([str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
                             capture_output=True, text=True)
        if out.stdout.strip() == "1":
            return
        out = subprocess.run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                              "-U", "postgres", name], capture_output=True, text=True)
        if out.returncode != 0:
            raise EmbeddedPgError(f"createdb {name} failed: {out.stderr.strip()}")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
