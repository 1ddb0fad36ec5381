"""receive.min_free_disk_bytes: below the floor every store gets 0xA700 before anything is written (an
audit row each, the association goes on), and stores are accepted again as soon as space returns.

The free space the spool's file system reports is replaced by a value the test sets (filling a real disk
is not possible here); the check, the status, the audit row and the spool are the node's own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.models import AuditEvent, Instance
from node.receive.spool import Spool
from tests.nodeutil import make_settings, running_node, scu, synthetic_ct

MiB = 2**20


def test_stores_are_refused_below_the_floor_and_accepted_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"bytes": 50 * MiB}
    monkeypatch.setattr(Spool, "free_bytes", lambda self: free["bytes"])
    settings = make_settings(tmp_path, receive={"min_free_disk_bytes": 100 * MiB})
    series_uid = generate_uid()
    with running_node(settings) as node:
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        try:
            refused = assoc.send_c_store(synthetic_ct(series_uid, number=1))
            assert int(refused.Status) == 0xA700
            assert "below receive.min_free_disk_bytes" in str(refused.ErrorComment)
            assert int(assoc.send_c_echo().Status) == 0x0000  # the association goes on
            free["bytes"] = 500 * MiB  # space returns
            assert int(assoc.send_c_store(synthetic_ct(series_uid, number=2)).Status) == 0x0000
        finally:
            assoc.release()
        with node.sessions() as session:
            rows = session.scalars(select(Instance.instance_number)).all()
            (rejected,) = session.scalars(select(AuditEvent).where(AuditEvent.event == "instance.rejected"))
        assert rows == [2]
        assert rejected.details["status"] == 0xA700 and "50 MiB free" in rejected.message
        # Nothing of the refused instance was written: one file in the spool, none left in staging.
        assert len(list(node.spool.instances_dir.rglob("*.dcm"))) == 1
        assert not list(node.spool.tmp_dir.iterdir())


def test_free_bytes_is_what_the_file_system_reports(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    try:
        stats = os.statvfs(tmp_path)
        assert abs(spool.free_bytes() - stats.f_bavail * stats.f_frsize) < 64 * MiB
    finally:
        spool.close()
