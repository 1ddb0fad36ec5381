"""Check a written Structured Report with the tools a site would use: dcmtk's dsrdump (it must render
the content tree) and dicom3tools' dciodvfy (no "Error" line against the IOD). Absent tools skip the
test locally and fail it under CI (tests.conftest.peer_missing)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_peer


def dsrdump(path: Path) -> str:
    """The content tree as dsrdump renders it; fails the test if dsrdump cannot read the file."""
    binary = require_peer("dsrdump", package="dcmtk")
    run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"dsrdump {path}: {run.stderr or run.stdout}"
    assert "CONTAINER" in run.stdout, run.stdout[:2000]
    return run.stdout


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's Error lines for the file (warnings are allowed: e.g. the private coding scheme)."""
    binary = require_peer("dciodvfy", package="dicom3tools")
    run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def check_sr(path: Path) -> str:
    """Both checks; returns dsrdump's rendering."""
    text = dsrdump(path)
    errors = dciodvfy_errors(path)
    assert errors == [], f"dciodvfy {path}:\n" + "\n".join(errors)
    return text
