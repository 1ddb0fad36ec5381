"""node.deliver.wire against pynetdicom's own encoders: same command bytes, same data set offset."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian, RLELossless
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset

from node.deliver.wire import c_store_command, dataset_offset, pdata_header
from tests.peers import make_series


@pytest.mark.parametrize("message_id", [1, 2, 65535])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.826.0.1.3680043.8.498.12345678901234567890"])
def test_command_set_matches_pynetdicom(message_id: int, sop_instance: str) -> None:
    req = C_STORE()
    req.MessageID = message_id
    req.Priority = 2
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    req.AffectedSOPInstanceUID = sop_instance
    req.DataSet = BytesIO(b"\x08\x00\x16\x00")  # a data set follows
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    (first, *_) = list(message.encode_msg(context_id=5, max_pdu_length=0))
    ((context_id, pdv),) = first.presentation_data_value_list
    assert context_id == 5 and pdv[0] == 0x03  # command, last fragment
    assert c_store_command("1.2.840.10008.5.1.4.1.1.2", sop_instance, message_id) == pdv[1:]


def test_pdata_header_layout() -> None:
    header = pdata_header(context_id=3, control=0x02, length=100)
    pdu_type, _, pdu_length, item_length, context_id, control = struct.unpack(">BBIIBB", header)
    assert (pdu_type, pdu_length, item_length, context_id, control) == (4, 106, 102, 3, 2)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless])
def test_dataset_offset_matches_split_dataset(tmp_path: Path, syntax: str) -> None:
    for f in make_series(tmp_path, 2, transfer_syntax=syntax):
        assert dataset_offset(f.path) == split_dataset(f.path)[1]


def test_dataset_offset_of_real_ct_files() -> None:
    from tests.peers import ct_files

    for path in ct_files("itkelastix_chest")[:5]:
        assert dataset_offset(path) == split_dataset(path)[1]


def test_dataset_offset_none_for_non_part10(tmp_path: Path) -> None:
    raw = tmp_path / "raw.dcm"
    raw.write_bytes(b"\x08\x00\x16\x00" + b"\x00" * 200)
    assert dataset_offset(raw) is None
    short = tmp_path / "short.dcm"
    short.write_bytes(b"x")
    assert dataset_offset(short) is None
