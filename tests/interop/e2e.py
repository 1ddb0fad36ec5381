"""Helpers for end-to-end tests: write rules, send with dcmtk storescu, compare pixel data."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pydicom
import yaml
from sqlalchemy import select

from node.app import NodeService
from node.db.models import AuditEvent, Job, JobState
from tests.peers import require_binary


def write_rules(path: Path, destinations: dict[str, dict[str, object]], modality: str = "CT") -> Path:
    rules = {
        "version": 1,
        "destinations": {name: {"kind": "dimse", **d} for name, d in destinations.items()},
        "rules": [
            {
                "name": f"{modality.lower()}-everywhere",
                "when": {"attribute": "Modality", "equals": modality},
                "send_to": sorted(destinations),
            }
        ],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def storescu(
    port: int,
    files: Iterable[Path],
    called_ae: str = "NODE",
    calling_ae: str = "STORESCU",
    extra: tuple[str, ...] = (),
) -> str:
    """dcmtk storescu on one association; extra=("-xr",) also proposes RLE Lossless (see storescu --help)."""
    binary = require_binary("storescu")
    result = subprocess.run(
        [
            binary,
            "-v",
            *extra,
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout + result.stderr


def pixels_by_sop(files: Iterable[Path]) -> dict[str, bytes]:
    out = {}
    for f in files:
        ds = pydicom.dcmread(f)
        out[str(ds.SOPInstanceUID)] = bytes(ds.PixelData)
    return out


def jobs_in(node: NodeService, kind: str) -> list[Job]:
    with node.sessions() as session:
        return list(session.scalars(select(Job).where(Job.kind == kind).order_by(Job.id)))


def all_delivered(node: NodeService, expected: int) -> bool:
    deliveries = jobs_in(node, "deliver")
    return len(deliveries) == expected and all(j.state == JobState.DONE for j in deliveries)


def events(node: NodeService, name: str) -> list[AuditEvent]:
    with node.sessions() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id))
        )
