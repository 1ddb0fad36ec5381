"""A replacement (same SOP Instance UID, other bytes) from another sender, over real associations:
refused with 0x0124 by default, quarantined or allowed by configuration, always audited with both senders."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select

from node.db.models import AuditEvent, Instance, Series, SeriesState
from node.pynetdicom_tuning import CONN_OPEN_HANDLERS
from node.receive.ingest import REPLACEMENT_REFUSED
from node.receive.senders import STATUS_NOT_AUTHORIZED
from tests.nodeutil import make_settings, running_node, scu, store, synthetic_ct, wait_for


def _send(port: int, ds: Dataset, ae_title: str, bind_host: str = "127.0.0.1") -> Dataset:
    """One C-STORE from `ae_title`, connecting from `bind_host`; the response's status data set."""
    assoc = scu(ae_title).associate(
        "127.0.0.1", port, ae_title="NODE", bind_address=(bind_host, 0), evt_handlers=CONN_OPEN_HANDLERS
    )
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def _changed(ds: Dataset) -> Dataset:
    """The same SOP Instance UID with other bytes."""
    other = synthetic_ct(ds.SeriesInstanceUID, ds.StudyInstanceUID, number=2)
    other.SOPInstanceUID = ds.SOPInstanceUID
    other.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    other.SeriesDescription = "CHEST WO stamped elsewhere"
    return other


def _events(node, name: str) -> list[AuditEvent]:
    with node.sessions() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id))
        )


def _stored_description(node, sop_uid: str) -> str:
    with node.sessions() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_uid)).one()
    return str(dcmread(node.spool.absolute(row.path)).SeriesDescription)


@pytest.mark.parametrize(
    ("stranger_ae", "stranger_host"), [("STRANGER", "127.0.0.1"), ("MODALITY", "127.0.0.2")]
)
def test_a_replacement_from_another_calling_ae_or_host_is_refused(
    tmp_path: Path, stranger_ae: str, stranger_host: str
) -> None:
    with running_node(make_settings(tmp_path, completion={"quiet_seconds": 30})) as node:
        ds = synthetic_ct()
        assert _send(node.port, ds, "MODALITY").Status == 0x0000
        answer = _send(node.port, _changed(ds), stranger_ae, stranger_host)
        assert answer.Status == STATUS_NOT_AUTHORIZED
        assert answer.ErrorComment == REPLACEMENT_REFUSED
        # The stored instance is untouched and no second file was kept.
        assert _stored_description(node, ds.SOPInstanceUID) == "CHEST WO"
        assert len(list(node.spool.root.rglob("*.dcm"))) == 1
        (rejected,) = _events(node, "instance.rejected")
        assert rejected.sop_instance_uid == ds.SOPInstanceUID
        assert (rejected.calling_ae, rejected.peer.rsplit(":", 1)[0]) == (stranger_ae, stranger_host)
        assert rejected.details["status"] == STATUS_NOT_AUTHORIZED
        assert rejected.details["original_sender"] == {"calling_ae": "MODALITY", "host": "127.0.0.1"}
        assert rejected.details["sender"] == {"calling_ae": stranger_ae, "host": stranger_host}
        assert not _events(node, "instance.replaced")
        # The original sender may still correct its own instance.
        assert _send(node.port, _changed(ds), "MODALITY").Status == 0x0000
        assert _stored_description(node, ds.SOPInstanceUID) == "CHEST WO stamped elsewhere"


def test_a_quarantined_replacement_is_acknowledged_kept_aside_and_starts_no_follow_up(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, receive={"replacement_from_other_sender": "quarantine"}, completion={"quiet_seconds": 0.3}
    )
    with running_node(settings) as node:
        ds = synthetic_ct()
        assert _send(node.port, ds, "MODALITY").Status == 0x0000

        def complete() -> bool:
            with node.sessions() as session:
                series = session.scalars(select(Series)).one()
                return series.state != SeriesState.RECEIVING

        wait_for(complete, what="the series to complete")
        changed = _changed(ds)
        assert _send(node.port, changed, "STRANGER").Status == 0x0000
        assert _stored_description(node, ds.SOPInstanceUID) == "CHEST WO"
        (kept,) = _events(node, "instance.replacement_quarantined")
        assert kept.details["original_sender"] == {"calling_ae": "MODALITY", "host": "127.0.0.1"}
        assert kept.details["sender"] == {"calling_ae": "STRANGER", "host": "127.0.0.1"}
        quarantined = node.spool.root / kept.details["path"]
        assert hashlib.sha256(quarantined.read_bytes()).hexdigest() == kept.details["sha256"]
        assert dcmread(quarantined).SeriesDescription == "CHEST WO stamped elsewhere"
        with node.sessions() as session:
            series = session.scalars(select(Series)).one()
        assert (series.generation, series.state) == (1, SeriesState.COMPLETE)
        assert not _events(node, "series.follow_up")
        assert 'outcome="quarantined"' in node.metrics.exposition().decode()


def test_allow_replaces_and_the_audit_names_both_senders(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, receive={"replacement_from_other_sender": "allow"}, completion={"quiet_seconds": 30}
    )
    with running_node(settings) as node:
        ds = synthetic_ct()
        assert store(node.port, [ds], ae_title="MODALITY") == [0]
        assert store(node.port, [_changed(ds)], ae_title="STRANGER") == [0]
        assert _stored_description(node, ds.SOPInstanceUID) == "CHEST WO stamped elsewhere"
        (replaced,) = _events(node, "instance.replaced")
        assert replaced.details["original_sender"] == {"calling_ae": "MODALITY", "host": "127.0.0.1"}
        assert replaced.details["sender"] == {"calling_ae": "STRANGER", "host": "127.0.0.1"}
        with node.sessions() as session:
            row = session.scalars(select(Instance)).one()
        assert (row.sender_ae, row.sender_host) == ("STRANGER", "127.0.0.1")


def _start_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture, **receive: object) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="node.app"):
        with running_node(make_settings(tmp_path, receive=receive)):
            pass
    return [r.getMessage() for r in caplog.records if "allowed_callers is empty" in r.getMessage()]


def test_start_warns_when_open_to_any_caller_on_a_non_loopback_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (warning,) = _start_warnings(tmp_path / "open", caplog, host="0.0.0.0")
    assert "0.0.0.0" in warning and "docs/deployment.md" in warning
    assert _start_warnings(tmp_path / "loopback", caplog, host="127.0.0.1") == []
    closed = {"host": "0.0.0.0", "allowed_callers": [{"ae_title": "MODALITY"}]}
    assert _start_warnings(tmp_path / "closed", caplog, **closed) == []
