"""Start-up reconciliation of the spool (node.receive.reconcile): the state a power loss can leave behind
(a durable spool file whose un-fsync'd commit was lost, a staging file that never became durable, an
obsolete file whose removal did not happen) is repaired, and nothing is indexed twice."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import dcmread
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from node.config import CompletionSettings, ReceiveSettings
from node.db.models import AuditEvent, Instance, Series, SeriesState
from node.db.session import make_session_factory
from node.receive.ingest import RECOVERED, Ingest, Received, RejectedInstance
from node.receive.reconcile import reconcile
from node.receive.senders import STATUS_NOT_AUTHORIZED
from node.receive.spool import Spool, sha256_hex
from tests.nodeutil import make_settings, running_node, synthetic_ct


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def received(ds: Dataset) -> Received:
    data = encoded(ds)
    return Received(
        data, dcmread(io.BytesIO(data)), str(ds.file_meta.TransferSyntaxUID), "MOD", "127.0.0.1:1"
    )


def spool_without_row(spool: Spool, ds: Dataset, variant: int = 0) -> str:
    """The state after a commit lost at power failure: the file placed durably, no row for it."""
    relative = Spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, variant)
    spool.write(relative, encoded(ds))
    return relative


@pytest.fixture
def parts(db_engine: Engine, tmp_path: Path) -> tuple[sessionmaker[Session], Spool, Ingest]:
    sessions = make_session_factory(db_engine)
    spool = Spool(tmp_path / "spool")
    ingest = Ingest(sessions, spool, ReceiveSettings(duplicate_policy="replace"), CompletionSettings())
    yield sessions, spool, ingest
    spool.close()


def test_a_spooled_file_without_its_row_is_indexed_once(
    parts: tuple[sessionmaker[Session], Spool, Ingest],
) -> None:
    sessions, spool, ingest = parts
    first = synthetic_ct(number=1)
    ingest.accept(received(first))
    lost = synthetic_ct(series_uid=first.SeriesInstanceUID, study_uid=first.StudyInstanceUID, number=2)
    relative = spool_without_row(spool, lost)

    done = reconcile(sessions, spool, ingest)
    again = reconcile(sessions, spool, ingest)

    assert done.indexed == [relative] and not done.obsolete and not done.unreadable
    assert again.indexed == [] and again.obsolete == []
    with sessions() as session:
        row = session.execute(
            select(Instance).where(Instance.sop_instance_uid == lost.SOPInstanceUID)
        ).scalar_one()
        assert row.path == relative
        assert row.sha256 == sha256_hex(encoded(lost))
        assert row.instance_number == 2
        series = session.execute(select(Series)).scalar_one()
        assert series.instance_count == 2
        assert session.scalar(select(func.count()).select_from(Instance)) == 2
        audit = session.execute(
            select(AuditEvent).where(AuditEvent.sop_instance_uid == lost.SOPInstanceUID)
        ).scalar_one()
        assert audit.event == "instance.stored" and audit.message == RECOVERED


def test_a_series_whose_rows_were_all_lost_is_created_receiving(
    parts: tuple[sessionmaker[Session], Spool, Ingest],
) -> None:
    sessions, spool, ingest = parts
    ds = synthetic_ct()
    spool_without_row(spool, ds)

    assert len(reconcile(sessions, spool, ingest).indexed) == 1
    with sessions() as session:
        series = session.execute(select(Series)).scalar_one()
        assert (series.series_uid, series.state, series.instance_count) == (
            ds.SeriesInstanceUID,
            SeriesState.RECEIVING,
            1,
        )


def test_a_lost_replacement_is_recorded_and_the_old_file_removed(
    parts: tuple[sessionmaker[Session], Spool, Ingest],
) -> None:
    sessions, spool, ingest = parts
    ds = synthetic_ct()
    ingest.accept(received(ds))
    old = Spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    ds.SeriesDescription = "CHEST WO (corrected)"
    newer = spool_without_row(spool, ds, variant=1)

    done = reconcile(sessions, spool, ingest)

    assert done.indexed == [newer]
    with sessions() as session:
        row = session.execute(select(Instance)).scalar_one()
        assert (row.path, row.sha256) == (newer, sha256_hex(encoded(ds)))
        assert session.execute(select(Series.instance_count)).scalar_one() == 1
    assert not spool.absolute(old).exists() and spool.absolute(newer).exists()


def test_an_obsolete_file_left_by_a_replacement_is_removed(
    parts: tuple[sessionmaker[Session], Spool, Ingest],
) -> None:
    sessions, spool, ingest = parts
    ds = synthetic_ct()
    ingest.accept(received(ds))
    ds.SeriesDescription = "CHEST WO (corrected)"
    ingest.accept(received(ds))  # replaced: the row points at ~1, the first file was removed
    old = Spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert not spool.absolute(old).exists()
    spool.write(old, b"left behind by a crash between the commit and the removal")

    done = reconcile(sessions, spool, ingest)

    assert done.obsolete == [old] and done.indexed == []
    assert not spool.absolute(old).exists()
    with sessions() as session:
        assert session.execute(select(Instance.path)).scalar_one().endswith("~1.dcm")


def test_an_unreadable_file_is_left_in_place_and_not_indexed(
    parts: tuple[sessionmaker[Session], Spool, Ingest],
) -> None:
    sessions, spool, ingest = parts
    ds = synthetic_ct()
    relative = Spool.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.write(relative, b"not DICOM")

    done = reconcile(sessions, spool, ingest)

    assert done.unreadable == [relative] and done.indexed == []
    assert spool.absolute(relative).exists()
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0


def test_a_file_whose_uids_do_not_match_its_path_is_left_in_place(
    parts: tuple[sessionmaker[Session], Spool, Ingest],
) -> None:
    sessions, spool, ingest = parts
    ds = synthetic_ct()
    elsewhere = Spool.relative_path(ds.StudyInstanceUID, "1.2.3.4", ds.SOPInstanceUID)
    spool.write(elsewhere, encoded(ds))

    done = reconcile(sessions, spool, ingest)

    assert done.unreadable == [elsewhere] and done.indexed == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Series)) == 0


def test_a_staging_leftover_is_removed_when_the_spool_opens(tmp_path: Path) -> None:
    Spool(tmp_path / "spool").close()
    leftover = tmp_path / "spool" / "tmp" / "abc.part"
    leftover.write_bytes(b"half written, never acknowledged")

    Spool(tmp_path / "spool").close()

    assert not leftover.exists()


def test_the_node_indexes_lost_rows_before_it_listens(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, completion={"quiet_seconds": 60})
    spool = Spool(settings.resolved_spool_dir)
    ds = synthetic_ct()
    relative = spool_without_row(spool, ds)
    spool.close()

    with running_node(settings) as node:
        with node.sessions() as session:
            paths = session.execute(select(Instance.path)).scalars().all()
    assert paths == [relative]


def test_only_the_receive_transaction_commits_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.db.migrate import upgrade
    from node.db.session import commit_without_fsync, make_engine
    from node.receive import ingest as ingest_module

    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    sessions = make_session_factory(engine)
    spool = Spool(tmp_path / "spool")
    ingest = Ingest(sessions, spool, ReceiveSettings(), CompletionSettings())
    during: list[int] = []

    def relax_and_look(connection: Connection) -> None:
        commit_without_fsync(connection)
        during.append(int(connection.exec_driver_sql("PRAGMA synchronous").scalar_one()))

    monkeypatch.setattr(ingest_module, "commit_without_fsync", relax_and_look)
    try:
        ingest.accept(received(synthetic_ct()))
        # Back in the pool, the receive connection is FULL (2) again, as every other one.
        with engine.connect() as a, engine.connect() as b:
            after = {int(c.exec_driver_sql("PRAGMA synchronous").scalar_one()) for c in (a, b)}
    finally:
        spool.close()
        engine.dispose()
    assert during == [1]  # NORMAL for the receive transaction
    assert after == {2}


def test_an_instance_indexed_at_start_has_no_known_sender_so_a_replacement_is_refused(
    parts: tuple[sessionmaker[Session], Spool, Ingest],
) -> None:
    sessions, spool, ingest = parts
    lost = synthetic_ct(number=1)
    spool_without_row(spool, lost)
    reconcile(sessions, spool, ingest)
    changed = synthetic_ct(lost.SeriesInstanceUID, lost.StudyInstanceUID, number=2)
    changed.SOPInstanceUID = lost.SOPInstanceUID
    changed.file_meta.MediaStorageSOPInstanceUID = lost.SOPInstanceUID
    with pytest.raises(RejectedInstance) as refused:
        ingest.accept(received(changed))
    assert refused.value.status == STATUS_NOT_AUTHORIZED
    assert refused.value.details["original_sender"] == {"calling_ae": None, "host": None}
    with sessions() as session:
        row = session.scalars(select(Instance)).one()
    assert (row.sender_ae, row.sender_host, row.sha256) == (None, None, sha256_hex(encoded(lost)))


def test_a_lost_replacement_indexed_at_start_keeps_the_sender_of_the_row(
    parts: tuple[sessionmaker[Session], Spool, Ingest],
) -> None:
    sessions, spool, ingest = parts
    first = synthetic_ct(number=1)
    ingest.accept(received(first))  # from MOD at 127.0.0.1
    changed = synthetic_ct(first.SeriesInstanceUID, first.StudyInstanceUID, number=2)
    changed.SOPInstanceUID = first.SOPInstanceUID
    changed.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    spool_without_row(spool, changed, variant=1)
    assert reconcile(sessions, spool, ingest).indexed
    with sessions() as session:
        row = session.scalars(select(Instance)).one()
    assert row.sha256 == sha256_hex(encoded(changed))
    assert (row.sender_ae, row.sender_host) == ("MOD", "127.0.0.1")
