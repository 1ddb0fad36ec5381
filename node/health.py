"""The node's health: are its workers alive, turning, and not stuck on one job; is the database reachable.

A monitor thread in the running node checks every `health.interval_seconds` and writes the result to
`<data_dir>/health.json` (atomically: temporary file, then rename). `dicom-node health` and
deploy/healthcheck.py read that file; a file older than three intervals means the node itself is gone
or hung, and counts as unhealthy. Receiving goes on while a worker is down (instances are durable and
are routed when the worker is back), so an unhealthy node is still acknowledging: the health says that
routing or delivering has stopped, for the orchestrator or the operator to act on.

    {"healthy": false, "problems": ["worker delivery-0 is not running"], "written_at": "...Z", ...}
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import HealthSettings
from node.workers import JobWorker

logger = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
# A health file older than this many intervals is stale: the node is not running or is hung.
STALE_INTERVALS = 3


@dataclass(frozen=True)
class Health:
    healthy: bool
    problems: list[str]
    workers: list[dict[str, Any]]
    database: str  # "ok" or the error

    def to_json(self, now: dt.datetime, interval_seconds: float) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "problems": self.problems,
            "workers": self.workers,
            "database": self.database,
            "pid": os.getpid(),
            "interval_seconds": interval_seconds,
            "written_at": now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        }


def worker_problems(
    workers: Sequence[JobWorker], settings: HealthSettings, now: float
) -> list[dict[str, Any]]:
    """One entry per worker: its state and, where something is wrong, the problem in words."""
    out = []
    for worker in workers:
        beat = worker.beat
        entry: dict[str, Any] = {"name": worker.name, "kinds": worker.kinds, "alive": worker.is_alive()}
        problem = None
        if not worker.is_alive():
            problem = f"worker {worker.name} is not running"
        elif beat.job_id is not None and beat.job_started_at is not None:
            held = now - beat.job_started_at
            entry.update(job_id=beat.job_id, job_seconds=round(held, 1))
            if held > settings.stuck_job_seconds:
                problem = (
                    f"worker {worker.name} has held job {beat.job_id} for {held:.0f} s "
                    f"(health.stuck_job_seconds {settings.stuck_job_seconds:g})"
                )
        else:
            idle = now - beat.loop_at
            entry["loop_seconds_ago"] = round(idle, 1)
            if beat.outage is not None:
                entry["outage"] = beat.outage
                problem = f"worker {worker.name} cannot reach the database: {beat.outage}"
            elif idle > settings.stalled_loop_seconds:
                problem = f"worker {worker.name} has not looked for work for {idle:.0f} s"
        if problem:
            entry["problem"] = problem
        out.append(entry)
    return out


def assess(
    workers: Sequence[JobWorker], settings: HealthSettings, ping_database: Callable[[], None]
) -> Health:
    """The health now. `ping_database` raises when the database cannot be reached."""
    entries = worker_problems(workers, settings, time.monotonic())
    problems = [e["problem"] for e in entries if "problem" in e]
    try:
        ping_database()
        database = "ok"
    except Exception as exc:  # any driver error: the database is not reachable, which is what we report
        database = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        problems.append(f"database unreachable: {database}")
    return Health(not problems, problems, entries, database)


def write_health(path: Path, health: Health, interval_seconds: float) -> None:
    """Replace the health file atomically (a reader never sees half a file)."""
    data = json.dumps(health.to_json(dt.datetime.now(dt.UTC), interval_seconds), indent=2, sort_keys=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_health(path: Path, now: dt.datetime | None = None) -> tuple[bool, dict[str, Any]]:
    """(healthy, report) from a health file; a missing, unreadable or stale file is unhealthy."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False, {"problems": [f"{path} does not exist: the node is not running (or runs elsewhere)"]}
    except (OSError, ValueError) as exc:
        return False, {"problems": [f"{path} cannot be read: {exc}"]}
    try:
        written = dt.datetime.fromisoformat(str(report["written_at"]).replace("Z", "+00:00"))
        age = (now - written).total_seconds()
        interval = float(report.get("interval_seconds", 5.0))
    except (KeyError, ValueError, TypeError) as exc:
        return False, {"problems": [f"{path} is malformed: {exc}"]}
    if age > STALE_INTERVALS * interval:
        report = {
            **report,
            "problems": [
                *report.get("problems", []),
                f"{path} is {age:.0f} s old: the node (pid {report.get('pid')}) is not running or is hung",
            ],
        }
        return False, report
    return bool(report.get("healthy")), report


class HealthMonitor(threading.Thread):
    """Checks the workers and the database every interval; writes the health file; logs changes."""

    def __init__(
        self,
        path: Path,
        workers: Sequence[JobWorker],
        settings: HealthSettings,
        ping_database: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(name="health", daemon=True)
        self.path = path
        self._workers = workers
        self._settings = settings
        self._ping = ping_database
        self._stop_event = stop
        self.last: Health | None = None
        self.checked_at: float | None = None  # time.monotonic() of the last check

    def check(self) -> Health:
        health = assess(self._workers, self._settings, self._ping)
        self.checked_at = time.monotonic()
        previous = self.last.problems if self.last is not None else []
        for problem in health.problems:
            if problem not in previous:
                logger.error("unhealthy: %s", problem)
        if self.last is not None and not self.last.healthy and health.healthy:
            logger.warning("healthy again")
        self.last = health
        try:
            write_health(self.path, health, self._settings.interval_seconds)
        except OSError as exc:
            logger.error("cannot write %s: %s", self.path, exc)
        return health

    def liveness(self, now: float | None = None) -> list[str] | None:
        """The problems that make the process itself unhealthy (GET /health/live): a worker dead, stuck
        or not turning, or this monitor no longer checking. Database trouble is left to readiness: a
        restart would not fix it. None when the monitor has not checked yet."""
        if self.last is None or self.checked_at is None:
            return None
        now = time.monotonic() if now is None else now
        problems = [e["problem"] for e in self.last.workers if "problem" in e and "outage" not in e]
        age = now - self.checked_at
        if age > STALE_INTERVALS * self._settings.interval_seconds:
            problems.append(f"the health monitor has not checked for {age:.0f} s")
        return problems

    def run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # process boundary: the monitor must outlive a bug in one check
                logger.exception("health check failed")
            if self._stop_event.wait(self._settings.interval_seconds):
                return

    def remove_file(self) -> None:
        self.path.unlink(missing_ok=True)
