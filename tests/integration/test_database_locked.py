"""SQLite locked by another process: a store waits receive.database_wait_seconds for the write lock, then
gets 0xA700 (nothing spooled; its audit row cannot be written either, the WARNING log line says it), and
stores again on the same association as soon as the lock is released."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import func, select

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
