"""Engine and session factory; SQLite tuned for a durable single-node spool, PostgreSQL as is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker


def display_url(url: str) -> str:
    """The URL as messages show it: the password hidden (postgresql+psycopg://node:***@db/node)."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


_RELAXED = "node.commit_without_fsync"
# Set on every connection of an engine made with relaxed_commits=True: always synchronous=NORMAL.
_ALWAYS_RELAXED = "node.relaxed_engine"


def commit_without_fsync(connection: Connection) -> None:
    """SQLite: this connection's next commits are written to the WAL without an fsync (synchronous=
    NORMAL: they survive a crash of the process, not necessarily a power loss) until it goes back to the
    pool, where FULL is restored. Only for a transaction whose loss at power failure is repaired at start
    (the receive path: its files are durable first and node.receive.reconcile rebuilds lost rows).
    PostgreSQL: nothing changes, its commit stays durable. Call before the transaction's first statement."""
    if connection.dialect.name != "sqlite" or connection.info.get(_ALWAYS_RELAXED):
        return
    # pysqlite opens the database transaction only at the first DML statement: this PRAGMA runs before.
    connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
    connection.info[_RELAXED] = True


def make_engine(url: str, *, relaxed_commits: bool = False, busy_timeout_seconds: float = 30.0) -> Engine:
    """relaxed_commits (SQLite only): every connection commits with synchronous=NORMAL, so that
    commit_without_fsync costs nothing: the receive path's own engine (receive_session_factory)."""
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": busy_timeout_seconds}
        engine = create_engine(url, connect_args=connect_args)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit fsync'd (power-loss durable). The receive path relaxes its own
            # connection to NORMAL for its transaction (commit_without_fsync).
            cur.execute("PRAGMA synchronous=NORMAL" if relaxed_commits else "PRAGMA synchronous=FULL")
            _record.info[_ALWAYS_RELAXED] = relaxed_commits
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_seconds * 1000)}")
            cur.close()

        @event.listens_for(engine, "checkin")
        def _restore_full_sync(dbapi_conn: Any, record: Any) -> None:
            if record.info.pop(_RELAXED, False):
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA synchronous=FULL")
                cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def receive_session_factory(
    url: str, sessions: sessionmaker[Session], busy_timeout_seconds: float = 30.0
) -> sessionmaker[Session]:
    """The sessions of the receive path (Ingest). SQLite: a second engine on the same file whose
    connections always commit without fsync, which is what commit_without_fsync asks for on every
    receive transaction (two PRAGMAs per instance saved: about 0.3 ms). Otherwise `sessions`."""
    if sqlite_path(url) is None:
        return sessions
    # busy_timeout_seconds: how long a store waits for SQLite's write lock before it answers 0xA700.
    return make_session_factory(
        make_engine(url, relaxed_commits=True, busy_timeout_seconds=busy_timeout_seconds)
    )
