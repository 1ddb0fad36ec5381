"""A running node forwards a real CT series over STOW-RS to Orthanc's DICOMweb plugin with HTTP basic
auth on: every instance arrives with its pixel data byte-identical, and the Structured Report after
them in the same study; a wrong password dead-letters the delivery at once with a precise message,
and the password appears nowhere."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from node.db.models import JobState
from node.report import report_uids
from tests.classifyutil import tiny_package
from tests.interop.e2e import all_delivered, events, jobs_in, storescu, write_rules
from tests.nodeutil import make_settings, running_node, wait_for
from tests.peers import ct_files, run_orthanc
from tests.srcheck import check_sr

pytestmark = pytest.mark.interop

USERS = {"node": "correct-horse-battery"}


def stow_rules(tmp_path: Path, url: str, password_file: Path, **settings: object) -> Path:
    return write_rules(
        tmp_path / "rules.yaml",
        {
            "web": {
                "kind": "dicomweb",
                "url": url,
                "batch_size": 10,
                "auth": {"kind": "basic", "username": "node", "password_file": str(password_file)},
                **settings,
            }
        },
    )


def test_ct_series_reaches_orthanc_over_stow_with_auth(tmp_path: Path) -> None:
    files = ct_files("qa_ge_head_tilt")
    password = tmp_path / "password"
    password.write_text(USERS["node"] + "\n")
    with run_orthanc(tmp_path / "orthanc", users=USERS) as orthanc:
        rules = stow_rules(tmp_path, orthanc.dicomweb_root, password)
        settings = make_settings(tmp_path, rules_path=str(rules), completion={"quiet_seconds": 0.5})
        with running_node(settings) as node:
            storescu(node.port, files)
            wait_for(lambda: all_delivered(node, 1), timeout=120, what="the STOW-RS delivery")
            [attempt] = events(node, "delivery.attempt")
            assert attempt.details["sent"] == len(files) and attempt.details["statuses"] == ["0x0000"]
            assert attempt.details["associations"] == 3  # 28 instances in requests of 10
        stored = orthanc.rest.files_by_sop_instance_uid()
    sent = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in files}
    assert set(stored) == set(sent)
    for uid, data in stored.items():
        assert bytes(dcmread(BytesIO(data)).PixelData) == bytes(sent[uid].PixelData)


def test_wrong_password_dead_letters_at_once(tmp_path: Path) -> None:
    files = ct_files("qa_ge_head_tilt")[:4]
    password = tmp_path / "password"
    password.write_text("not-the-password")
    with run_orthanc(tmp_path / "orthanc", users=USERS) as orthanc:
        rules = stow_rules(tmp_path, orthanc.dicomweb_root, password)
        settings = make_settings(
            tmp_path, rules_path=str(rules), completion={"quiet_seconds": 0.5}, forward={"max_attempts": 5}
        )
        with running_node(settings) as node:
            storescu(node.port, files)
            wait_for(lambda: events(node, "delivery.dead_letter"), timeout=60, what="the dead letter")
            [job] = jobs_in(node, "deliver")
            rows = events(node, "delivery.attempt") + events(node, "delivery.dead_letter")
            assert orthanc.rest.instances() == []
    assert job.state == JobState.FAILED and job.attempts == 1  # not retried
    [dead] = events_of(rows, "delivery.dead_letter")
    assert "dead letter (not retryable)" in dead.message
    assert f"destination 'web' ({orthanc.dicomweb_root}): HTTP 401 Unauthorized" in dead.message
    for row in rows:
        assert "not-the-password" not in row.message + json.dumps(row.details)
    assert "not-the-password" not in (job.last_error or "")


def events_of(rows: list, name: str) -> list:  # type: ignore[type-arg]
    return [r for r in rows if r.event == name]


def test_the_structured_report_follows_the_series_over_stow(tmp_path: Path) -> None:
    files = ct_files("kits00072_arterial_slab")
    first = dcmread(files[0])
    expected = report_uids(str(first.SeriesInstanceUID), "tiny-test@0.0.1", 1)
    password = tmp_path / "password"
    password.write_text(USERS["node"])
    with run_orthanc(tmp_path / "orthanc", users=USERS) as orthanc:
        rules = stow_rules(tmp_path, orthanc.dicomweb_root, password, structured_report=True)
        settings = make_settings(
            tmp_path,
            rules_path=str(rules),
            completion={"quiet_seconds": 0.5},
            classify={"enabled": True, "model_dir": str(tiny_package(tmp_path / "model")), "device": "cpu"},
        )
        with running_node(settings) as node:
            storescu(node.port, files)
            wait_for(lambda: all_delivered(node, 1), timeout=120, what="the STOW-RS delivery with its SR")
            [report] = events(node, "delivery.report")
        assert report.details["outcome"] == "sent", report.message
        stored = orthanc.rest.files_by_sop_instance_uid()
    assert set(stored) == {str(dcmread(f).SOPInstanceUID) for f in files} | {expected.sop_instance_uid}
    path = tmp_path / "sr-from-orthanc.dcm"
    path.write_bytes(stored[expected.sop_instance_uid])
    assert "Imaging Measurement Report" in check_sr(path)
    sr = dcmread(path)
    assert sr.StudyInstanceUID == first.StudyInstanceUID
    assert sr.SeriesInstanceUID == expected.series_instance_uid
