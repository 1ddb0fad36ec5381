"""Is the node ready to take work? The checks behind `GET /health/ready` (docs/operations.md).

Ready means every check passes:

- workers: the health monitor's loop turns and every worker is alive and not stuck (node.health);
- database: it answers a query now;
- spool: a file can be created in its staging directory now, and the disk has at least
  `health.spool_min_free_bytes` free;
- model: when classification is enabled, a classifier model is loaded;
- dicom: the DICOM SCP is listening.

Each check returns a line saying what it found; one that fails names what is wrong.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.analysis import NoAnalysis, SeriesAnalyser


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


def _first_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:300]


def check_database(ping: Callable[[], None]) -> Check:
    try:
        ping()
    except Exception as exc:  # any driver error means "not reachable", which is what this reports
        return Check(False, f"database unreachable: {_first_line(exc)}")
    return Check(True, "answers")


def check_spool(staging_dir: Path, min_free_bytes: int) -> Check:
    """Create (and remove) an empty file where incoming instances are staged; then the free space."""
    try:
        fd, name = tempfile.mkstemp(prefix=".ready-", dir=staging_dir)
        os.close(fd)
        os.unlink(name)
        free = shutil.disk_usage(staging_dir).free
    except OSError as exc:
        return Check(False, f"spool not writable: {staging_dir}: {exc.strerror or exc}")
    if free < min_free_bytes:
        return Check(
            False,
            f"spool disk nearly full: {free} bytes free at {staging_dir}, "
            f"below health.spool_min_free_bytes {min_free_bytes}",
        )
    return Check(True, f"writable, {free} bytes free")


def check_model(classify_enabled: bool, analyser: SeriesAnalyser | None) -> Check:
    if not classify_enabled:
        return Check(True, "classification disabled")
    if analyser is None or isinstance(analyser, NoAnalysis):
        return Check(False, "classification is enabled but no classifier is loaded")
    engine = getattr(analyser, "engine", None)
    package = getattr(engine, "package", None)
    model_id = getattr(package, "model_id", None)
    if model_id is not None:
        return Check(True, f"{model_id} loaded on {getattr(engine, 'device_name', '?')}")
    return Check(True, f"analyser {type(analyser).__name__}")


def check_dicom(port: int | None, draining: bool) -> Check:
    if port is None:
        return Check(False, "the DICOM SCP is not listening")
    if draining:
        return Check(False, "the node is shutting down: new associations are refused")
    return Check(True, f"listening on port {port}")


def check_workers(problems: list[str] | None) -> Check:
    """From the liveness problems (None: the monitor has not reported yet)."""
    if problems is None:
        return Check(False, "the health monitor has not reported yet")
    if problems:
        return Check(False, "; ".join(problems))
    return Check(True, "alive and turning")


def report(checks: dict[str, Check]) -> tuple[bool, dict[str, Any]]:
    """(ready, JSON body): the body lists every check and, under `not_ready`, the failing ones."""
    ready = all(c.ok for c in checks.values())
    return ready, {
        "ready": ready,
        "checks": {name: c.to_json() for name, c in checks.items()},
        "not_ready": [name for name, c in checks.items() if not c.ok],
    }
