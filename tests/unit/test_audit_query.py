"""The audit read side: `series_story`, `recent_events`, their commands' text and JSON, and the example SQL
of docs/audit.md, against a real migrated database (SQLite file in tmp_path; PostgreSQL too when it runs:
the `db_engine` fixture of tests/conftest.py is parametrized over both)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from node import audit
from node.audit import Events
from node.audit.query import (
    cmd_audit_recent,
    cmd_audit_series,
    iso,
    parse_since,
    recent_events,
    series_story,
)
from node.db.models import Instance, Job, JobKind, JobState, SentInstance, Series, SeriesState
from node.db.session import make_session_factory
from node.errors import NotFoundError

# The UID the example queries in docs/audit.md use, so that the docs' SQL can be run against this story.
SERIES_UID = "1.2.826.0.1.3680043.8.498.1"
OTHER_UID = "1.2.826.0.1.3680043.8.498.2"
T0 = dt.datetime(2026, 11, 23, 8, 0, 0, tzinfo=dt.UTC)
EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def event(session: Session, when: float, name: str, message: str = "", **kwargs: object) -> None:
    row = audit.record(session, name, message, **kwargs)  # type: ignore[arg-type]
    row.at = at(when)


def build_story(session: Session) -> dict[str, int]:
    """One routed series: 6 instances (4 uncompressed, 2 JPEG 2000, one a follow-up), a done route job, a
    done delivery to PACS and a dead-lettered one to QA; and a second series to be filtered out."""
    series = Series(
        series_uid=SERIES_UID,
        study_uid="1.2.826.0.1.3680043.8.498.100",
        modality="CT",
        calling_ae="CT01",
        state=SeriesState.ROUTED,
        generation=2,
        instance_count=6,
        expected_count=None,
        first_received_at=at(0),
        last_received_at=at(70),
        completed_at=at(40),
        complete_reason="quiet_time",
    )
    session.add(series)
    session.flush()
    event(
        session,
        0,
        Events.ASSOCIATION_ACCEPTED,
        "association from CT01",
        calling_ae="CT01",
        peer="127.0.0.1:40000",
        details={"called_ae": "NODE"},
    )
    instances = []
    for i in range(6):
        ts = EXPLICIT_LE if i < 4 else J2K_LOSSLESS
        generation = 2 if i == 5 else 1
        sop = f"{SERIES_UID}.{i + 1}"
        instance = Instance(
            series_id=series.id,
            sop_instance_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid=ts,
            instance_number=i + 1,
            path=f"x/{i}.dcm",
            size=1000 + i,
            sha256="0" * 64,
            generation=generation,
            received_at=at(1 + i if i < 5 else 70),
        )
        session.add(instance)
        instances.append(instance)
        event(
            session,
            1 + i if i < 5 else 70,
            Events.INSTANCE_STORED,
            f"stored {sop}",
            series_uid=SERIES_UID,
            sop_instance_uid=sop,
            calling_ae="CT01",
            details={"size": 1000 + i, "transfer_syntax": ts},
        )
    session.flush()
    event(
        session,
        40,
        Events.SERIES_COMPLETE,
        "series complete: 5 instances (quiet_time)",
        series_uid=SERIES_UID,
        details={"reason": "quiet_time", "instance_count": 5, "generation": 1},
    )
    route = Job(
        kind=JobKind.ROUTE,
        series_id=series.id,
        generation=1,
        destination="",
        state=JobState.DONE,
        attempts=1,
        next_run_at=at(40),
        created_at=at(40),
        updated_at=at(41),
        finished_at=at(41),
    )
    pacs = Job(
        kind=JobKind.DELIVER,
        series_id=series.id,
        generation=1,
        destination="PACS",
        state=JobState.DONE,
        attempts=1,
        next_run_at=at(41),
        created_at=at(41),
        updated_at=at(45),
        finished_at=at(45),
        rules=["ct-to-pacs"],
    )
    qa = Job(
        kind=JobKind.DELIVER,
        series_id=series.id,
        generation=1,
        destination="QA",
        state=JobState.FAILED,
        attempts=3,
        next_run_at=at(60),
        created_at=at(41),
        updated_at=at(60),
        finished_at=at(60),
        last_error="association rejected: calling AE not recognised",
        rules=["all-ct", "qa"],
    )
    session.add_all([route, pacs, qa])
    session.flush()
    for instance in instances[:5]:
        session.add(SentInstance(job_id=pacs.id, instance_id=instance.id, status=0, sent_at=at(44)))
    event(
        session,
        40.5,
        Events.SERIES_ANALYSED,
        "",
        series_uid=SERIES_UID,
        job_id=route.id,
        details={"analyser": "none", "took": 0.5},
    )
    event(
        session,
        41,
        Events.ROUTE_DECISION,
        "rules matched: ct-to-pacs, all-ct",
        series_uid=SERIES_UID,
        job_id=route.id,
        details={
            "matched_rules": ["ct-to-pacs", "all-ct"],
            "generation": 1,
            "destinations": {"PACS": ["ct-to-pacs"], "QA": ["all-ct", "qa"]},
        },
    )
    event(
        session,
        41.1,
        Events.DELIVERY_QUEUED,
        "delivery to PACS queued",
        series_uid=SERIES_UID,
        job_id=pacs.id,
        destination="PACS",
        details={"rules": ["ct-to-pacs"]},
    )
    event(
        session,
        41.2,
        Events.DELIVERY_QUEUED,
        "delivery to QA queued",
        series_uid=SERIES_UID,
        job_id=qa.id,
        destination="QA",
        details={"rules": ["all-ct", "qa"]},
    )
    event(
        session,
        45,
        Events.DELIVERY_DONE,
        "5 instances delivered\nin 1.2 s",
        series_uid=SERIES_UID,
        job_id=pacs.id,
        destination="PACS",
        details={"sent_this_attempt": 5, "sent_total": 5, "attempts": 1},
    )
    # A job event without the series UID must still appear in the story (matched by job id).
    event(
        session,
        44.5,
        Events.DELIVERY_ATTEMPT,
        "5 instances acknowledged",
        series_uid=SERIES_UID,
        job_id=pacs.id,
        destination="PACS",
        details={
            "attempt": 1,
            "instances": 5,
            "sent": 5,
            "failed": 0,
            "statuses": ["0x0000"],
            "failures": {},
            "error": None,
            "duration_seconds": 1.2,
        },
    )
    event(
        session,
        50,
        Events.DELIVERY_ATTEMPT,
        "attempt 3 failed",
        job_id=qa.id,
        destination="QA",
        details={
            "attempt": 3,
            "instances": 5,
            "sent": 0,
            "failed": 0,
            "statuses": [],
            "failures": {},
            "error": "association rejected",
            "duration_seconds": 0.05,
        },
    )
    event(
        session,
        60,
        Events.DELIVERY_DEAD_LETTER,
        "dead letter after 3 attempts",
        series_uid=SERIES_UID,
        job_id=qa.id,
        destination="QA",
        details={"attempts": 3},
    )
    event(
        session,
        70,
        Events.SERIES_FOLLOW_UP,
        "instance after completion: generation 2",
        series_uid=SERIES_UID,
        details={"generation": 2},
    )
    # Noise: another series and node-level events.
    other = Series(
        series_uid=OTHER_UID,
        study_uid="1.2.3",
        modality="MR",
        state=SeriesState.RECEIVING,
        first_received_at=at(80),
        last_received_at=at(80),
    )
    session.add(other)
    event(
        session,
        80,
        Events.INSTANCE_STORED,
        "stored",
        series_uid=OTHER_UID,
        sop_instance_uid=f"{OTHER_UID}.1",
        details={"size": 10},
    )
    event(session, 90, Events.RULES_LOADED, "2 rules loaded", details={"rules": 2})
    session.commit()
    return {"route": route.id, "pacs": pacs.id, "qa": qa.id}


@pytest.fixture
def session(db_engine: Engine) -> Session:
    factory = make_session_factory(db_engine)
    with factory() as s:
        yield s  # type: ignore[misc]


@pytest.fixture
def ids(session: Session) -> dict[str, int]:
    return build_story(session)


def test_series_story_has_row_instances_jobs_and_ordered_trail(session: Session, ids: dict[str, int]) -> None:
    story = series_story(session, SERIES_UID)

    s = story["series"]
    assert s["series_uid"] == SERIES_UID
    assert (s["state"], s["generation"], s["instance_count"]) == ("routed", 2, 6)
    assert s["complete_reason"] == "quiet_time"
    assert s["completed_at"] == "2026-11-23T08:00:40.000000Z"
    assert s["files_deleted_at"] is None

    inst = story["instances"]
    assert inst["count"] == 6
    assert inst["total_bytes"] == sum(1000 + i for i in range(6))
    by_ts = {t["uid"]: t for t in inst["transfer_syntaxes"]}
    assert by_ts[EXPLICIT_LE]["count"] == 4
    assert by_ts[EXPLICIT_LE]["name"] == "Explicit VR Little Endian"
    assert by_ts[J2K_LOSSLESS]["count"] == 2
    assert inst["generations"] == [{"generation": 1, "count": 5}, {"generation": 2, "count": 1}]

    jobs = {j["job_id"]: j for j in story["jobs"]}
    assert set(jobs) == set(ids.values())
    assert jobs[ids["route"]]["kind"] == "route" and jobs[ids["route"]]["destination"] is None
    assert jobs[ids["pacs"]]["sent_instances"] == 5
    qa = jobs[ids["qa"]]
    assert (qa["state"], qa["attempts"], qa["rules"]) == ("failed", 3, ["all-ct", "qa"])
    assert "calling AE" in qa["last_error"]

    names = [e["event"] for e in story["events"]]
    assert names[0] == Events.INSTANCE_STORED  # association event carries no series UID
    assert names.count(Events.INSTANCE_STORED) == 6
    assert Events.DELIVERY_ATTEMPT in names  # found through its job id
    assert Events.RULES_LOADED not in names
    assert all(e["series_uid"] in (SERIES_UID, None) for e in story["events"])
    times = [e["at"] for e in story["events"]]
    assert times == sorted(times)
    dead = next(e for e in story["events"] if e["event"] == Events.DELIVERY_DEAD_LETTER)
    assert (dead["destination"], dead["job_id"], dead["details"]) == ("QA", ids["qa"], {"attempts": 3})


def test_series_story_unknown_uid_raises_not_found_with_the_uid(
    session: Session, ids: dict[str, int]
) -> None:
    with pytest.raises(NotFoundError, match=r"1\.2\.3\.4\.5"):
        series_story(session, "1.2.3.4.5")


def test_series_story_with_only_audit_rows(session: Session) -> None:
    """Every instance rejected: no series row, but the audit knows the UID; the story says so."""
    event(
        session,
        1,
        Events.INSTANCE_REJECTED,
        "not a storage SOP class",
        series_uid="1.2.9",
        details={"status": "0xA900"},
    )
    session.commit()
    story = series_story(session, "1.2.9")
    assert story["series"] is None and story["jobs"] == []
    assert [e["event"] for e in story["events"]] == [Events.INSTANCE_REJECTED]


def test_cmd_audit_series_json_is_stable_and_parseable(
    session: Session, ids: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_audit_series(session, SERIES_UID, as_json=True) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data == json.loads(json.dumps(series_story(session, SERIES_UID)))
    assert out == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    for e in data["events"]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", e["at"])


def test_cmd_audit_series_text_is_a_readable_timeline(
    session: Session, ids: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_audit_series(session, SERIES_UID, as_json=False) == 0
    out = capsys.readouterr().out
    assert f"Series {SERIES_UID}" in out
    assert "routed, generation 2" in out
    assert "Explicit VR Little Endian" in out and "JPEG 2000" in out
    # The five consecutive stored instances fold into one line; the follow-up one stays on its own.
    assert "instance.stored x5" in out
    assert "5 events from CT01, 4.9 KiB" in out
    timeline = out.split("Timeline", 1)[1].splitlines()
    dead = next(line for line in timeline if "delivery.dead_letter" in line)
    assert dead.split()[:4] == ["2026-11-23", "08:01:00.000", "delivery.dead_letter", "QA"]
    # Multi-line messages are flattened, columns aligned: EVENT starts in the same column on every line.
    assert any("5 instances delivered in 1.2 s" in line for line in timeline)
    # An event written without a message shows its details instead.
    analysed = next(line for line in timeline if "series.analysed" in line)
    assert analysed.endswith("analyser=none took=0.5")
    rows = [line for line in timeline if line.startswith("  2026-")]
    assert len({line.index(line.split()[2]) for line in rows}) == 1
    jobs_block = out.split("Jobs:", 1)[1].split("Timeline", 1)[0]
    qa_line = next(line for line in jobs_block.splitlines() if " QA " in line)
    assert "failed" in qa_line and "all-ct,qa" in qa_line and "calling AE not recognised" in qa_line

    assert cmd_audit_series(session, SERIES_UID, as_json=False, all_events=True) == 0
    full = capsys.readouterr().out
    assert "instance.stored x5" not in full
    assert full.count("instance.stored") == 6


def test_cmd_audit_series_unknown_exits_2_on_stderr(
    session: Session, ids: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_audit_series(session, "9.9.9", as_json=True) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "9.9.9" in captured.err and "not found" in captured.err


def test_recent_events_newest_first_with_limit(session: Session, ids: dict[str, int]) -> None:
    events = recent_events(session, limit=3)
    # Same time (70 s): the later row (higher id) comes first.
    assert [e["event"] for e in events] == [
        Events.RULES_LOADED,
        Events.INSTANCE_STORED,
        Events.SERIES_FOLLOW_UP,
    ]
    assert events[1]["series_uid"] == OTHER_UID
    assert len(recent_events(session)) == 19  # every row: the default limit (50) is above the count
    with pytest.raises(ValueError):
        recent_events(session, limit=0)


def test_recent_events_event_prefix_and_since(session: Session, ids: dict[str, int]) -> None:
    delivery = recent_events(session, event="delivery.")
    assert [e["event"] for e in delivery] == [
        Events.DELIVERY_DEAD_LETTER,
        Events.DELIVERY_ATTEMPT,
        Events.DELIVERY_DONE,
        Events.DELIVERY_ATTEMPT,
        Events.DELIVERY_QUEUED,
        Events.DELIVERY_QUEUED,
    ]
    assert [e["event"] for e in recent_events(session, event="delivery.dead_letter")] == [
        Events.DELIVERY_DEAD_LETTER
    ]
    # `_` and `%` are literal, not LIKE wildcards.
    assert recent_events(session, event="delivery.dead%") == []
    assert recent_events(session, event="delivery_") == []
    since = recent_events(session, since=at(60))
    assert [e["event"] for e in since] == [
        Events.RULES_LOADED,
        Events.INSTANCE_STORED,
        Events.SERIES_FOLLOW_UP,
        Events.INSTANCE_STORED,
        Events.DELIVERY_DEAD_LETTER,
    ]
    naive = recent_events(session, since=at(60).replace(tzinfo=None))
    assert naive == since
    both = recent_events(session, event="instance.", since=at(60), limit=1)
    assert [(e["event"], e["series_uid"]) for e in both] == [(Events.INSTANCE_STORED, OTHER_UID)]


def test_cmd_audit_recent_text_json_and_bad_since(
    session: Session, ids: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_audit_recent(session, 5, "delivery.", None, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 5 and data[0]["event"] == Events.DELIVERY_DEAD_LETTER
    assert data[0]["at"] == iso(at(60))

    assert cmd_audit_recent(session, 50, "delivery.", "2026-11-23T08:00:50Z", as_json=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["TIME", "(UTC)", "EVENT", "SERIES", "DESTINATION", "JOB", "MESSAGE"]
    assert len(out) == 3
    assert "delivery.dead_letter" in out[1] and "dead letter after 3 attempts" in out[1]

    assert cmd_audit_recent(session, 50, "nothing.", None, as_json=False) == 0
    assert capsys.readouterr().out.strip() == "no audit events match"

    assert cmd_audit_recent(session, 50, None, "yesterday", as_json=False) == 2
    assert "invalid time" in capsys.readouterr().err


def test_parse_since() -> None:
    assert parse_since("2026-11-23") == dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    assert parse_since("2026-11-23T10:00:00+01:00") == dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC)
    assert parse_since("2026-11-23T09:00:00") == dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC)
    before = dt.datetime.now(dt.UTC)
    got = parse_since("1d12h")
    assert (
        before - dt.timedelta(hours=36, seconds=5)
        < got
        <= before - dt.timedelta(hours=36) + dt.timedelta(seconds=5)
    )
    for bad in ("", "soon", "12x", "2026-13-01"):
        with pytest.raises(ValueError):
            parse_since(bad)


# --- the example SQL of docs/audit.md runs and answers -------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
_BLOCK = re.compile(r"<!-- sql: (sqlite|postgresql|both) -->\s*```sql\n(.*?)```", re.S)


def doc_queries(dialect: str) -> list[str]:
    return [
        sql for which, sql in _BLOCK.findall(DOC.read_text(encoding="utf-8")) if which in (dialect, "both")
    ]


def test_docs_example_queries_run(db_engine: Engine, session: Session, ids: dict[str, int]) -> None:
    dialect = "postgresql" if db_engine.dialect.name == "postgresql" else "sqlite"
    queries = doc_queries(dialect)
    assert len(queries) >= 3, f"docs/audit.md should carry example queries for {dialect}"
    results = {}
    with db_engine.connect() as conn:
        for sql in queries:
            results[sql] = conn.execute(text(sql)).all()
    where = [rows for sql, rows in results.items() if SERIES_UID in sql and "audit_events" in sql]
    assert where and all(rows for rows in where), "the 'where did series X go' queries found nothing"
    per_ae = [rows for sql, rows in results.items() if "calling_ae" in sql and "GROUP BY" in sql]
    assert per_ae and any(("CT01" in [str(c) for c in row]) for rows in per_ae for row in rows)


def test_docs_list_every_event_name() -> None:
    """docs/audit.md has a table row for every name in node.audit.Events, and no row for an unknown one."""
    names = {v for k, v in vars(Events).items() if k.isupper() and isinstance(v, str)}
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M))
    assert names - documented == set(), "events missing from docs/audit.md"
    assert documented - names == set(), "docs/audit.md documents events that node.audit.Events lacks"
