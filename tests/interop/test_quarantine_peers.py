"""Real peers and an instance whose data set is damaged on disk after it was received (the node forwards
as stored, without parsing). None of them answers it with a failure status:

- Orthanc's DICOMweb plugin answers HTTP 400, the others in ReferencedSOPSequence, the bad one nowhere
  (not even its UID is known to it);
- Orthanc over DIMSE sends no C-STORE response at all (a stall until dimse_timeout);
- dcmtk's storescp aborts the association.

In each case the node quarantines that instance (over DIMSE once it finds that it cannot parse the file
either, node.deliver.dimse._quarantine_unparsable) and the others are stored."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from node.config import ForwardSettings
from node.deliver.base import InstanceFile
from node.deliver.destinations import DicomwebDestination, DimseDestination
from node.deliver.dimse import DimseSender
from node.deliver.stow import StowSender
from node.deliver.wire import dataset_offset
from node.pynetdicom_tuning import install
from tests.peers import make_series, run_orthanc, run_storescp

pytestmark = pytest.mark.interop

# Short on purpose: Orthanc's silence costs one dimse_timeout per reconnect.
FORWARD = ForwardSettings(dimse_timeout=2.0, acse_timeout=5.0, network_timeout=10.0, stall_retries=2)


@pytest.fixture(autouse=True)
def tuned_pynetdicom() -> None:
    install()


def damaged_series(folder: Path, index: int = 2) -> tuple[list[InstanceFile], InstanceFile]:
    """Four instances; the first data set elements of one (the third) overwritten on disk."""
    files = make_series(folder, 4)
    bad = files[index]
    data = bad.path.read_bytes()
    offset = dataset_offset(bad.path)
    assert offset is not None
    bad.path.write_bytes(data[:offset] + b"\xff" * 64 + data[offset + 64 :])
    return files, bad


@pytest.mark.parametrize("batch_size", [10, 1])
def test_orthanc_stow_refuses_the_damaged_instance_and_stores_the_others(
    tmp_path: Path, batch_size: int
) -> None:
    files, bad = damaged_series(tmp_path / "series")
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


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "send_c_store"])
def test_orthanc_dimse_silence_on_the_damaged_instance(tmp_path: Path, fast_path: bool) -> None:
    files, bad = damaged_series(tmp_path / "series")
    with run_orthanc(tmp_path / "orthanc", dicomweb=False) as orthanc:
        destination = DimseDestination(name="orthanc", ae_title=orthanc.aet, host="127.0.0.1",
                                       port=orthanc.dicom_port)
        acknowledged: list[int] = []
        sender = DimseSender(FORWARD, "NODE", fast_path=fast_path)
        outcome = sender.send(destination, files, lambda f, status: acknowledged.append(f.instance_id))
        stored = orthanc.rest.files_by_sop_instance_uid()
    assert outcome.ok, outcome.error
    assert acknowledged == [f.instance_id for f in files if f is not bad]
    assert sorted(stored) == sorted(f.sop_instance_uid for f in files if f is not bad)
    reason = outcome.quarantined[bad.instance_id]
    assert list(outcome.quarantined) == [bad.instance_id]
    assert str(bad.path) in reason and "cannot be parsed" in reason and "the destination:" in reason


@pytest.mark.parametrize("index", [2, 0], ids=["third", "first"])
@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "send_c_store"])
def test_storescp_abort_on_the_damaged_instance(tmp_path: Path, fast_path: bool, index: int) -> None:
    """Damaged first too: the destination's acknowledgements after it are the evidence."""
    files, bad = damaged_series(tmp_path / "series", index)
    with run_storescp(tmp_path / "scp") as scp:
        destination = DimseDestination(name="scp", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)
        acknowledged: list[int] = []
        sender = DimseSender(FORWARD, "NODE", fast_path=fast_path)
        outcome = sender.send(destination, files, lambda f, status: acknowledged.append(f.instance_id))
        written = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()}
    assert outcome.ok, outcome.error
    assert acknowledged == [f.instance_id for f in files if f is not bad]
    assert written == {f.sop_instance_uid for f in files if f is not bad}
    assert list(outcome.quarantined) == [bad.instance_id]
    assert "cannot be parsed" in outcome.quarantined[bad.instance_id]


def test_destination_that_aborts_everything_gets_nothing_quarantined(tmp_path: Path) -> None:
    """Orthanc aborts at the first C-STORE of an unknown caller: the damaged file (sent first) cannot be
    parsed, but with nothing acknowledged that is no evidence against it; the attempt fails as before."""
    files, bad = damaged_series(tmp_path / "series", index=0)
    with run_orthanc(tmp_path / "orthanc", dicomweb=False, always_allow_store=False) as orthanc:
        destination = DimseDestination(name="orthanc", ae_title=orthanc.aet, host="127.0.0.1",
                                       port=orthanc.dicom_port)
        outcome = DimseSender(FORWARD, "NODE").send(destination, files, lambda f, status: None)
        assert orthanc.rest.instances() == []
    assert outcome.quarantined == {} and outcome.sent == []
    assert not outcome.ok and outcome.retryable
    assert outcome.error is not None and "aborted" in outcome.error
    assert bad.instance_id in outcome.failed and "cannot be parsed" in outcome.failed[bad.instance_id]
