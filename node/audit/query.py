"""Read side of the audit: the full story of one series, the latest events, and their text/JSON output.

The query functions (`series_story`, `recent_events`) return plain dicts of JSON-ready values (ISO 8601
UTC timestamps, sorted keys on output) so that the CLI, the web API and tests share one shape. The
`cmd_*` functions print to stdout and return a process exit code; they are wired into argparse by
node/cli.py. Nothing here writes to the database.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from pydicom.uid import UID
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, Instance, Job, JobState, QuarantinedInstance, SentInstance, Series
from node.errors import NotFoundError

logger = logging.getLogger(__name__)

# Exit codes shared by the audit and deliveries commands.
EXIT_OK = 0
EXIT_REFUSED = 1  # the request is understood but the current state does not allow it
EXIT_USAGE = 2  # bad arguments, or the named object does not exist

# Events that are written once per instance: the text timeline folds long runs of them into one line.
_PER_INSTANCE_EVENTS = frozenset(
    {
        "instance.stored",
        "instance.duplicate",
        "instance.replaced",
        "instance.replacement_quarantined",
        "instance.quarantined",
    }
)
_FOLD_AT = 4
_JOB_HEADERS = (
    "ID",
    "KIND",
    "GEN",
    "DESTINATION",
    "STATE",
    "ATTEMPTS",
    "SENT",
    "RULES",
    "UPDATED",
    "LAST ERROR",
)

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# ---------------------------------------------------------------------------------------------------------
# Formatting helpers (shared with node.deliveries)


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds and a `Z` suffix (fixed width, sorts as text); None stays None."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime: the audit only handles UTC-aware datetimes")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def text_time(value: dt.datetime | None) -> str:
    """Compact UTC time for text tables: `2026-11-23 09:06:19.123`; `-` for None."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def parse_since(text: str) -> dt.datetime:
    """Parse `--since`: ISO 8601 (naive means UTC; a date alone means its midnight UTC) or a relative
    age such as `30m`, `24h`, `7d`, `1w`, `1d12h`. Raises ValueError (argparse makes it a usage error)."""
    stripped = text.strip()
    relative = stripped.replace(" ", "")
    if relative and _RELATIVE.sub("", relative) == "":
        seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _RELATIVE.findall(relative))
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    try:
        value = dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: give ISO 8601 (2026-11-23, 2026-11-23T09:00:00Z) or an age (24h, 7d)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def dumps(value: Any) -> str:
    """The one JSON style of every `--json` output."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "", show_header: bool = True
) -> str:
    """Aligned text columns; the last column is not padded (messages may be long)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells if show_header else cells[1:]:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append((indent + "  ".join(padded)).rstrip())
    return "\n".join(lines)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - unreachable


def transfer_syntax_name(uid: str) -> str:
    name = UID(uid).name
    return "" if name == uid else name


# ---------------------------------------------------------------------------------------------------------
# Row -> dict


def event_dict(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": iso(row.at),
        "event": row.event,
        "series_uid": row.series_uid,
        "sop_instance_uid": row.sop_instance_uid,
        "job_id": row.job_id,
        "destination": row.destination,
        "calling_ae": row.calling_ae,
        "peer": row.peer,
        "message": row.message,
        "details": row.details,
    }


def sent_counts(session: Session, job_ids: Sequence[int]) -> dict[int, int]:
    """How many instances each job's destination has acknowledged (sent_instances rows)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(SentInstance.job_id, func.count())
        .where(SentInstance.job_id.in_(job_ids))
        .group_by(SentInstance.job_id)
    ).all()
    return {job_id: count for job_id, count in rows}


def quarantined_counts(session: Session, job_ids: Sequence[int]) -> dict[int, int]:
    """How many instances each delivery quarantined (quarantined_instances rows: refused or unreadable)."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(QuarantinedInstance.job_id, func.count())
        .where(QuarantinedInstance.job_id.in_(job_ids))
        .group_by(QuarantinedInstance.job_id)
    ).all()
    return {job_id: count for job_id, count in rows}


def job_dict(job: Job, sent: int, quarantined: int = 0) -> dict[str, Any]:
    """A job for the CLI and the HTTP read side. `partial`: a done delivery that quarantined instances."""
    return {
        "job_id": job.id,
        "kind": job.kind,
        "generation": job.generation,
        "destination": job.destination or None,
        "state": job.state,
        "attempts": job.attempts,
        "next_run_at": iso(job.next_run_at),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "finished_at": iso(job.finished_at),
        "last_error": job.last_error,
        "rules": list(job.rules) if job.rules is not None else None,
        "sent_instances": sent,
        "quarantined_instances": quarantined,
        "partial": job.state == JobState.DONE and quarantined > 0,
        "target": plan_target(job.plan),
        "rules_sha256": job.plan.get("rules_sha256") if isinstance(job.plan, dict) else None,
    }


def _job_state(job: dict[str, Any]) -> str:
    """`done (3 quarantined)` for a partial delivery, the state otherwise (the `audit series` table)."""
    if job["partial"]:
        return f"{job['state']} ({job['quarantined_instances']} quarantined)"
    return str(job["state"])


def plan_target(plan: Any) -> str | None:
    """`AE@host:port` of a delivery's frozen plan (None for route jobs and plans without a destination)."""
    destination = plan.get("destination") if isinstance(plan, dict) else None
    if not isinstance(destination, dict):
        return None
    return f"{destination.get('ae_title')}@{destination.get('host')}:{destination.get('port')}"


def _series_dict(series: Series) -> dict[str, Any]:
    return {
        "series_uid": series.series_uid,
        "study_uid": series.study_uid,
        "modality": series.modality,
        "calling_ae": series.calling_ae,
        "state": series.state,
        "generation": series.generation,
        "instance_count": series.instance_count,
        "expected_count": series.expected_count,
        "first_received_at": iso(series.first_received_at),
        "last_received_at": iso(series.last_received_at),
        "completed_at": iso(series.completed_at),
        "complete_reason": series.complete_reason,
        "files_deleted_at": iso(series.files_deleted_at),
    }


# ---------------------------------------------------------------------------------------------------------
# Queries


def series_story(session: Session, series_uid: str) -> dict[str, Any]:
    """Everything the database knows about one series: its row, an instance summary, its jobs (route and
    deliveries) and its full audit trail in order. Raises NotFoundError for an unknown UID."""
    uid = series_uid.strip()
    series = session.scalar(select(Series).where(Series.series_uid == uid))
    jobs: list[Job] = []
    if series is not None:
        jobs = list(
            session.scalars(select(Job).where(Job.series_id == series.id).order_by(Job.generation, Job.id))
        )
    job_ids = [j.id for j in jobs]
    trail_filter = AuditEvent.series_uid == uid
    if job_ids:
        # A job event written without the series UID still belongs to this story.
        trail_filter = or_(trail_filter, AuditEvent.job_id.in_(job_ids))
    events = list(
        session.scalars(select(AuditEvent).where(trail_filter).order_by(AuditEvent.at, AuditEvent.id))
    )
    if series is None:
        if not events:
            raise NotFoundError(f"series {uid} not found: no series row and no audit events for this UID")
        # Only audit rows (e.g. every instance was rejected): still tell what is known.
        return {
            "series": None,
            "instances": _instance_summary(session, None),
            "jobs": [],
            "events": [event_dict(e) for e in events],
        }

    sent = sent_counts(session, job_ids)
    quarantined = quarantined_counts(session, job_ids)
    return {
        "series": _series_dict(series),
        "instances": _instance_summary(session, series.id),
        "jobs": [job_dict(j, sent.get(j.id, 0), quarantined.get(j.id, 0)) for j in jobs],
        "events": [event_dict(e) for e in events],
    }


def _instance_summary(session: Session, series_id: int | None) -> dict[str, Any]:
    if series_id is None:
        return {"count": 0, "total_bytes": 0, "transfer_syntaxes": [], "generations": []}
    count, total = session.execute(
        select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0)).where(
            Instance.series_id == series_id
        )
    ).one()
    syntaxes = session.execute(
        select(Instance.transfer_syntax_uid, func.count(), func.coalesce(func.sum(Instance.size), 0))
        .where(Instance.series_id == series_id)
        .group_by(Instance.transfer_syntax_uid)
        .order_by(Instance.transfer_syntax_uid)
    ).all()
    generations = session.execute(
        select(Instance.generation, func.count())
        .where(Instance.series_id == series_id)
        .group_by(Instance.generation)
        .order_by(Instance.generation)
    ).all()
    return {
        "count": int(count),
        "total_bytes": int(total),
        "transfer_syntaxes": [
            {"uid": ts, "name": transfer_syntax_name(ts), "count": int(n), "bytes": int(b)}
            for ts, n, b in syntaxes
        ],
        "generations": [{"generation": int(g), "count": int(n)} for g, n in generations],
    }


def recent_events(
    session: Session,
    limit: int = 50,
    event: str | None = None,
    since: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """The latest audit events, newest first. `event` is a name prefix ("delivery." matches every delivery
    event, "delivery.dead_letter" just that one); `since` keeps events at or after that time (naive = UTC)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    query = select(AuditEvent)
    if event:
        query = query.where(AuditEvent.event.startswith(event, autoescape=True))
    if since is not None:
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        query = query.where(AuditEvent.at >= since)
    query = query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)
    return [event_dict(e) for e in session.scalars(query)]


# ---------------------------------------------------------------------------------------------------------
# Text rendering


def _fold_runs(events: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """Timeline rows (time, event, destination, job, message); runs of per-instance events are folded."""
    rows: list[tuple[str, str, str, str, str]] = []
    i = 0
    while i < len(events):
        ev = events[i]
        j = i + 1
        if ev["event"] in _PER_INSTANCE_EVENTS:
            while j < len(events) and events[j]["event"] == ev["event"]:
                j += 1
        run = events[i:j]
        if len(run) >= _FOLD_AT:
            first = dt.datetime.fromisoformat(run[0]["at"])
            last = dt.datetime.fromisoformat(run[-1]["at"])
            sizes = [e["details"].get("size") for e in run if isinstance(e.get("details"), dict)]
            total = sum(s for s in sizes if isinstance(s, int))
            size_note = f", {human_bytes(total)}" if total else ""
            callers = sorted({e["calling_ae"] for e in run if e["calling_ae"]})
            caller_note = f" from {', '.join(callers)}" if callers else ""
            message = (
                f"{len(run)} events{caller_note}{size_note}, until {text_time(last)}"
                f" ({(last - first).total_seconds():.1f} s); --all or --json lists each"
            )
            rows.append((text_time(first), f"{ev['event']} x{len(run)}", "", "", message))
        else:
            for e in run:
                rows.append(
                    (
                        text_time(dt.datetime.fromisoformat(e["at"])),
                        e["event"],
                        e["destination"] or "",
                        "" if e["job_id"] is None else str(e["job_id"]),
                        _describe(e),
                    )
                )
        i = j
    return rows


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _describe(e: dict[str, Any], width: int = 160) -> str:
    """The event's message on one line; for events written without one, the instance UID and details."""
    text = _one_line(e["message"])
    if text:
        return text
    parts = []
    if e.get("sop_instance_uid"):
        parts.append(e["sop_instance_uid"])
    details = e.get("details")
    if isinstance(details, dict):
        parts.extend(
            f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
            for k, v in sorted(details.items())
        )
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def iso_text(value: str | None) -> str:
    """An `iso()` string back to the text-table form."""
    return text_time(dt.datetime.fromisoformat(value)) if value else "-"


def render_series_story(story: dict[str, Any], all_events: bool = False) -> str:
    out: list[str] = []
    s = story["series"]
    if s is None:
        uid = story["events"][0]["series_uid"] if story["events"] else "?"
        out.append(f"Series {uid}: no series row (nothing was stored); audit events only")
    else:
        expected = f" (expected {s['expected_count']})" if s["expected_count"] is not None else ""
        reason = f" ({s['complete_reason']})" if s["complete_reason"] else ""
        fields = [
            ("study", s["study_uid"]),
            ("modality", s["modality"] or "-"),
            ("calling AE", s["calling_ae"] or "-"),
            ("state", f"{s['state']}, generation {s['generation']}"),
            ("instances", f"{s['instance_count']}{expected}"),
            ("first received", iso_text(s["first_received_at"])),
            ("last received", iso_text(s["last_received_at"])),
            ("completed", iso_text(s["completed_at"]) + (reason if s["completed_at"] else "")),
            ("files deleted", iso_text(s["files_deleted_at"])),
        ]
        out.append(f"Series {s['series_uid']}  (times in UTC)")
        out.append(table(["", ""], fields, indent="  ", show_header=False))

    inst = story["instances"]
    out.append("")
    out.append(f"Instances: {inst['count']} stored, {human_bytes(inst['total_bytes'])}")
    if inst["transfer_syntaxes"]:
        out.append(
            table(
                ["TRANSFER SYNTAX", "NAME", "COUNT", "SIZE"],
                [
                    (t["uid"], t["name"] or "-", t["count"], human_bytes(t["bytes"]))
                    for t in inst["transfer_syntaxes"]
                ],
                indent="  ",
            )
        )
        gens = ", ".join(f"{g['generation']}: {g['count']}" for g in inst["generations"])
        out.append(f"  by generation: {gens}")

    out.append("")
    if story["jobs"]:
        out.append("Jobs:")
        out.append(
            table(
                _JOB_HEADERS,
                [
                    (
                        j["job_id"],
                        j["kind"],
                        j["generation"],
                        j["destination"] or "-",
                        _job_state(j),
                        j["attempts"],
                        j["sent_instances"] if j["kind"] == "deliver" else "-",
                        ",".join(j["rules"]) if j["rules"] else "-",
                        iso_text(j["updated_at"]),
                        _one_line(j["last_error"]) if j["last_error"] else "-",
                    )
                    for j in story["jobs"]
                ],
                indent="  ",
            )
        )
    else:
        out.append("Jobs: none")

    out.append("")
    out.append(f"Timeline ({len(story['events'])} events, UTC):")
    if all_events:
        rows = [
            (
                iso_text(e["at"]),
                e["event"],
                e["destination"] or "",
                "" if e["job_id"] is None else str(e["job_id"]),
                _describe(e),
            )
            for e in story["events"]
        ]
    else:
        rows = _fold_runs(story["events"])
    out.append(table(["TIME", "EVENT", "DESTINATION", "JOB", "MESSAGE"], rows, indent="  "))
    return "\n".join(out)


def render_events(events: Sequence[dict[str, Any]]) -> str:
    if not events:
        return "no audit events match"
    return table(
        ["TIME (UTC)", "EVENT", "SERIES", "DESTINATION", "JOB", "MESSAGE"],
        [
            (
                iso_text(e["at"]),
                e["event"],
                e["series_uid"] or "-",
                e["destination"] or "-",
                "-" if e["job_id"] is None else e["job_id"],
                _describe(e),
            )
            for e in events
        ],
    )


# ---------------------------------------------------------------------------------------------------------
# Commands


def cmd_audit_series(session: Session, uid: str, as_json: bool, all_events: bool = False) -> int:
    """`dicom-node audit series UID [--json] [--all]`. Exit 2 (message on stderr) for an unknown series."""
    try:
        story = series_story(session, uid)
    except NotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(dumps(story) if as_json else render_series_story(story, all_events=all_events))
    return EXIT_OK


def cmd_audit_recent(
    session: Session,
    limit: int,
    event: str | None,
    since: dt.datetime | str | None,
    as_json: bool,
) -> int:
    """`dicom-node audit recent [--limit N] [--event PREFIX] [--since ISO|AGE] [--json]`, newest first."""
    try:
        since_dt = parse_since(since) if isinstance(since, str) else since
        events = recent_events(session, limit=limit, event=event, since=since_dt)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(dumps(events) if as_json else render_events(events))
    return EXIT_OK
