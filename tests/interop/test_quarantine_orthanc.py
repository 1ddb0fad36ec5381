"""STOW-RS to Orthanc's DICOMweb plugin with one instance whose data set is damaged on disk (the node
forwards as stored, without parsing): Orthanc cannot read it, answers HTTP 400 with the others in
ReferencedSOPSequence and the bad one nowhere (not even its UID is known to it). The sender quarantines
that one and the others are stored, in one request and with one instance per request."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.deliver.destinations import DicomwebDestination
from node.deliver.stow import StowSender
from node.deliver.wire import dataset_offset
from tests.peers import make_series, run_orthanc

pytestmark = pytest.mark.interop


def damage_data_set(path: Path) -> None:
    """Overwrite the first data set elements after the File Meta: Orthanc cannot parse the part."""
    data = path.read_bytes()
    offset = dataset_offset(path)
    assert offset is not None
    path.write_bytes(data[:offset] + b"\xff" * 64 + data[offset + 64 :])


@pytest.mark.parametrize("batch_size", [10, 1])
def test_orthanc_refuses_the_damaged_instance_and_stores_the_others(tmp_path: Path, batch_size: int) -> None:
    files = make_series(tmp_path / "series", 4)
    bad = files[2]
    damage_data_set(bad.path)
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        destination = DicomwebDestination.model_validate(
            {"name": "web", "kind": "dicomweb", "url": orthanc.dicomweb_root, "batch_size": batch_size}
        )
        acknowledged: list[int] = []
        outcome = StowSender().send(destination, files, lambda f, status: acknowledged.append(f.instance_id))
        stored = orthanc.rest.files_by_sop_instance_uid()
    assert outcome.ok, outcome.error
    assert acknowledged == [f.instance_id for f in files if f is not bad]
    assert sorted(stored) == sorted(f.sop_instance_uid for f in files if f is not bad)
    assert list(outcome.quarantined) == [bad.instance_id]
    assert "HTTP 400 Bad Request without this instance" in outcome.quarantined[bad.instance_id]
