"""Exact bytes of broken instances, for the validation tests (unit: node.receive.validate; integration:
over a real association and over STOW-RS). Each case is a valid synthetic CT instance with one thing
broken, the way issue 11 found them acknowledged.

    data_set = encode(synthetic_ct(), EXPLICIT_VR_LE)       # the data set alone, as a C-STORE carries it
    file = part10(data_set, EXPLICIT_VR_LE, ds)              # preamble, file meta, data set
"""

from __future__ import annotations

import copy
import struct
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"


def encode(ds: Dataset, syntax: str) -> bytes:
    """The data set alone in `syntax` (native syntaxes, and the Explicit VR LE of compressed ones)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = syntax != EXPLICIT_VR_BE
    buffer.is_implicit_VR = syntax == IMPLICIT_VR_LE
    write_dataset(buffer, ds)
    return buffer.getvalue()


def part10(data_set: bytes, syntax: str, ds: Dataset) -> bytes:
    """Preamble, 'DICM', the file meta (for `syntax` and ds's UIDs), then `data_set` as it is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1"
    out = BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue() + data_set


def explicit_element(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; `length` overrides the value's own."""
    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in ("OB", "OW", "SQ", "UN", "UT", "UC", "UR", "OD", "OF", "OL", "OV", "SV", "UV"):
        return head + b"\0\0" + struct.pack("<L", size) + value
    return head + struct.pack("<H", size) + value


def _copy(ds: Dataset) -> Dataset:
    """A copy to break (Dataset(ds) would share ds's elements)."""
    return copy.deepcopy(ds)


def without_pixels(ds: Dataset) -> Dataset:
    broken = _copy(ds)
    del broken.PixelData
    return broken


def pixels_short(ds: Dataset, missing: int = 1000) -> Dataset:
    """Pixel Data `missing` bytes shorter than rows x columns x bits say (its length field consistent)."""
    broken = _copy(ds)
    broken.PixelData = ds.PixelData[:-missing]
    return broken


def last_element_claims(ds: Dataset, claimed: int = 2**31, body: int = 100) -> bytes:
    """Explicit VR LE data set whose last element (Pixel Data) claims `claimed` bytes and has `body`."""
    pixels = explicit_element(0x7FE00010, "OW", b"\x01\x02" * (body // 2), length=claimed)
    return encode(without_pixels(ds), EXPLICIT_VR_LE) + pixels


def corrupt_vr(data_set: bytes, keyword_tag: int = 0x00080060, vr: bytes = b"XS") -> bytes:
    """Explicit VR bytes with the VR of one element (default: Modality) replaced by `vr`."""
    head = struct.pack("<HH", keyword_tag >> 16, keyword_tag & 0xFFFF)
    at = data_set.index(head)
    return data_set[: at + 4] + vr + data_set[at + 6 :]


def encapsulated(fragments: list[bytes], offsets: list[int] | None = None, delimiter: bool = True) -> bytes:
    """(7FE0,0010) OB of undefined length: a Basic Offset Table item, the fragments, the delimiter."""
    table = b"".join(struct.pack("<L", o) for o in (offsets or []))
    out = explicit_element(0x7FE00010, "OB", b"", length=0xFFFFFFFF)
    out += struct.pack("<HHL", 0xFFFE, 0xE000, len(table)) + table
    for fragment in fragments:
        out += struct.pack("<HHL", 0xFFFE, 0xE000, len(fragment)) + fragment
    if delimiter:
        out += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return out
