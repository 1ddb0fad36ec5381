"""The job queue and audit rows against a real database: SQLite always, PostgreSQL when it can run.

Every test takes `db_engine` (tests/conftest.py): a fresh, migrated database per test, parametrized over
both backends, so what the node relies on (conditional-UPDATE claims, backoff, dead letter, requeue,
recovery after a crash, JSON audit details, UTC datetimes) is checked on each.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter

from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from node import audit, jobs
from node.audit import Events
from node.db.migrate import upgrade
from node.db.models import AuditEvent, Job, JobKind, JobState, Series, SeriesState, utcnow
from node.db.session import make_session_factory


def fail(session: Session, job: Job, error: str, max_attempts: int, retryable: bool = True) -> bool:
    """jobs.fail with a 10 s initial backoff, doubling, capped at 600 s."""
    return jobs.fail(session, job, error, max_attempts=max_attempts, initial=10.0, factor=2.0, maximum=600.0,
                     retryable=retryable)


def add_series(session: Session, uid: str) -> Series:
    now = utcnow()
    series = Series(
        series_uid=uid, study_uid="1.2.3", modality="CT", state=SeriesState.COMPLETE,
        first_received_at=now, last_received_at=now,
    )
    session.add(series)
    session.flush()
    return series


def make_jobs(factory: sessionmaker[Session], count: int, kind: str = JobKind.DELIVER) -> list[int]:
    with factory() as session:
        series = add_series(session, "1.2.840.99.1")
        ids = []
        for i in range(count):
            job = jobs.enqueue(session, kind, series, 1, destination=f"dest{i}", rules=["r1"])
            assert job is not None
            ids.append(job.id)
        session.commit()
    return ids


def test_migrate_is_idempotent(db_engine: Engine) -> None:
    upgrade(db_engine)  # the fixture already upgraded once: a second run is a no-op
    tables = set(inspect(db_engine).get_table_names())
    assert {"series", "instances", "jobs", "sent_instances", "audit_events", "alembic_version"} <= tables
    with db_engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    assert len(versions) == 1


def test_enqueue_is_deduplicated_per_series_generation_destination(db_engine: Engine) -> None:
    factory = make_session_factory(db_engine)
    with factory() as session:
        series = add_series(session, "1.2.840.99.2")
        first = jobs.enqueue(session, JobKind.DELIVER, series, 1, destination="pacs")
        assert first is not None
        assert jobs.enqueue(session, JobKind.DELIVER, series, 1, destination="pacs") is None
        assert jobs.enqueue(session, JobKind.DELIVER, series, 2, destination="pacs") is not None
        assert jobs.enqueue(session, JobKind.DELIVER, series, 1, destination="qa") is not None
        assert jobs.enqueue(session, JobKind.ROUTE, series, 1) is not None
        session.commit()
    with factory() as session:
        assert len(session.scalars(select(Job)).all()) == 4


def test_claim_takes_due_jobs_of_the_asked_kinds_in_order(db_engine: Engine) -> None:
    factory = make_session_factory(db_engine)
    deliver_ids = make_jobs(factory, 2, JobKind.DELIVER)
    with factory() as session:
        series = session.scalars(select(Series)).one()
        route = jobs.enqueue(session, JobKind.ROUTE, series, 1)
        assert route is not None
        route_id = route.id
        session.commit()

    with factory() as session:
        claimed = jobs.claim(session, [JobKind.ROUTE])
        assert claimed is not None and claimed.id == route_id
        assert claimed.state == JobState.RUNNING and claimed.attempts == 1
        assert jobs.claim(session, [JobKind.ROUTE]) is None
        got = [jobs.claim(session, [JobKind.DELIVER]) for _ in range(3)]
        assert [j.id if j else None for j in got] == [*deliver_ids, None]
    with factory() as session:  # the claims were committed, visible to another session
        states = {r[0]: r[1] for r in session.execute(select(Job.id, Job.state))}
        assert set(states.values()) == {JobState.RUNNING}


def test_failed_job_backs_off_then_goes_to_dead_letter(db_engine: Engine) -> None:
    factory = make_session_factory(db_engine)
    (job_id,) = make_jobs(factory, 1)
    with factory() as session:
        job = jobs.claim(session, [JobKind.DELIVER])
        assert job is not None
        before = utcnow()
        assert fail(session, job, "association rejected", 2) is True
        session.commit()
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert job.state == JobState.QUEUED and job.last_error == "association rejected"
        assert job.next_run_at.tzinfo is not None
        assert before + dt.timedelta(seconds=9) < job.next_run_at < utcnow() + dt.timedelta(seconds=11)
        assert jobs.next_due(session, [JobKind.DELIVER]) == job.next_run_at
        # Not due yet: nobody may claim it now; it is claimable once its time has come.
        assert jobs.claim(session, [JobKind.DELIVER]) is None
        job = jobs.claim(session, [JobKind.DELIVER], now=utcnow() + dt.timedelta(seconds=11))
        assert job is not None and job.id == job_id and job.attempts == 2
        assert fail(session, job, "still rejected", 2) is False
        session.commit()
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert job.state == JobState.FAILED and job.finished_at is not None
        assert jobs.claim(session, [JobKind.DELIVER], now=utcnow() + dt.timedelta(days=1)) is None


def test_non_retryable_failure_is_dead_lettered_at_once(db_engine: Engine) -> None:
    factory = make_session_factory(db_engine)
    (job_id,) = make_jobs(factory, 1)
    with factory() as session:
        job = jobs.claim(session, [JobKind.DELIVER])
        assert job is not None
        assert fail(session, job, "bad", 5, retryable=False) is False
        session.commit()
    with factory() as session:
        assert session.get_one(Job, job_id).state == JobState.FAILED


def test_requeue_resets_attempts_and_audits(db_engine: Engine) -> None:
    factory = make_session_factory(db_engine)
    (job_id,) = make_jobs(factory, 1)
    with factory() as session:
        job = jobs.claim(session, [JobKind.DELIVER])
        assert job is not None
        fail(session, job, "refused", 1)
        session.commit()
    with factory() as session:
        job = session.get_one(Job, job_id)
        jobs.requeue(session, job, "operator")
        session.commit()
    with factory() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.attempts, job.finished_at) == (JobState.QUEUED, 0, None)
        row = session.scalars(select(AuditEvent).where(AuditEvent.event == Events.JOB_REQUEUED)).one()
        assert row.job_id == job_id and row.series_uid == "1.2.840.99.1" and row.destination == "dest0"
        assert row.details == {"previous_state": "failed", "reason": "operator", "last_error": "refused"}
        claimed = jobs.claim(session, [JobKind.DELIVER])
        assert claimed is not None and claimed.id == job_id and claimed.attempts == 1


def test_recover_interrupted_requeues_only_running_jobs(db_engine: Engine) -> None:
    factory = make_session_factory(db_engine)
    ids = make_jobs(factory, 3)
    with factory() as session:
        running = jobs.claim(session, [JobKind.DELIVER])
        done = jobs.claim(session, [JobKind.DELIVER])
        assert running is not None and done is not None
        jobs.finish(session, done)
        session.commit()
    # A new process after a crash: a fresh session sees one job still `running`.
    with factory() as session:
        assert jobs.recover_interrupted(session) == 1
        session.commit()
    with factory() as session:
        states = {r[0]: r[1] for r in session.execute(select(Job.id, Job.state))}
        assert states == {ids[0]: JobState.QUEUED, ids[1]: JobState.DONE, ids[2]: JobState.QUEUED}
        assert session.get_one(Job, ids[0]).attempts == 1  # the interrupted attempt still counts
        rows = session.scalars(select(AuditEvent).where(AuditEvent.event == Events.JOB_RECOVERED)).all()
        assert [r.job_id for r in rows] == [ids[0]]
        assert jobs.recover_interrupted(session) == 0


def test_concurrent_claimers_never_claim_the_same_job(db_engine: Engine) -> None:
    factory = make_session_factory(db_engine)
    ids = make_jobs(factory, 60)
    workers = 4
    barrier = threading.Barrier(workers)
    claimed: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            with factory() as session:
                barrier.wait(timeout=30)
                while (job := jobs.claim(session, [JobKind.DELIVER])) is not None:
                    claimed[slot].append(job.id)
        except BaseException as exc:  # collected and re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a claimer hung"
    assert not errors, errors
    every = [job_id for per in claimed for job_id in per]
    duplicates = [job_id for job_id, n in Counter(every).items() if n > 1]
    assert duplicates == []
    assert sorted(every) == sorted(ids)
    with factory() as session:
        rows = [(r[0], r[1]) for r in session.execute(select(Job.state, Job.attempts))]
        assert set(rows) == {(JobState.RUNNING, 1)}


def test_audit_rows_round_trip_json_and_utc(db_engine: Engine) -> None:
    factory = make_session_factory(db_engine)
    details = {
        "statuses": [0, 0xB000, 0xA700],
        "rule": "CT chest → PACS",
        "matched": {"all": [{"Modality": "CT"}, {"BodyPartExamined": None}]},
        "duration_s": 0.125,
        "ok": True,
    }
    with factory() as session:
        row = audit.record(session, Events.DELIVERY_ATTEMPT, "sent 3", series_uid="1.2.3.4",
                           destination="pacs", calling_ae="NODE", peer="127.0.0.1:4242", details=details)
        written_at = row.at
        session.commit()
        row_id = row.id
    assert written_at.tzinfo is not None and written_at.utcoffset() == dt.timedelta(0)
    with factory() as session:
        back = session.get_one(AuditEvent, row_id)
        assert back.details == details
        assert back.at == written_at and back.at.utcoffset() == dt.timedelta(0)
        assert (back.event, back.series_uid, back.destination, back.peer) == (
            Events.DELIVERY_ATTEMPT, "1.2.3.4", "pacs", "127.0.0.1:4242")
        # An aware datetime in another zone is the same instant once stored.
        other = dt.datetime(2026, 3, 29, 3, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        back.at = other
        session.commit()
    with factory() as session:
        again = session.get_one(AuditEvent, row_id)
        assert again.at == other
        assert again.at.tzinfo == dt.UTC and again.at.hour == 1
