"""One crash trial: a node in its own process receives 4 (or more) series on parallel associations and
forwards them by a rule to dcmtk storescp; it is killed with -9 at a random point, either while
receiving (after a random number of success statuses) or while delivering (after a random number of
instances reached the destination), restarted on the same data folder and ports; the senders re-send
what was not acknowledged; the trial waits until everything is delivered and checks
(tests/crash_checks.py) what the docs promise.

Used by tests/interop/test_crash_parallel.py (2 trials) and scripts/crash_soak.py (`--kills 20`).
A trial is replayed by its seed: the seed draws the kill point and the jitter after it.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.config import Settings
from node.db.models import Job, JobKind, JobState, Series
from node.db.session import make_engine, make_session_factory
from tests import crash_checks as checks
from tests.interop.e2e import write_rules
from tests.modality import Ack, RetryingModality, SourceInstance
from tests.nodeutil import NodeProcess, node_process_settings
from tests.peers import free_port, run_storescp

Phase = Literal["receive", "deliver"]
DESTINATION = "archive"
# Up to this long after the kill point is reached (while receiving), drawn by the seed, so that the
# kill lands anywhere in the handling of the instances in flight, not always right after a status was
# read. While delivering there is none: the node forwards about one instance per 5-10 ms, and a later
# kill would often come after the last one.
MAX_JITTER_SECONDS = 0.03
# How often the destination folder is counted while waiting for the delivery kill point.
DELIVERY_POLL_SECONDS = 0.002


@dataclass
class TrialReport:
    seed: int
    phase: Phase
    instances: int
    kill_point: str = ""
    killed_at: float = 0.0  # seconds since the senders started
    acknowledged_at_kill: int = 0
    delivered_at_kill: int = 0
    lost: int = 0  # acknowledged instances with any problem (must be 0)
    duplicates: int = 0
    allowed_duplicates: int = 0
    follow_ups: int = 0
    recovered_jobs: int = 0
    restart_seconds: float = 0.0  # from the kill until the node listened again
    recover_seconds: float = 0.0  # from the kill until every instance was at the destination
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"seed {self.seed} {self.phase:7s} killed at {self.killed_at:6.3f} s ({self.kill_point}); "
            f"acknowledged {self.acknowledged_at_kill}/{self.instances}, delivered {self.delivered_at_kill}; "
            f"lost {self.lost}; duplicates delivered {self.duplicates} (allowed {self.allowed_duplicates}, "
            f"{self.recovered_jobs} deliveries recovered); follow-ups {self.follow_ups}; "
            f"restart {self.restart_seconds:.2f} s, recovered in {self.recover_seconds:.2f} s"
        )


class _Progress:
    """Counts success statuses across the senders, for the kill point."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def add(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, target: int, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= target, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {target} acknowledgements")


class _Destination:
    """What storescp has written so far (+uf: one file per receipt, so duplicates stay countable)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._uids: dict[Path, str] = {}

    def wait_for_count(self, target: int, timeout: float) -> None:
        """Until storescp has written `target` files (counted often: the kill point must not drift)."""
        deadline = time.monotonic() + timeout
        while sum(1 for _ in os.scandir(self.folder)) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {target} instances delivered")
            time.sleep(DELIVERY_POLL_SECONDS)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def uids(self) -> set[str]:
        for path in self.files():
            if path not in self._uids:
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                except (OSError, EOFError, pydicom.errors.InvalidDicomError):
                    continue  # storescp is still writing it
                self._uids[path] = str(ds.SOPInstanceUID)
        return set(self._uids.values())


def run_trial(
    work: Path,
    seed: int,
    phase: Phase,
    sources: Sequence[Sequence[SourceInstance]],
    quiet_seconds: float = 2.0,
    timeout: float = 180.0,
) -> TrialReport:
    rng = random.Random(seed)
    by_uid = {i.sop_instance_uid: i for series in sources for i in series}
    report = TrialReport(seed=seed, phase=phase, instances=len(by_uid))
    work.mkdir(parents=True, exist_ok=True)
    with run_storescp(work / "destination", extra_args=("+uf",)) as scp:
        destination = _Destination(scp.out_dir)
        archive = {"ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port}
        rules = write_rules(work / "rules.yaml", {DESTINATION: archive})
        settings = node_process_settings(
            work,
            free_port(),
            rules,
            completion={"quiet_seconds": quiet_seconds},
            forward={"backoff_initial_seconds": 0.5, "backoff_factor": 1.0, "max_attempts": 20},
        )
        sessions = make_session_factory(make_engine(Settings.model_validate(settings).resolved_database_url))
        spool = checks.SpoolLayout(Path(settings["data_dir"]) / "spool")
        node = NodeProcess(work, settings).start()
        progress = _Progress()
        started = time.monotonic()

        def clock() -> float:
            return time.monotonic() - started

        modalities = [
            RetryingModality(f"MOD{n + 1}", node.port, series, clock, progress.add, give_up_after=timeout)
            for n, series in enumerate(sources)
        ]
        try:
            for modality in modalities:
                modality.start()
            target = rng.randint(1, len(by_uid) - 1)
            if phase == "receive":
                progress.wait_for(target, timeout)
                report.kill_point = f"after {target} success statuses"
            else:
                destination.wait_for_count(target, timeout)
                report.kill_point = f"after {target} instances reached the destination"
            jitter = rng.uniform(0, MAX_JITTER_SECONDS)
            if phase == "receive":
                time.sleep(jitter)
            node.kill9()
            report.killed_at = clock()
            for modality in modalities:
                if not modality.idle.wait(timeout):
                    raise AssertionError(f"{modality.ae_title} still associated {timeout}s after the kill")
            at_kill = _acks(modalities)
            report.acknowledged_at_kill = len(at_kill)
            report.delivered_at_kill = len(destination.files())
            after_kill = checks.durable(at_kill, by_uid, sessions, spool, report.killed_at, "after the kill")

            node.start()
            report.restart_seconds = clock() - report.killed_at
            deadline = time.monotonic() + timeout
            while not _all_delivered(modalities, destination, by_uid, sessions):
                if time.monotonic() > deadline:
                    report.problems.append(
                        f"{timeout:g} s after the restart, still waiting for: "
                        + _still_missing(modalities, destination, by_uid, sessions)
                    )
                    break
                time.sleep(0.05)  # poll interval; the condition decides
            report.recover_seconds = clock() - report.killed_at
            for modality in modalities:
                modality.stop()
                modality.join(timeout)
                if modality.error:
                    report.problems.append(modality.error)
                report.problems += [
                    f"{modality.ae_title}: {uid} got status 0x{status:04X}"
                    for uid, status in modality.refusals
                    if status >> 8 != 0xA7  # out of resources: retried by the sender, allowed
                ]
            acks = _acks(modalities)
            _final_checks(report, acks, at_kill, after_kill, by_uid, sessions, spool, destination)
        finally:
            node.stop()
    return report


def _acks(modalities: Sequence[RetryingModality]) -> dict[str, Ack]:
    out: dict[str, Ack] = {}
    for modality in modalities:
        out.update(modality.acknowledged())
    return out


def _all_delivered(
    modalities: Sequence[RetryingModality],
    destination: _Destination,
    by_uid: dict[str, SourceInstance],
    sessions: sessionmaker[Session],
) -> bool:
    if any(m.is_alive() for m in modalities) or not set(by_uid) <= destination.uids():
        return False
    with sessions() as session:
        generations = sum(session.scalars(select(Series.generation)))
        states = list(session.scalars(select(Job.state).where(Job.kind == JobKind.DELIVER)))
    return len(states) == generations and all(s == JobState.DONE for s in states)


def _still_missing(
    modalities: Sequence[RetryingModality],
    destination: _Destination,
    by_uid: dict[str, SourceInstance],
    sessions: sessionmaker[Session],
) -> str:
    parts = [f"{m.ae_title}: {len(m.pending())} unacknowledged" for m in modalities if m.pending()]
    absent = sorted(set(by_uid) - destination.uids())
    if absent:
        parts.append(f"{len(absent)} instances not at the destination (first {absent[0]})")
    with sessions() as session:
        states = [
            f"delivery {j.id} gen {j.generation} {j.state}"
            for j in session.scalars(select(Job))
            if j.kind == JobKind.DELIVER and j.state != JobState.DONE
        ]
    return "; ".join(parts + states) or "the delivery jobs of every generation"


def _final_checks(
    report: TrialReport,
    acks: dict[str, Ack],
    at_kill: dict[str, Ack],
    after_kill: list[checks.Problem],
    by_uid: dict[str, SourceInstance],
    sessions: sessionmaker[Session],
    spool: checks.SpoolLayout,
    destination: _Destination,
) -> None:
    received = checks.read_destination(destination.files())
    later = {uid: ack for uid, ack in acks.items() if uid not in at_kill}
    per_instance = [
        *after_kill,
        *checks.durable(at_kill, by_uid, sessions, spool, report.killed_at, "after the restart"),
        *checks.delivered(by_uid, at_kill, received, report.killed_at),
        *checks.durable(later, by_uid, sessions, spool, None, "at the end"),
        *checks.delivered(by_uid, later, received, None),
    ]
    report.lost = len({p.sop_instance_uid for p in per_instance})
    report.problems += [str(p) for p in per_instance]
    report.problems += checks.stored_once(by_uid, acks, sessions)
    report.problems += checks.spool_is_clean(sessions, spool)
    report.problems += checks.completed_once_per_generation(sessions, DESTINATION)
    duplicates = checks.duplicates_as_documented(received, sessions)
    report.duplicates, report.allowed_duplicates = duplicates.delivered, duplicates.allowed
    report.problems += duplicates.problems
    with sessions() as session:
        report.follow_ups = sum(g - 1 for g in session.scalars(select(Series.generation)))
        report.recovered_jobs = len(checks.recovered_deliveries(session))
