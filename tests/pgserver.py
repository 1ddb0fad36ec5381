"""A throwaway PostgreSQL cluster for tests: initdb into a temporary directory, start, create databases, stop.

The server listens on a free loopback port and on a unix socket inside its own directory, so it never
touches a system PostgreSQL. PostgreSQL refuses to run as root: when the tests run as root the cluster is
owned by, and the server runs as, the `postgres` OS user (created by the Debian `postgresql` package).

Usage (the session fixture `postgres_server` in tests/conftest.py does this)::

    server = PostgresServer.start()          # raises PostgresUnavailable when it cannot
    url = server.create_database("node_test")
    ...
    server.stop()
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)

REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
DB_USER = "node"
CLUSTER_PREFIX = "node-pg-"
OWNER_FILE = "owner.pid"  # pid of the test process that started the cluster


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be run here (binaries absent, no `postgres` user when root, ...)."""


class PostgresStartError(RuntimeError):
    """The binaries are there but the server did not come up; the message carries its log."""


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb, pg_ctl and postgres.

    PG_BINDIR in the environment overrides the search (e.g. a self-built server).
    """
    override = os.environ.get("PG_BINDIR")
    candidates = [Path(override)] if override else []
    found = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted((Path(p) for p in found), key=lambda p: _version_key(p.parent.name), reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in REQUIRED_BINARIES):
            return bindir
    where = f"PG_BINDIR={override}" if override else "/usr/lib/postgresql/*/bin"
    raise PostgresUnavailable(
        f"PostgreSQL server binaries ({', '.join(REQUIRED_BINARIES)}) not found under {where}; "
        "install them with `apt-get install postgresql`"
    )


def _version_key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in name.split("."))
    except ValueError:
        return (-1,)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the server binds it moments later; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    password: str
    run_as: str | None
    databases: list[str] = field(default_factory=list)
    _running: bool = False

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    # --- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def start(cls, *, attempts: int = 3, timeout: float = 60.0) -> PostgresServer:
        """initdb + pg_ctl start on a free loopback port. Retries with a new port if one was taken."""
        bindir = find_bindir()
        run_as = _server_user()
        reap_stale_clusters(bindir)
        # The `postgres` user must be able to reach the directory: /tmp, not e.g. a TMPDIR under /root.
        root = Path(tempfile.mkdtemp(prefix=CLUSTER_PREFIX, dir="/tmp" if run_as else None))
        (root / OWNER_FILE).write_text(str(os.getpid()))
        server = cls(bindir=bindir, root=root, port=0, password=secrets.token_urlsafe(16), run_as=run_as)
        try:
            server._initdb()
            last_error: PostgresStartError | None = None
            for _ in range(attempts):
                server.port = free_port()
                try:
                    server._pg_ctl_start(timeout)
                    break
                except PostgresStartError as exc:
                    # Most likely another process took the port between free_port() and bind().
                    last_error = exc
                    logger.warning("PostgreSQL did not start on port %d, retrying: %s", server.port, exc)
            else:
                assert last_error is not None
                raise last_error
        except BaseException:
            server.stop()
            raise
        logger.info("PostgreSQL %s test server on 127.0.0.1:%d (%s)", bindir.parent.name, server.port, root)
        return server

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory. Safe to call twice."""
        if self._running:
            result = self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                                "-t", "60", "stop"], check=False)
            if result.returncode != 0:
                logger.warning("pg_ctl stop failed (%d): %s", result.returncode, result.stdout)
                self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w",
                           "stop"], check=False)
            self._running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server but keep its data (an outage); `resume` starts it again on the same port."""
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60",
                   "stop"], check=True)
        self._running = False

    def resume(self, timeout: float = 60.0) -> None:
        self._pg_ctl_start(timeout)

    # --- databases -------------------------------------------------------------------------------

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of one database on this server, over TCP on 127.0.0.1 with a password."""
        return f"{driver}://{DB_USER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name (must not exist) and return its SQLAlchemy URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be alphanumeric or underscore: {name!r}")
        import psycopg  # test dependency; imported here so that find_bindir() works without it
        from psycopg import sql

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=DB_USER, password=self.password, dbname="postgres",
            autocommit=True, connect_timeout=10,
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.databases.append(name)
        return self.url(name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    # --- internals -------------------------------------------------------------------------------

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        for path in (self.root, pwfile):
            self._chown(path)
        result = self._run([
            str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", DB_USER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C",
            "--no-sync",
        ], check=False)
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise PostgresStartError(f"initdb failed ({result.returncode}):\n{result.stdout}")
        self.socket_dir.mkdir()
        self._chown(self.socket_dir)

    def _pg_ctl_start(self, timeout: float) -> None:
        options = " ".join([
            "-c listen_addresses=127.0.0.1",
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            # A throwaway cluster: durability buys nothing here and costs seconds per test run.
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=100",
            "-c timezone=UTC",
        ])
        started = time.monotonic()
        result = self._run([
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-o", options,
            "-w", "-t", str(int(timeout)), "start",
        ], check=False)
        if result.returncode != 0:
            raise PostgresStartError(
                f"pg_ctl start failed ({result.returncode}) on port {self.port}:\n{result.stdout}\n"
                f"--- server log ---\n{self.log_tail()}"
            )
        self._running = True
        logger.debug("PostgreSQL started in %.2f s", time.monotonic() - started)

    def _chown(self, path: Path) -> None:
        if self.run_as is not None:
            shutil.chown(path, user=self.run_as, group=pwd.getpwnam(self.run_as).pw_gid)

    def _run(self, argv: list[str], *, check: bool) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        return subprocess.run(
            argv, user=self.run_as, env=env, cwd=self.root, check=check, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
        )


def reap_stale_clusters(bindir: Path) -> list[Path]:
    """Stop and delete test clusters whose test process is gone (a run killed before its teardown).

    Only directories this module made (prefix and owner file) are touched. Returns those removed.
    """
    removed: list[Path] = []
    parents = {Path(tempfile.gettempdir()), Path("/tmp")}
    for root in sorted(root for parent in parents for root in parent.glob(f"{CLUSTER_PREFIX}*")):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        datadir = root / "data"
        if (datadir / "postmaster.pid").exists():
            user = pwd.getpwuid(datadir.stat().st_uid).pw_name if os.geteuid() == 0 else None
            subprocess.run([str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                           user=user, cwd="/", capture_output=True, timeout=60, check=False)
        shutil.rmtree(root, ignore_errors=True)
        logger.warning("removed a PostgreSQL test cluster left behind by process %d: %s", owner, root)
        removed.append(root)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _server_user() -> str | None:
    """None to run the server as ourselves; `postgres` when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailable(
            "running as root and there is no `postgres` OS user to own the test cluster "
            "(the Debian `postgresql` package creates it)"
        ) from exc
    return "postgres"
