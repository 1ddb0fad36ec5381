"""SQLite locked by another process, or read-only: a store gets 0xA700 (nothing spooled; its audit row
cannot be written either, the WARNING log line says it), and stores again on the same association as
soon as the lock is released or the database is writable again. Locked: a store waits
receive.database_wait_seconds for the write lock first."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from node.db.models import Instance
from tests.nodeutil import make_settings, running_node, scu, synthetic_ct


def test_a_store_while_the_database_is_locked_gets_a700_then_succeeds(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, receive={"database_wait_seconds": 0.5})
    with running_node(settings) as node:
        database = settings.data_dir / "node.db"
        assert database.is_file()
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        try:
            assert int(assoc.send_c_store(synthetic_ct(number=1)).Status) == 0x0000
            locker = sqlite3.connect(database, timeout=5, isolation_level=None)
            try:
                locker.execute("BEGIN EXCLUSIVE")  # another process's long write transaction
                refused = assoc.send_c_store(synthetic_ct(number=2))
                assert int(refused.Status) == 0xA700
                assert "database error" in str(refused.ErrorComment)
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            assert int(assoc.send_c_store(synthetic_ct(number=3)).Status) == 0x0000
        finally:
            assoc.release()
        with node.sessions() as session:
            numbers = session.scalars(select(Instance.instance_number).order_by(Instance.id)).all()
            assert session.scalar(select(func.count()).select_from(Instance)) == 2
        assert numbers == [1, 3]
        assert len(list(node.spool.instances_dir.rglob("*.dcm"))) == 2
        assert not list(node.spool.tmp_dir.iterdir())


def test_a_store_while_the_database_is_read_only_gets_a700_then_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Read-only through SQLite's own switch (PRAGMA query_only on every connection the node checks out):
    SQLITE_READONLY, the error a read-only file or file system gives. (As root, file modes do not stop
    writes, and a file system cannot be remounted read-only while the node holds the database open.)"""
    settings = make_settings(tmp_path)
    read_only = {"on": False}

    def switch(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.execute(f"PRAGMA query_only={1 if read_only['on'] else 0}")

    with running_node(settings) as node:
        engines = {node.sessions.kw["bind"], node.ingest._sessions.kw["bind"]}
        for engine in engines:
            event.listen(engine, "checkout", switch)
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        try:
            assert int(assoc.send_c_store(synthetic_ct(number=1)).Status) == 0x0000
            read_only["on"] = True
            refused = assoc.send_c_store(synthetic_ct(number=2))
            assert int(refused.Status) == 0xA700
            assert "database error" in str(refused.ErrorComment)
            alive, detail = node.liveness()
            assert alive, detail
            read_only["on"] = False
            assert int(assoc.send_c_store(synthetic_ct(number=3)).Status) == 0x0000
        finally:
            assoc.release()
            for engine in engines:
                event.remove(engine, "checkout", switch)
        with node.sessions() as session:
            numbers = session.scalars(select(Instance.instance_number).order_by(Instance.id)).all()
        assert numbers == [1, 3]
        assert len(list(node.spool.instances_dir.rglob("*.dcm"))) == 2
        assert not list(node.spool.tmp_dir.iterdir())
        assert any(
            "readonly database" in r.getMessage() or "rejected (0xA700)" in r.getMessage()
            for r in caplog.records
        )
