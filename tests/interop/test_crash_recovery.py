"""kill -9 during a transfer and during forwarding: nothing acknowledged is lost, the series completes
once, and every instance reaches the destination at least once."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pynetdicom import _config
from sqlalchemy import func, select

from node.config import Settings
from node.db.models import AuditEvent, Instance, Job, JobState, Series
from node.db.session import make_engine, make_session_factory
from node.pynetdicom_tuning import CONN_OPEN_HANDLERS
from tests.interop.e2e import pixels_by_sop, storescu, write_rules
from tests.nodeutil import NodeProcess, node_process_settings, scu, wait_for
from tests.peers import ct_files, free_port, run_storescp

pytestmark = pytest.mark.interop

SERIES = "itkelastix_chest"
KILL_AFTER = 40


def _send_until_killed(node: NodeProcess, files: list[Path], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Send one by one; kill -9 the node after KILL_AFTER acknowledgements. Returns acknowledged UIDs."""
    # Send the files' bytes as they are (pydicom cannot re-encode a private element of these files).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = scu("CRASHSCU")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS)
    assert assoc.is_established
    acknowledged: list[str] = []
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        status = assoc.send_c_store(f) if assoc.is_established else None
        if status is not None and status.get("Status") == 0x0000:
            acknowledged.append(uid)
        if len(acknowledged) == KILL_AFTER:
            node.kill9()
        if node.process is not None and node.process.poll() is not None and not assoc.is_established:
            break
    assoc.release()
    return acknowledged


def test_kill9_loses_no_acknowledged_instance_and_completes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = ct_files(SERIES)
    source_pixels = pixels_by_sop(files)
    with run_storescp(tmp_path / "storescp") as scp:
        rules = write_rules(
            tmp_path / "rules.yaml",
            {
                "archive": {"ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port},
            },
        )
        # The quiet time must outlast a restart plus the start of the resend: with 2 s on a loaded machine
        # the re-armed timer sometimes completed the partial series first, and the resend then (rightly)
        # became a follow-up generation with a second completion.
        settings = node_process_settings(tmp_path, free_port(), rules, completion={"quiet_seconds": 8.0})
        node = NodeProcess(tmp_path, settings).start()
        try:
            acknowledged = _send_until_killed(node, files, monkeypatch)
            assert len(acknowledged) >= KILL_AFTER

            # Every acknowledged instance is in the database and on disk, with its pixel data.
            sessions = make_session_factory(
                make_engine(Settings.model_validate(settings).resolved_database_url)
            )
            spool = Path(settings["data_dir"]) / "spool" / "instances"
            with sessions() as session:
                rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
            assert set(acknowledged) <= set(rows)
            for uid in acknowledged:
                stored = pydicom.dcmread(spool / rows[uid].path)
                assert bytes(stored.PixelData) == source_pixels[uid]

            # Restart; the sender sends the whole series again, as a sender does after a failure.
            node.start()
            storescu(node.port, files, calling_ae="CRASHSCU")  # the same sender (docs/receiving.md)
            wait_for(lambda: _delivery_state(sessions) is not None, timeout=60, what="a delivery job")
            # Crash again while (or right after) forwarding: the delivery must still complete.
            node.kill9()
            node.start()
            wait_for(
                lambda: _delivery_state(sessions) == JobState.DONE, timeout=120, what="delivery after restart"
            )

            with sessions() as session:
                completions = session.scalar(
                    select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "series.complete")
                )
                series_count = session.scalar(select(func.count()).select_from(Series))
                instances = session.scalar(select(func.count()).select_from(Instance))
            assert series_count == 1 and completions == 1
            assert instances == len(files)
        finally:
            node.stop()
        assert pixels_by_sop(scp.files()) == source_pixels


def _delivery_state(sessions) -> str | None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return session.scalar(select(Job.state).where(Job.kind == "deliver"))
