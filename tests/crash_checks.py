"""What a crash must not break, checked on the node's data directory, its database and the destination.

Every check returns a list of problems, one line each, naming the SOP Instance UID, when it was
acknowledged (seconds on the trial's clock, and relative to the kill) and where it is missing; an empty
list means the check passed. The promises checked are those of docs/receiving.md ("When the node answers
success", "Duplicates") and docs/operations.md (restart, follow-ups, the batches of recorded
acknowledgements), and docs/forwarding.md (a re-sent stalled instance).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import AuditEvent, Instance, Job, JobKind, JobState, Series
from node.deliver.deliverer import SENT_FLUSH_EVERY
from node.receive.spool import Spool
from tests.modality import Ack, SourceInstance

# The audit events that say "this instance was stored" (docs/audit.md).
STORED_EVENTS = ("instance.stored",)


@dataclass(frozen=True)
class SpoolLayout:
    """The node's spool folders, read only (node.receive.spool.Spool would clean its staging folder)."""

    root: Path

    @property
    def instances_dir(self) -> Path:
        return self.root / "instances"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def absolute(self, relative: str) -> Path:
        return self.instances_dir / relative


@dataclass(frozen=True)
class Problem:
    """A problem with one acknowledged instance: a lost one, if it is missing anywhere."""

    sop_instance_uid: str
    text: str

    def __str__(self) -> str:
        return self.text


def describe(ack: Ack, killed_at: float | None) -> str:
    when = f"acknowledged to {ack.modality} at {ack.at:.3f} s (pass {ack.send_pass}"
    if killed_at is not None:
        when += f", {killed_at - ack.at:.3f} s before the kill at {killed_at:.3f} s"
    return f"SOP Instance {ack.sop_instance_uid} (series {ack.series_uid}, {when})"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixel_sha256(path: Path) -> str:
    return hashlib.sha256(bytes(pydicom.dcmread(path).PixelData)).hexdigest()


def durable(
    acks: Mapping[str, Ack],
    sources: Mapping[str, SourceInstance],
    sessions: sessionmaker[Session],
    spool: SpoolLayout,
    killed_at: float | None,
    where: str,
) -> list[Problem]:
    """Each acknowledged instance has its database row and its `instance.stored` audit row, and its
    spooled file is there, with the bytes the row's SHA-256 names and the sender's pixel data."""
    problems: list[Problem] = []
    with sessions() as session:
        rows = {r.sop_instance_uid: r for r in session.scalars(select(Instance))}
        audited = _stored_events(session)
    for uid, ack in sorted(acks.items(), key=lambda kv: kv[1].at):
        head = describe(ack, killed_at)
        row = rows.get(uid)
        if row is None:
            layout = spool.absolute(Spool.relative_path(_study_of(sources[uid]), ack.series_uid, uid))
            on_disk = "its file is in the spool" if layout.exists() else f"and no file at {layout}"
            problems.append(Problem(uid, f"{head}: not in the database {where} ({on_disk})"))
            continue
        path = spool.absolute(row.path)
        if not path.is_file():
            problems.append(Problem(uid, f"{head}: in the database but not in the spool {where} ({path})"))
        elif file_sha256(path) != row.sha256:
            problems.append(Problem(uid, f"{head}: spooled file {path} does not match its SHA-256 {where}"))
        elif pixel_sha256(path) != sources[uid].pixel_sha256:
            problems.append(Problem(uid, f"{head}: spooled pixel data differ from the sender's {where}"))
        if not audited.get(uid):
            problems.append(Problem(uid, f"{head}: no {'/'.join(STORED_EVENTS)} audit row {where}"))
    return problems


def spool_is_clean(sessions: sessionmaker[Session], spool: SpoolLayout) -> list[str]:
    """No staging leftovers, no spooled file without a database row, no row without its file."""
    problems = [
        f"staging leftover {p} (never acknowledged, must be removed)" for p in spool.tmp_dir.iterdir()
    ]
    with sessions() as session:
        paths = {spool.absolute(p) for p in session.scalars(select(Instance.path))}
    files = {p for p in spool.instances_dir.rglob("*") if p.is_file()}
    problems += [f"spooled file {p} has no database row (an orphan)" for p in sorted(files - paths)]
    problems += [f"database row for {p} has no spooled file" for p in sorted(paths - files)]
    return problems


def stored_once(
    sources: Mapping[str, SourceInstance], acks: Mapping[str, Ack], sessions: sessionmaker[Session]
) -> list[str]:
    """In the end every sent instance is in the database once, audited as stored once and never
    replaced (a re-send carries the same bytes: docs/receiving.md, Duplicates)."""
    problems = []
    with sessions() as session:
        counts = Counter(session.scalars(select(Instance.sop_instance_uid)))
        audited = _stored_events(session)
        replaced_query = select(AuditEvent.sop_instance_uid).where(AuditEvent.event == "instance.replaced")
        replaced = set(session.scalars(replaced_query))
    for uid in sorted(sources):
        ack = acks.get(uid)
        who = describe(ack, None) if ack else f"SOP Instance {uid} (series {sources[uid].series_uid})"
        if counts[uid] != 1:
            problems.append(f"{who}: {counts[uid]} database rows, expected 1")
        stored_rows = len(audited.get(uid, []))
        if stored_rows != 1:
            problems.append(f"{who}: {stored_rows} {'/'.join(STORED_EVENTS)} audit rows, expected 1")
        if uid in replaced:
            problems.append(f"{who}: instance.replaced although every re-send carried the same bytes")
    unknown = sorted(set(counts) - set(sources))
    problems += [f"SOP Instance {uid}: in the database but never sent" for uid in unknown]
    return problems


def completed_once_per_generation(sessions: sessionmaker[Session], destination: str) -> list[str]:
    """Each series generation completed once, was routed once and has one finished delivery."""
    problems = []
    with sessions() as session:
        completions = Counter(
            session.scalars(select(AuditEvent.series_uid).where(AuditEvent.event == "series.complete"))
        )
        jobs: dict[tuple[int, str], list[Job]] = defaultdict(list)
        for job in session.scalars(select(Job)):
            jobs[(job.series_id, job.kind)].append(job)
        for series in session.scalars(select(Series)):
            if completions[series.series_uid] != series.generation:
                problems.append(
                    f"series {series.series_uid}: {completions[series.series_uid]} series.complete rows for "
                    f"{series.generation} generation(s)"
                )
            for kind in (JobKind.ROUTE, JobKind.DELIVER):
                found = sorted(j.generation for j in jobs[(series.id, kind)])
                if found != list(range(1, series.generation + 1)):
                    problems.append(f"series {series.series_uid}: {kind} jobs for generations {found}")
            for job in jobs[(series.id, JobKind.DELIVER)]:
                if job.state != JobState.DONE or job.destination != destination:
                    problems.append(
                        f"series {series.series_uid}: delivery {job.id} to {job.destination!r} is {job.state}"
                        f" ({job.last_error})"
                    )
    return problems


@dataclass(frozen=True)
class Received:
    path: Path
    sop_instance_uid: str
    pixel_sha256: str


def read_destination(files: Iterable[Path]) -> list[Received]:
    out = []
    for path in files:
        ds = pydicom.dcmread(path)
        out.append(Received(path, str(ds.SOPInstanceUID), hashlib.sha256(bytes(ds.PixelData)).hexdigest()))
    return out


@dataclass(frozen=True)
class Duplicates:
    delivered: int  # receipts beyond the first, over all instances
    allowed: int  # what the docs allow for the crashes and stalls that happened
    problems: list[str]


def delivered(
    sources: Mapping[str, SourceInstance],
    acks: Mapping[str, Ack],
    received: Sequence[Received],
    killed_at: float | None,
) -> list[Problem]:
    """Every acknowledged instance reached the destination, with the sender's pixel data; nothing else did."""
    problems: list[Problem] = []
    by_uid: dict[str, list[Received]] = defaultdict(list)
    for r in received:
        by_uid[r.sop_instance_uid].append(r)
    for uid, ack in sorted(acks.items(), key=lambda kv: kv[1].at):
        copies = by_uid.get(uid, [])
        if not copies:
            problems.append(Problem(uid, f"{describe(ack, killed_at)}: never reached the destination"))
        for copy in copies:
            if copy.pixel_sha256 != sources[uid].pixel_sha256:
                text = f"{describe(ack, killed_at)}: {copy.path} has other pixel data than the sender's"
                problems.append(Problem(uid, text))
    unknown = sorted(set(by_uid) - set(sources))
    problems += [Problem(uid, f"the destination got {uid}, which nobody sent") for uid in unknown]
    return problems


def duplicates_as_documented(received: Sequence[Received], sessions: sessionmaker[Session]) -> Duplicates:
    """Extra copies at the destination only where docs/operations.md and docs/forwarding.md allow them:
    a delivery that was running when the node died re-sends at most SENT_FLUSH_EVERY (32) instances
    whose acknowledgement was not yet recorded, a stalled or failed attempt at most the one instance
    whose response was lost. Counted per delivery job; a delivery never interrupted sends each once."""
    receipts = Counter(r.sop_instance_uid for r in received)
    problems = []
    with sessions() as session:
        job_of = {
            (j.series_id, j.generation): j
            for j in session.scalars(select(Job).where(Job.kind == JobKind.DELIVER))
        }
        recovered = Counter(
            session.scalars(select(AuditEvent.job_id).where(AuditEvent.event == "job.recovered"))
        )
        lost_responses: Counter[int] = Counter()
        for event in session.scalars(select(AuditEvent).where(AuditEvent.event == "delivery.attempt")):
            details = event.details or {}
            stalls = max(0, int(details.get("associations", 1)) - 1)
            lost_responses[event.job_id or 0] += stalls + (1 if details.get("error") else 0)
        extra_by_job: Counter[int] = Counter()
        examples: dict[int, list[str]] = defaultdict(list)
        for row in session.scalars(select(Instance)):
            extra = receipts[row.sop_instance_uid] - 1
            job = job_of.get((row.series_id, row.generation))
            if extra > 0 and job is None:
                problems.append(f"SOP Instance {row.sop_instance_uid}: {extra + 1} copies, no delivery job")
            elif extra > 0 and job is not None:
                extra_by_job[job.id] += extra
                examples[job.id].append(f"{row.sop_instance_uid} x{extra + 1}")
    allowed_total = 0
    for job_id in sorted(job_of[k].id for k in job_of):
        allowed = SENT_FLUSH_EVERY * recovered[job_id] + lost_responses[job_id]
        allowed_total += allowed
        if extra_by_job[job_id] > allowed:
            problems.append(
                f"delivery {job_id}: {extra_by_job[job_id]} duplicate(s) at the destination, the docs allow "
                f"{allowed} ({recovered[job_id]} crash recoveries x {SENT_FLUSH_EVERY}, "
                f"{lost_responses[job_id]} lost responses): {', '.join(examples[job_id][:5])}"
            )
    return Duplicates(sum(extra_by_job.values()), allowed_total, problems)


def recovered_deliveries(session: Session) -> set[int]:
    """The delivery jobs that were running when the node died (a job.recovered row at the restart)."""
    deliveries = select(Job.id).where(Job.kind == JobKind.DELIVER)
    query = select(AuditEvent.job_id).where(
        AuditEvent.event == "job.recovered", AuditEvent.job_id.in_(deliveries)
    )
    return {job_id for job_id in session.scalars(query) if job_id is not None}


def _stored_events(session: Session) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    query = select(AuditEvent.sop_instance_uid, AuditEvent.id).where(AuditEvent.event.in_(STORED_EVENTS))
    for uid, event_id in session.execute(query):
        if uid is not None:
            out[uid].append(event_id)
    return out


def _study_of(source: SourceInstance) -> str:
    return str(pydicom.dcmread(source.path, stop_before_pixels=True).StudyInstanceUID)
