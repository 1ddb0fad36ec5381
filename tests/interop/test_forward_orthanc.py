"""Forwarding a real CT series to Orthanc over DIMSE: every instance arrives, pixel data identical."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from node.config import ForwardSettings
from node.deliver.destinations import DimseDestination
from node.deliver.dimse import DimseSender
from node.pynetdicom_tuning import install
from tests.peers import ct_files, instance_files, run_orthanc

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def tuned_pynetdicom() -> None:
    """DimseSender relies on node.pynetdicom_tuning.install() (NodeService.start calls it)."""
    install()

SETTINGS = ForwardSettings(dimse_timeout=10.0, acse_timeout=5.0, network_timeout=10.0)


def test_itkelastix_chest_reaches_orthanc_byte_identical(tmp_path: Path) -> None:
    files = instance_files(ct_files("itkelastix_chest"))
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        dest = DimseDestination(name="orthanc", ae_title=orthanc.aet, host="127.0.0.1",
                                port=orthanc.dicom_port)
        acknowledged: list[int] = []
        outcome = DimseSender(SETTINGS, "NODE").send(
            dest, files, lambda f, s: acknowledged.append(f.instance_id)
        )
        assert outcome.ok, outcome.error
        assert acknowledged == [f.instance_id for f in files]
        stored = orthanc.rest.files_by_sop_instance_uid()
        # The helper loads the DICOMweb plugin: the series is visible through QIDO-RS too.
        studies = orthanc.rest.get_json("/dicom-web/studies")
        assert isinstance(studies, list) and len(studies) == 1
    assert set(stored) == {f.sop_instance_uid for f in files}
    for f in files:
        received = dcmread(BytesIO(stored[f.sop_instance_uid]))
        assert bytes(received.PixelData) == bytes(dcmread(f.path).PixelData)


def test_orthanc_refusing_unknown_caller_gives_a_clear_error(tmp_path: Path) -> None:
    files = instance_files(ct_files("itkelastix_chest")[:2])
    with run_orthanc(tmp_path / "orthanc", dicomweb=False, always_allow_store=False) as orthanc:
        dest = DimseDestination(name="orthanc", ae_title=orthanc.aet, host="127.0.0.1",
                                port=orthanc.dicom_port)
        outcome = DimseSender(SETTINGS, "NODE").send(dest, files, lambda f, s: None)
        assert orthanc.rest.instances() == []
    assert not outcome.ok
    assert outcome.error is not None and "orthanc" in outcome.error
    assert outcome.sent == []
    # Orthanc 1.10 accepts the association and aborts it at the first C-STORE of an unknown caller:
    # indistinguishable from a peer crash, so it is reported as an abort and left to the retries.
    assert "aborted" in outcome.error and outcome.retryable
