"""Write-back copies go through the same negotiation as the originals (pynetdicom peer on loopback):
a compressed copy is sent as stored when the peer accepts its syntax (pixel bytes identical), and
decompressed by the sender when the peer accepts only uncompressed syntaxes (the attributes survive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian, RLELossless

from node.config import ForwardSettings
from node.deliver.base import InstanceFile
from node.deliver.destinations import DimseDestination, WriteBack
from node.deliver.dimse import DimseSender
from node.pynetdicom_tuning import install
from node.writeback import private
from node.writeback.copies import prepare_copies
from tests.peers import in_process_scp, make_series
from tests.writebackutil import sample_results

FAST = ForwardSettings(dimse_timeout=2.0, acse_timeout=2.0, network_timeout=5.0, stall_retries=1)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "send_c_store"])
@pytest.mark.parametrize("accepted", [RLELossless, ImplicitVRLittleEndian])
def test_compressed_copy_is_negotiated_like_the_original(
    tmp_path: Path, fast_path: bool, accepted: str
) -> None:
    install()
    private.register()
    originals = make_series(tmp_path / "spool", 3, transfer_syntax=RLELossless)
    copies = prepare_copies(tmp_path, 1, originals, WriteBack(mode="attributes"), sample_results())
    sent: list[int] = []

    def on_sent(f: InstanceFile, status: int) -> None:
        sent.append(f.instance_id)

    with in_process_scp(transfer_syntaxes=[accepted]) as scp:
        destination = DimseDestination(name="pacs", ae_title="TESTSCP", host="127.0.0.1", port=scp.port)
        outcome = DimseSender(FAST, "NODE", fast_path=fast_path).send(destination, copies.files, on_sent)
    copies.cleanup()
    assert outcome.ok, outcome.error
    assert sent == [f.instance_id for f in originals]
    for original, got in zip(originals, scp.received, strict=True):
        source = dcmread(original.path)
        assert got.transfer_syntax == accepted and got.sop_instance_uid == original.sop_instance_uid
        assert got.dataset.BodyPartExamined == "ABDOMEN"
        assert private.read_block(got.dataset)["BodyPartLabel"] == "Abdomen"
        if accepted == RLELossless:
            assert bytes(got.dataset.PixelData) == bytes(source.PixelData)  # as stored, encapsulated
        else:
            np.testing.assert_array_equal(got.dataset.pixel_array, source.pixel_array)
