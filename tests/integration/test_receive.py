"""Receiving over real pynetdicom associations on loopback: statuses, spool, database, audit, completion."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from node.db.models import AuditEvent, Instance, Job, Series
from node.receive.ingest import STATUS_INVALID_UID
from tests.nodeutil import make_settings, running_node, scu, store, synthetic_ct, wait_for


def _events(node, name: str, series_uid: str | None = None) -> list[AuditEvent]:
    with node.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.event == name)
        if series_uid is not None:
            query = query.where(AuditEvent.series_uid == series_uid)
        return list(session.scalars(query.order_by(AuditEvent.id)))


def test_echo_and_store_are_durable_before_success(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()

        series_uid = generate_uid()
        datasets = [synthetic_ct(series_uid, number=n) for n in range(1, 6)]
        assert store(node.port, datasets) == [0] * 5
        with node.sessions() as session:
            series = session.scalar(select(Series).where(Series.series_uid == series_uid))
            assert series is not None and series.instance_count == 5
            rows = session.scalars(select(Instance).where(Instance.series_id == series.id)).all()
        # Every acknowledged instance is on disk with the pixel data it was sent with.
        by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
        for row in rows:
            stored = dcmread(node.spool.absolute(row.path))
            assert stored.PixelData == by_uid[row.sop_instance_uid].PixelData
        assert len(_events(node, "instance.stored", series_uid)) == 5
        accepted = _events(node, "association.accepted")
        assert accepted and accepted[0].calling_ae == "TESTSCU"


def test_duplicates_same_bytes_once_different_bytes_replace(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path, completion={"quiet_seconds": 30})) as node:
        ds = synthetic_ct()
        assert store(node.port, [ds, ds]) == [0, 0]
        changed = synthetic_ct(ds.SeriesInstanceUID, ds.StudyInstanceUID, number=1)
        changed.SOPInstanceUID = ds.SOPInstanceUID
        changed.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        changed.SeriesDescription = "CHEST WO corrected"
        assert store(node.port, [changed]) == [0]
        with node.sessions() as session:
            rows = session.scalars(select(Instance)).all()
        assert len(rows) == 1
        assert dcmread(node.spool.absolute(rows[0].path)).SeriesDescription == "CHEST WO corrected"
        assert len(_events(node, "instance.duplicate", ds.SeriesInstanceUID)) == 1
        assert len(_events(node, "instance.replaced", ds.SeriesInstanceUID)) == 1
        # The replaced file is gone; only one file remains in the series folder.
        files = list(node.spool.instances_dir.rglob("*.dcm"))
        assert len(files) == 1


def test_invalid_uid_is_refused_not_written_and_node_keeps_running(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        bad = synthetic_ct()
        bad.SeriesInstanceUID = "../../etc"
        good = synthetic_ct()
        statuses = store(node.port, [bad, good])
        assert statuses == [STATUS_INVALID_UID, 0]
        assert not any("etc" in str(p) for p in node.spool.root.rglob("*"))
        rejected = _events(node, "instance.rejected")
        assert len(rejected) == 1
        assert "SeriesInstanceUID" in rejected[0].message
        assert rejected[0].details == {"status": STATUS_INVALID_UID, "size": rejected[0].details["size"]}


def test_garbage_dataset_gets_cannot_understand(tmp_path: Path, monkeypatch) -> None:
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import _config

    # A file with valid meta information followed by bytes that are no data set at all; pynetdicom
    # sends the bytes after the meta as they are when chunked sending is on.
    ds = synthetic_ct()
    garbage = tmp_path / "garbage.dcm"
    with garbage.open("wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, ds.file_meta, enforce_standard=True)
        f.write(b"\xde\xad\xbe\xef" * 64 + b"\xff" * 33)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    with running_node(make_settings(tmp_path)) as node:
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        assert assoc.is_established
        status = assoc.send_c_store(garbage)
        assoc.release()
        assert 0xC000 <= int(status.Status) <= 0xCFFF, hex(int(status.Status))
        rejected = _events(node, "instance.rejected")
        assert len(rejected) == 1 and rejected[0].details["status"] == int(status.Status)
        assert not list(node.spool.instances_dir.rglob("*.dcm"))
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
        assert store(node.port, [synthetic_ct()]) == [0]


def test_rejected_calling_ae_is_audited(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, receive={"allowed_callers": [{"ae_title": "GOODSCU"}]})
    with running_node(settings) as node:
        assoc = scu("INTRUDER").associate("127.0.0.1", node.port, ae_title="NODE")
        assert assoc.is_rejected
        assert store(node.port, [synthetic_ct()], ae_title="GOODSCU") == [0]
        rejected = _events(node, "association.rejected")
        assert len(rejected) == 1 and rejected[0].calling_ae == "INTRUDER"


def test_quiet_time_completes_once_and_queues_route(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path, completion={"quiet_seconds": 0.3})) as node:
        series_uid = generate_uid()
        store(node.port, [synthetic_ct(series_uid, number=n) for n in range(1, 4)])

        def completed() -> list[AuditEvent]:
            return _events(node, "series.complete", series_uid)

        done = wait_for(completed, what="series completion")
        assert done[0].details["instance_count"] == 3
        assert done[0].details["reason"] == "quiet_time"
        wait_for(lambda: _events(node, "route.decision", series_uid), what="route decision")
        assert len(_events(node, "series.complete", series_uid)) == 1


def test_series_arriving_for_longer_than_the_quiet_time_completes_after_its_last_instance(
    tmp_path: Path,
) -> None:
    """The quiet-time job is armed once per series, not moved per instance (node/tracker.py): it fires
    while instances still arrive, finds the series not quiet and waits again from the last one."""
    quiet = 1.0
    with running_node(make_settings(tmp_path, completion={"quiet_seconds": quiet})) as node:
        series_uid = generate_uid()
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        try:
            for n in range(1, 8):  # about 2 s of arrivals on one association, gaps of about 0.3 s
                assert int(assoc.send_c_store(synthetic_ct(series_uid, number=n)).Status) == 0
                time.sleep(0.3)
        finally:
            assoc.release()
        done = wait_for(lambda: _events(node, "series.complete", series_uid), what="series completion")
        assert done[0].details["instance_count"] == 7 and len(done) == 1
        assert not _events(node, "series.follow_up", series_uid)
        with node.sessions() as session:
            series = session.scalars(select(Series).where(Series.series_uid == series_uid)).one()
        assert series.completed_at is not None and series.last_received_at is not None
        assert (series.completed_at - series.last_received_at).total_seconds() >= quiet


def test_expected_count_completes_without_waiting(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        completion={"quiet_seconds": 3600, "expected_count_attribute": "ImagesInAcquisition"},
    )
    with running_node(settings) as node:
        series_uid = generate_uid()
        datasets = [synthetic_ct(series_uid, number=n) for n in range(1, 4)]
        for ds in datasets:
            ds.ImagesInAcquisition = 3
        store(node.port, datasets)
        done = wait_for(lambda: _events(node, "series.complete", series_uid), what="completion by count")
        assert done[0].details["reason"] == "expected_count"


def test_late_instance_starts_follow_up_generation(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path, completion={"quiet_seconds": 0.3})) as node:
        series_uid = generate_uid()
        store(node.port, [synthetic_ct(series_uid, number=1)])
        wait_for(lambda: _events(node, "route.decision", series_uid), what="first routing")
        store(node.port, [synthetic_ct(series_uid, number=2)])
        wait_for(lambda: len(_events(node, "route.decision", series_uid)) == 2, what="follow-up routing")
        assert len(_events(node, "series.follow_up", series_uid)) == 1
        with node.sessions() as session:
            generations = session.scalars(select(Job.generation).order_by(Job.id)).all()
            count = session.scalar(select(func.count()).select_from(Instance))
        assert generations == [1, 2] and count == 2


def test_restart_rearms_timers_from_database(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, completion={"quiet_seconds": 2.0})
    series_uid = generate_uid()
    with running_node(settings) as node:
        store(node.port, [synthetic_ct(series_uid)])
    # The node stopped before the quiet time: the series must complete after the restart, once.
    with running_node(settings) as node:
        wait_for(lambda: _events(node, "series.complete", series_uid), what="completion after restart")
        assert len(_events(node, "series.complete", series_uid)) == 1
