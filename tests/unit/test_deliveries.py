"""`dicom-node deliveries list / retry`: filters, output, the retry state rules and the audit row a retry
writes, against a real migrated database (SQLite in tmp_path; PostgreSQL too when it runs, via
`db_engine`)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from node import audit, jobs
from node.audit import Events
from node.db.models import (
    AuditEvent,
    Instance,
    Job,
    JobKind,
    JobState,
    QuarantinedInstance,
    SentInstance,
    Series,
    SeriesState,
    utcnow,
)
from node.db.session import make_session_factory
from node.deliveries import (
    DeliveryStateError,
    cmd_deliveries_list,
    cmd_deliveries_retry,
    list_deliveries,
    render_deliveries,
    retry_all_failed,
    retry_job,
)
from node.errors import NotFoundError

T0 = dt.datetime(2026, 11, 23, 8, 0, 0, tzinfo=dt.UTC)
UID_A = "1.2.826.0.1.3680043.8.498.11"
UID_B = "1.2.826.0.1.3680043.8.498.12"


def add_series(session: Session, uid: str) -> Series:
    series = Series(
        series_uid=uid,
        study_uid="1.2.3",
        modality="CT",
        state=SeriesState.ROUTED,
        first_received_at=T0,
        last_received_at=T0,
        completed_at=T0,
        complete_reason="quiet_time",
    )
    session.add(series)
    session.flush()
    for i in range(3):
        session.add(
            Instance(
                series_id=series.id,
                sop_instance_uid=f"{uid}.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=f"{uid}/{i}",
                size=100,
                sha256="0" * 64,
                generation=1,
                received_at=T0,
            )
        )
    session.flush()
    return series


def add_job(
    session: Session,
    series: Series,
    destination: str,
    state: str,
    *,
    minutes: int,
    attempts: int = 1,
    error: str | None = None,
    kind: str = JobKind.DELIVER,
) -> Job:
    when = T0 + dt.timedelta(minutes=minutes)
    job = Job(
        kind=kind,
        series_id=series.id,
        generation=1,
        destination=destination,
        state=state,
        attempts=attempts,
        next_run_at=when,
        created_at=T0,
        updated_at=when,
        finished_at=when if state in (JobState.DONE, JobState.FAILED) else None,
        last_error=error,
        rules=["ct-rule"] if kind == JobKind.DELIVER else None,
    )
    session.add(job)
    session.flush()
    return job


@pytest.fixture
def session(db_engine: Engine) -> Iterator[Session]:
    factory = make_session_factory(db_engine)
    with factory() as s:
        yield s


@pytest.fixture
def ids(session: Session) -> dict[str, int]:
    a = add_series(session, UID_A)
    b = add_series(session, UID_B)
    route = add_job(session, a, "", JobState.DONE, minutes=0, kind=JobKind.ROUTE)
    route_b = add_job(session, b, "", JobState.DONE, minutes=0, kind=JobKind.ROUTE)
    done = add_job(session, a, "PACS", JobState.DONE, minutes=1)
    for inst in session.scalars(select(Instance).where(Instance.series_id == a.id)):
        session.add(SentInstance(job_id=done.id, instance_id=inst.id, status=0, sent_at=T0))
    failed_a = add_job(
        session, a, "QA", JobState.FAILED, minutes=2, attempts=6, error="C-STORE status 0xA700"
    )
    failed_b = add_job(session, b, "QA", JobState.FAILED, minutes=3, attempts=6, error="connection refused")
    failed_b_pacs = add_job(
        session, b, "PACS", JobState.FAILED, minutes=4, attempts=1, error="association rejected\n(calling AE)"
    )
    queued = add_job(session, b, "ARCHIVE", JobState.QUEUED, minutes=5, attempts=2, error="timeout")
    running = add_job(session, a, "ARCHIVE", JobState.RUNNING, minutes=6)
    # One acknowledged instance on a failed job: a retry resumes after it.
    first = session.scalars(select(Instance).where(Instance.series_id == b.id).order_by(Instance.id)).first()
    assert first is not None
    session.add(SentInstance(job_id=failed_b.id, instance_id=first.id, status=0, sent_at=T0))
    session.commit()
    return {
        "route": route.id,
        "route_b": route_b.id,
        "done": done.id,
        "failed_a": failed_a.id,
        "failed_b": failed_b.id,
        "failed_b_pacs": failed_b_pacs.id,
        "queued": queued.id,
        "running": running.id,
    }


def requeue_rows(session: Session) -> list[AuditEvent]:
    return list(
        session.scalars(
            select(AuditEvent).where(AuditEvent.event == Events.JOB_REQUEUED).order_by(AuditEvent.id)
        )
    )


def sent_count(session: Session, job_id: int) -> int:
    return (
        session.scalar(select(func.count()).select_from(SentInstance).where(SentInstance.job_id == job_id))
        or 0
    )


# --- list -------------------------------------------------------------------------------------------------


def test_list_deliveries_newest_first_without_route_jobs(session: Session, ids: dict[str, int]) -> None:
    items = list_deliveries(session)
    assert [d["job_id"] for d in items] == [
        ids[k] for k in ("running", "queued", "failed_b_pacs", "failed_b", "failed_a", "done")
    ]
    done = items[-1]
    assert done["series_uid"] == UID_A and done["destination"] == "PACS" and done["generation"] == 1
    assert done["rules"] == ["ct-rule"] and done["sent_instances"] == 3 and done["kind"] == "deliver"
    assert done["next_run_at"] == "2026-11-23T08:01:00.000000Z"
    assert list_deliveries(session, limit=2) == items[:2]


def test_list_deliveries_filters(session: Session, ids: dict[str, int]) -> None:
    failed = list_deliveries(session, state="failed")
    assert {d["job_id"] for d in failed} == {ids["failed_a"], ids["failed_b"], ids["failed_b_pacs"]}
    assert list_deliveries(session, state="dead") == failed
    qa = list_deliveries(session, state="failed", destination="QA")
    assert [d["job_id"] for d in qa] == [ids["failed_b"], ids["failed_a"]]
    assert list_deliveries(session, destination="NOWHERE") == []
    with pytest.raises(ValueError, match="queued, running, done, failed"):
        list_deliveries(session, state="broken")


def test_cmd_deliveries_list_text_and_json(
    session: Session, ids: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_deliveries_list(session, "failed", None, as_json=True) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert out == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert [d["state"] for d in data] == ["failed"] * 3

    assert cmd_deliveries_list(session, None, "QA", as_json=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:7] == ["ID", "KIND", "SERIES", "GEN", "DESTINATION", "TARGET", "STATE"]
    assert len(lines) == 3
    first = lines[1].split()
    assert first[:8] == [str(ids["failed_b"]), "deliver", UID_B, "1", "QA", "-", "failed", "6"]
    assert lines[1].endswith("connection refused")
    # Aligned: the STATE column starts at the same offset on every line.
    offset = lines[0].index("STATE")
    assert all(line[offset:].startswith(("STATE", "failed")) for line in lines)

    assert cmd_deliveries_list(session, None, None, as_json=False) == 0
    text_all = capsys.readouterr().out
    assert "association rejected (calling AE)" in text_all  # one line per delivery

    assert cmd_deliveries_list(session, "done", "QA", as_json=False) == 0
    assert capsys.readouterr().out.strip() == "no deliveries match"
    assert cmd_deliveries_list(session, "nonsense", None, as_json=False) == 2
    assert "unknown delivery state" in capsys.readouterr().err


# --- retry ------------------------------------------------------------------------------------------------


def test_retry_failed_requeues_and_audits_in_the_same_commit(
    db_engine: Engine, session: Session, ids: dict[str, int]
) -> None:
    job = retry_job(session, ids["failed_b"])
    assert job.id == ids["failed_b"]
    # Read back through a different session: the change and its audit row are committed together.
    with make_session_factory(db_engine)() as other:
        fresh = other.get(Job, ids["failed_b"])
        assert fresh is not None
        assert (fresh.state, fresh.attempts, fresh.finished_at) == (JobState.QUEUED, 0, None)
        assert fresh.next_run_at <= utcnow()
        rows = requeue_rows(other)
        assert len(rows) == 1
        row = rows[0]
        assert (row.series_uid, row.job_id, row.destination) == (UID_B, ids["failed_b"], "QA")
        assert row.details == {
            "previous_state": "failed",
            "reason": "operator",
            "last_error": "connection refused",
        }
    # The instance the destination already acknowledged is kept: the next attempt resumes after it.
    assert sent_count(session, ids["failed_b"]) == 1
    # The requeued job is claimable by a worker again.
    claimed = jobs.claim(session, [JobKind.DELIVER])
    assert claimed is not None and claimed.id in (ids["failed_b"], ids["queued"])


def test_retry_refuses_pending_jobs(session: Session, ids: dict[str, int]) -> None:
    for key, state in (("queued", "queued"), ("running", "running")):
        with pytest.raises(DeliveryStateError, match=f"already pending \\({state}"):
            retry_job(session, ids[key])
        with pytest.raises(DeliveryStateError, match="already pending"):
            retry_job(session, ids[key], force=True)
    assert requeue_rows(session) == []
    assert session.get(Job, ids["queued"]).attempts == 2  # type: ignore[union-attr]


def test_retry_done_needs_force_and_then_sends_everything_again(
    session: Session, ids: dict[str, int]
) -> None:
    with pytest.raises(DeliveryStateError, match="--force"):
        retry_job(session, ids["done"])
    assert session.get(Job, ids["done"]).state == JobState.DONE  # type: ignore[union-attr]
    assert sent_count(session, ids["done"]) == 3

    job = retry_job(session, ids["done"], force=True)
    assert job.state == JobState.QUEUED and job.attempts == 0
    assert sent_count(session, ids["done"]) == 0
    (row,) = requeue_rows(session)
    assert row.details is not None and row.details["previous_state"] == "done"
    assert row.details["reason"].startswith("operator")


def quarantine_one(session: Session, job_id: int) -> None:
    """Turn the done delivery into a partial one: its last instance quarantined instead of sent."""
    job = session.get(Job, job_id)
    assert job is not None
    last = max(session.scalars(select(SentInstance).where(SentInstance.job_id == job_id)),
               key=lambda r: r.instance_id)
    session.delete(last)
    session.add(QuarantinedInstance(
        job_id=job_id, instance_id=last.instance_id, status=0xC000,
        reason="status 0xC000 (cannot understand)", quarantined_at=T0,
    ))
    session.commit()


def test_partial_delivery_is_listed_with_its_quarantined_count(session: Session, ids: dict[str, int]) -> None:
    before = {d["job_id"]: d for d in list_deliveries(session)}
    assert before[ids["done"]]["partial"] is False and before[ids["done"]]["quarantined_instances"] == 0
    quarantine_one(session, ids["done"])
    items = {d["job_id"]: d for d in list_deliveries(session)}
    done = items[ids["done"]]
    assert done["state"] == "done" and done["partial"] is True
    assert done["sent_instances"] == 2 and done["quarantined_instances"] == 1
    # A failed delivery with quarantined instances is not "partial": it is not done.
    session.add(QuarantinedInstance(job_id=ids["failed_a"], instance_id=done_instance(session, ids),
                                    status=None, reason="spool file gone", quarantined_at=T0))
    session.commit()
    failed = {d["job_id"]: d for d in list_deliveries(session)}[ids["failed_a"]]
    assert failed["partial"] is False and failed["quarantined_instances"] == 1
    lines = render_deliveries(list_deliveries(session, state="done")).splitlines()
    assert "QUARANTINED" in lines[0].split()
    row = lines[1].split()
    # ID ... STATE, ATTEMPTS, SENT, QUARANTINED
    assert row[0] == str(ids["done"]) and row[6:11] == ["done", "(partial)", "1", "2", "1"]


def done_instance(session: Session, ids: dict[str, int]) -> int:
    job = session.get(Job, ids["failed_a"])
    assert job is not None
    first = session.scalars(select(Instance.id).where(Instance.series_id == job.series_id)).first()
    assert first is not None
    return first


def test_forced_retry_of_a_partial_delivery_clears_its_quarantine(
    session: Session, ids: dict[str, int]
) -> None:
    quarantine_one(session, ids["done"])
    retry_job(session, ids["done"], force=True)
    query = select(func.count()).select_from(QuarantinedInstance).where(
        QuarantinedInstance.job_id == ids["done"]
    )
    assert session.scalar(query) == 0
    assert sent_count(session, ids["done"]) == 0


def test_retry_unknown_job(session: Session, ids: dict[str, int]) -> None:
    with pytest.raises(NotFoundError, match="delivery or route job 999999 not found"):
        retry_job(session, 999999)


def test_route_jobs_are_retried_like_deliveries(session: Session, ids: dict[str, int]) -> None:
    """A dead-lettered route job is requeued by `deliveries retry`; a done one only with --force."""
    with pytest.raises(DeliveryStateError, match="route job .* is done; use --force"):
        retry_job(session, ids["route"])
    route = session.get(Job, ids["route_b"])
    assert route is not None
    route.state, route.last_error = JobState.FAILED, "RouteFailure: cannot read the header"
    session.commit()
    assert [d["job_id"] for d in list_deliveries(session, state="failed", kind="route")] == [ids["route_b"]]
    job = retry_job(session, ids["route_b"])
    assert (job.kind, job.state, job.attempts) == (JobKind.ROUTE, JobState.QUEUED, 0)
    (row,) = requeue_rows(session)
    assert row.details is not None and row.details["previous_state"] == "failed"
    assert jobs.claim(session, [JobKind.ROUTE]) is not None


def test_replan_requeues_the_route_job_of_the_delivery(session: Session, ids: dict[str, int]) -> None:
    job = retry_job(session, ids["failed_b"], replan=True)
    assert (job.id, job.kind, job.state) == (ids["route_b"], JobKind.ROUTE, JobState.QUEUED)
    # The delivery itself waits for the router's new decision.
    assert session.get(Job, ids["failed_b"]).state == JobState.FAILED  # type: ignore[union-attr]
    (row,) = requeue_rows(session)
    assert row.job_id == ids["route_b"] and row.details is not None
    reason = row.details["reason"]
    assert reason.startswith("operator: replan") and f"delivery {ids['failed_b']}" in reason
    # While that route job is pending, a second replan is refused.
    with pytest.raises(DeliveryStateError, match="already pending"):
        retry_job(session, ids["failed_b_pacs"], replan=True)


def test_replan_all_failed_requeues_each_route_job_once(session: Session, ids: dict[str, int]) -> None:
    assert retry_all_failed(session, replan=True) == [ids["route"], ids["route_b"]]
    assert [r.job_id for r in requeue_rows(session)] == [ids["route"], ids["route_b"]]
    failed = {d["job_id"] for d in list_deliveries(session, state="failed")}
    assert failed == {ids["failed_a"], ids["failed_b"], ids["failed_b_pacs"]}


def test_retry_refused_when_retention_deleted_the_files(
    session: Session, ids: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    series = session.scalar(select(Series).where(Series.series_uid == UID_A))
    assert series is not None
    series.files_deleted_at = T0
    session.commit()
    with pytest.raises(DeliveryStateError, match="deleted by retention"):
        retry_job(session, ids["done"], force=True)
    assert sent_count(session, ids["done"]) == 3  # rolled back, nothing cleared
    # --all-failed skips that series' failed delivery and requeues the others, and says so.
    assert cmd_deliveries_retry(session, None, True, None, False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"requeued 2 failed deliveries: {ids['failed_b']}, {ids['failed_b_pacs']}",
        f"not requeued (spooled files deleted by retention): {ids['failed_a']}",
    ]
    assert retry_all_failed(session) == []


def test_retry_all_failed_with_destination(session: Session, ids: dict[str, int]) -> None:
    assert retry_all_failed(session, destination="QA") == [ids["failed_a"], ids["failed_b"]]
    assert session.get(Job, ids["failed_b_pacs"]).state == JobState.FAILED  # type: ignore[union-attr]
    assert [r.job_id for r in requeue_rows(session)] == [ids["failed_a"], ids["failed_b"]]
    assert retry_all_failed(session) == [ids["failed_b_pacs"]]
    assert retry_all_failed(session) == []


def test_cmd_deliveries_retry_exit_codes_and_messages(
    session: Session, ids: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_deliveries_retry(session, ids["failed_a"], False, None, False) == 0
    assert capsys.readouterr().out.strip() == f"requeued delivery {ids['failed_a']}: series {UID_A} -> QA"

    assert cmd_deliveries_retry(session, ids["queued"], False, None, False) == 1
    assert "already pending" in capsys.readouterr().err
    assert cmd_deliveries_retry(session, ids["done"], False, None, False) == 1
    assert "--force" in capsys.readouterr().err
    assert cmd_deliveries_retry(session, 424242, False, None, False) == 2
    assert "424242" in capsys.readouterr().err

    # Usage errors: neither or both of ID / --all-failed, --destination with an ID, --force with --all-failed.
    assert cmd_deliveries_retry(session, None, False, None, False) == 2
    assert cmd_deliveries_retry(session, ids["failed_b"], True, None, False) == 2
    assert cmd_deliveries_retry(session, ids["failed_b"], False, "QA", False) == 2
    assert cmd_deliveries_retry(session, None, True, None, True) == 2
    capsys.readouterr()
    assert session.get(Job, ids["failed_b"]).state == JobState.FAILED  # type: ignore[union-attr]

    assert cmd_deliveries_retry(session, None, True, "PACS", False) == 0
    assert capsys.readouterr().out.strip() == f"requeued 1 failed deliveries to PACS: {ids['failed_b_pacs']}"
    assert cmd_deliveries_retry(session, None, True, "PACS", False) == 0
    assert capsys.readouterr().out.strip() == "no failed deliveries to PACS"


def test_requeue_audit_row_shows_in_the_series_story(session: Session, ids: dict[str, int]) -> None:
    from node.audit.query import series_story

    audit.record(
        session,
        Events.DELIVERY_DEAD_LETTER,
        "dead letter",
        series_uid=UID_B,
        job_id=ids["failed_b"],
        destination="QA",
    )
    session.commit()
    retry_job(session, ids["failed_b"])
    events = [e["event"] for e in series_story(session, UID_B)["events"]]
    assert events == [Events.DELIVERY_DEAD_LETTER, Events.JOB_REQUEUED]
