"""node.readiness: each check says what it found and names what is wrong; liveness of the monitor."""

from __future__ import annotations

import threading
from pathlib import Path

from node.analysis import NoAnalysis
from node.config import HealthSettings
from node.health import HealthMonitor
from node.readiness import check_database, check_dicom, check_model, check_spool, check_workers, report


def test_spool_ready_when_writable_with_space(tmp_path: Path) -> None:
    check = check_spool(tmp_path, 0)
    assert check.ok and "writable" in check.detail
    assert list(tmp_path.iterdir()) == []  # the probe file is removed


def test_spool_not_ready_when_its_staging_dir_cannot_take_a_file(tmp_path: Path) -> None:
    staging = tmp_path / "tmp"
    staging.write_text("a file where the staging directory should be")
    check = check_spool(staging, 0)
    assert not check.ok and "spool not writable" in check.detail and str(staging) in check.detail


def test_spool_not_ready_below_the_free_space_floor(tmp_path: Path) -> None:
    check = check_spool(tmp_path, 10**18)
    assert not check.ok and "health.spool_min_free_bytes" in check.detail


def test_database_check_reports_the_driver_error() -> None:
    def down() -> None:
        raise ConnectionRefusedError("connection refused\nsecond line")

    check = check_database(down)
    assert not check.ok and check.detail == "database unreachable: ConnectionRefusedError: connection refused"
    assert check_database(lambda: None).ok


def test_model_check() -> None:
    assert check_model(False, NoAnalysis()).ok
    missing = check_model(True, NoAnalysis())
    assert not missing.ok and "no classifier" in missing.detail


def test_report_lists_every_check_and_the_failing_ones() -> None:
    ready, body = report({"dicom": check_dicom(11112, False), "workers": check_workers(["worker x died"])})
    assert not ready
    assert body["not_ready"] == ["workers"]
    assert body["checks"]["dicom"] == {"ok": True, "detail": "listening on port 11112"}
    assert body["checks"]["workers"] == {"ok": False, "detail": "worker x died"}
    assert not check_dicom(11112, True).ok and not check_dicom(None, False).ok
    assert not check_workers(None).ok


def test_liveness_ignores_database_trouble_but_not_a_stale_monitor(tmp_path: Path) -> None:
    def down() -> None:
        raise OSError("database gone")

    settings = HealthSettings(interval_seconds=1.0)
    monitor = HealthMonitor(tmp_path / "health.json", [], settings, down, threading.Event())
    assert monitor.liveness() is None  # not checked yet
    health = monitor.check()
    assert not health.healthy  # the health file reports the database ...
    assert monitor.liveness() == []  # ... but the process itself is alive
    assert monitor.checked_at is not None
    stale = monitor.liveness(now=monitor.checked_at + 10.0)
    assert stale is not None and "has not checked for 10 s" in stale[0]
