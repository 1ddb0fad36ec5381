"""Which failures quarantine one instance and which are the destination's (node.deliver.base), the
head check of a spooled file before it is sent and the full parse after a lost association
(node.deliver.spooled)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from node.deliver.base import is_delivered, is_instance_refusal, status_is_retryable
from node.deliver.spooled import parse_problem, unreadable_reason
from node.deliver.wire import dataset_offset


@pytest.mark.parametrize("status", [0xA900, 0xA9FF, 0xC000, 0xC211, 0xCFFF, 0x0117])
def test_the_instances_own_refusals(status: int) -> None:
    assert is_instance_refusal(status) and not status_is_retryable(status) and not is_delivered(status)


@pytest.mark.parametrize("status", [0xA700, 0xA7FF, 0x0110])
def test_the_destinations_trouble_is_retried_not_quarantined(status: int) -> None:
    assert status_is_retryable(status) and not is_instance_refusal(status)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB006, 0xB007, 0x0122, 0x0124, 0x0211, 0xA800, 0xD000])
def test_neither_quarantined(status: int) -> None:
    assert not is_instance_refusal(status)


def part10(path: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CT"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_good_file_passes(tmp_path: Path) -> None:
    assert unreadable_reason(part10(tmp_path / "a.dcm")) is None


def test_missing_file(tmp_path: Path) -> None:
    reason = unreadable_reason(tmp_path / "gone.dcm")
    assert reason is not None and "gone.dcm" in reason and "No such file" in reason


def test_head_overwritten(tmp_path: Path) -> None:
    path = part10(tmp_path / "a.dcm")
    path.write_bytes(b"\0" * 132 + path.read_bytes()[132:])
    reason = unreadable_reason(path)
    assert reason is not None and str(path) in reason and "no 'DICM'" in reason


def test_nothing_after_the_file_meta(tmp_path: Path) -> None:
    path = part10(tmp_path / "a.dcm")
    offset = dataset_offset(path)
    assert offset is not None
    path.write_bytes(path.read_bytes()[:offset])
    reason = unreadable_reason(path)
    assert reason is not None and "no data set after its File Meta" in reason


def test_file_meta_without_group_length_is_left_to_pynetdicom(tmp_path: Path) -> None:
    """Such a file is legal enough for pynetdicom to parse: the cheap check does not refuse it."""
    path = part10(tmp_path / "a.dcm")
    data = bytearray(path.read_bytes())
    data[132:134] = b"\x02\x00"
    data[134:136] = b"\x01\x00"  # (0002,0000) turned into (0002,0001): no group length first
    path.write_bytes(bytes(data))
    assert dataset_offset(path) is None
    assert unreadable_reason(path) is None


def test_parse_problem_accepts_a_good_file(tmp_path: Path) -> None:
    path = part10(tmp_path / "a.dcm")
    assert parse_problem(path, str(dcmread(path).SOPInstanceUID)) is None


def test_parse_problem_names_what_is_wrong(tmp_path: Path) -> None:
    path = part10(tmp_path / "a.dcm")
    uid = str(dcmread(path).SOPInstanceUID)
    other = parse_problem(path, "1.2.3")
    assert other is not None and f"reads {uid!r}" in other  # another instance's file
    data = path.read_bytes()
    offset = dataset_offset(path)
    assert offset is not None
    path.write_bytes(data[:offset] + b"\xff" * 64 + data[offset + 64 :])
    damaged = parse_problem(path, uid)
    assert damaged is not None and str(path) in damaged and "reads 'nothing'" in damaged


def test_parse_problem_pixel_data_cut_short(tmp_path: Path) -> None:
    ds = dcmread(part10(tmp_path / "a.dcm"))
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 4, 4, 16, 1
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 16, 15
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\0" * 16  # 32 expected
    ds["PixelData"].VR = "OW"
    ds.save_as(tmp_path / "b.dcm", enforce_file_format=True)
    problem = parse_problem(tmp_path / "b.dcm", str(ds.SOPInstanceUID))
    assert problem is not None and "Pixel Data has 16 bytes, its header asks for 32" in problem
