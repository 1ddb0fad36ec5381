"""node.receive.validate on exact bytes: each broken case gets its status and a reason naming the element;
valid instances in every native syntax and in RLE, JPEG-LS and JPEG 2000 pass; and whatever the validator
passes, pydicom reads to the last element (mutated instances, many of them)."""

from __future__ import annotations

import random
import struct
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from node.receive.validate import (
    MAX_DEPTH,
    STATUS_CANNOT_DECODE,
    STATUS_PIXEL_DATA,
    STATUS_VALUE_TOO_LONG,
    InvalidInstance,
    check_instance,
    value_too_long,
)
from tests.corrupt import (
    DEFLATED,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_LOSSLESS,
    RLE_LOSSLESS,
    corrupt_vr,
    encapsulated,
    encode,
    last_element_claims,
    part10,
    pixels_short,
    without_pixels,
)
from tests.nodeutil import synthetic_ct
from tests.peers import make_ct


def refused(data: bytes, syntax: str) -> InvalidInstance:
    with pytest.raises(InvalidInstance) as caught:
        check_instance(data, syntax)
    return caught.value


def ct(rows: int = 64) -> Dataset:
    return synthetic_ct(rows=rows)


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE])
def test_a_valid_instance_passes_in_every_native_syntax(syntax: str) -> None:
    ds = ct()
    check_instance(part10(encode(ds, syntax), syntax, ds), syntax)


def test_a_deflated_instance_is_inflated_and_walked() -> None:
    ds = ct()
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(encode(ds, EXPLICIT_VR_LE)) + deflater.flush()
    check_instance(part10(body, DEFLATED, ds), DEFLATED)
    truncated = part10(body[: len(body) // 2], DEFLATED, ds)
    assert refused(truncated, DEFLATED).status == STATUS_CANNOT_DECODE


def test_a_deflate_bomb_is_refused_at_the_limit() -> None:
    ds = ct()
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(encode(ds, EXPLICIT_VR_LE)) + deflater.flush()
    with pytest.raises(InvalidInstance, match="inflates to more than 1000 bytes"):
        check_instance(part10(body, DEFLATED, ds), DEFLATED, max_bytes=1000)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_instances_pass(tmp_path: Path, syntax: str) -> None:
    make_ct(tmp_path / "c.dcm", 0, "1.2.3.4", transfer_syntax=syntax, size=32)
    data = (tmp_path / "c.dcm").read_bytes()
    assert dcmread(BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    check_instance(data, syntax)


# -- the cases of issue 11 -----------------------------------------------------------------------


def test_pixel_data_cut_short_by_1000_bytes() -> None:
    ds = ct()
    short = pixels_short(ds, 1000)
    reason = refused(part10(encode(short, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert reason.status == STATUS_PIXEL_DATA
    assert reason.reason == "(7FE0,0010) Pixel Data 7192 bytes, expected 8192"


def test_bytes_cut_off_inside_the_last_element() -> None:
    ds = ct()
    data = part10(encode(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds)
    reason = refused(data[:-1000], EXPLICIT_VR_LE)
    assert reason.status == STATUS_CANNOT_DECODE
    assert reason.reason == "(7FE0,0010) Pixel Data claims 8192 bytes, 7192 left"


def test_last_element_claiming_2_gib_with_a_short_body() -> None:
    ds = ct()
    reason = refused(part10(last_element_claims(ds), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert (reason.status, reason.reason) == (
        STATUS_CANNOT_DECODE,
        "(7FE0,0010) Pixel Data claims 2147483648 bytes, 100 left",
    )


@pytest.mark.parametrize("rows", [16, 64, 512])
def test_explicit_vr_bytes_on_an_implicit_vr_context(rows: int) -> None:
    ds = ct(rows)
    reason = refused(part10(encode(ds, EXPLICIT_VR_LE), IMPLICIT_VR_LE, ds), IMPLICIT_VR_LE)
    assert reason.status == STATUS_CANNOT_DECODE
    assert "Explicit VR bytes" in reason.reason and "VR 'CS'" in reason.reason, reason.reason


def test_native_pixel_data_on_a_jpeg_lossless_context() -> None:
    ds = ct()
    reason = refused(part10(encode(ds, EXPLICIT_VR_LE), JPEG_LOSSLESS, ds), JPEG_LOSSLESS)
    assert reason.status == STATUS_PIXEL_DATA
    assert reason.reason == f"(7FE0,0010) Pixel Data is native on encapsulated {JPEG_LOSSLESS}"


def test_encapsulated_pixel_data_on_explicit_vr() -> None:
    ds = ct()
    body = encode(without_pixels(ds), EXPLICIT_VR_LE) + encapsulated([b"\xff\xd8" * 10])
    reason = refused(part10(body, EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert reason.status == STATUS_PIXEL_DATA and "encapsulated on native" in reason.reason


def test_a_corrupted_vr_byte() -> None:
    ds = ct()
    body = corrupt_vr(encode(ds, EXPLICIT_VR_LE), 0x00080060, b"XS")
    reason = refused(part10(body, EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert (reason.status, reason.reason) == (
        STATUS_CANNOT_DECODE,
        "(0008,0060) Modality has an unknown VR 'XS'",
    )


def test_garbage_after_the_file_meta() -> None:
    ds = ct()
    reason = refused(part10(b"\xde\xad\xbe\xef" * 64 + b"\xff" * 33, EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert reason.status == STATUS_CANNOT_DECODE and "unknown VR" in reason.reason


def test_no_dicm_prefix() -> None:
    assert refused(b"\0" * 200, EXPLICIT_VR_LE).reason == "no DICM prefix after the 128-byte preamble"


def test_meta_transfer_syntax_differs_from_the_context() -> None:
    ds = ct()
    reason = refused(part10(encode(ds, IMPLICIT_VR_LE), IMPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert "(0002,0010)" in reason.reason


def test_binary_values_of_a_wrong_length() -> None:
    ds = ct()
    body = encode(ds, EXPLICIT_VR_LE)
    rows = struct.pack("<HH", 0x0028, 0x0010) + b"US" + struct.pack("<H", 2)
    bad = body.replace(rows + struct.pack("<H", 64), rows[:-2] + struct.pack("<H", 3) + b"\x40\x00\x00")
    reason = refused(part10(bad, EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert reason.reason == "(0028,0010) Rows value of 3 bytes, not a multiple of 2"
    implicit = encode(ds, IMPLICIT_VR_LE)
    rows = struct.pack("<HHL", 0x0028, 0x0010, 2)
    bad = implicit.replace(rows + b"\x40\x00", struct.pack("<HHL", 0x0028, 0x0010, 3) + b"\x40\x00\x00")
    reason = refused(part10(bad, IMPLICIT_VR_LE, ds), IMPLICIT_VR_LE)
    assert reason.reason == "(0028,0010) Rows value of 3 bytes, not a multiple of 2"


def test_pixel_data_without_rows() -> None:
    ds = ct()
    del ds.Rows
    reason = refused(part10(encode(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert reason.reason == "(7FE0,0010) Pixel Data without (0028,0010) Rows"


def test_odd_pixel_data_length_may_have_one_byte_of_padding() -> None:
    ds = ct(rows=3)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = b"\x01" * 9 + b"\0"  # 9 bytes, padded to 10
    check_instance(part10(encode(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)


def test_multi_frame_native_pixel_data_counts_frames_and_samples() -> None:
    ds = ct(rows=8)
    ds.NumberOfFrames = 3
    ds.SamplesPerPixel = 3
    ds.PixelData = b"\0" * (8 * 8 * 3 * 3 * 2)
    check_instance(part10(encode(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    ds.NumberOfFrames = 4
    reason = refused(part10(encode(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert reason.reason == "(7FE0,0010) Pixel Data 1152 bytes, expected 1536"


# -- encapsulated pixel data -----------------------------------------------------------------------


def _encapsulated_instance(pixels: bytes, frames: int | None = None) -> bytes:
    ds = ct()
    header = without_pixels(ds)
    if frames is not None:
        header.NumberOfFrames = frames
    return part10(encode(header, EXPLICIT_VR_LE) + pixels, RLE_LOSSLESS, ds)


def test_well_formed_fragments_pass_with_and_without_offsets() -> None:
    check_instance(_encapsulated_instance(encapsulated([b"ab" * 8])), RLE_LOSSLESS)
    two = encapsulated([b"ab" * 8, b"cd" * 4], offsets=[0, 24])
    check_instance(_encapsulated_instance(two, frames=2), RLE_LOSSLESS)


@pytest.mark.parametrize(
    ("pixels", "frames", "problem"),
    [
        (encapsulated([b"ab" * 8], delimiter=False), None, "without sequence delimiter"),
        (encapsulated([]), None, "encapsulated without fragments"),
        (encapsulated([b"ab" * 8], offsets=[0, 8]), None, "Basic Offset Table has 2 offsets for 1 frames"),
        (encapsulated([b"ab" * 8, b"cd" * 4], offsets=[0, 90]), 2, "offsets do not fit the fragments"),
        (encapsulated([b"ab" * 8]), 2, "1 fragments for 2 frames"),
        (encapsulated([b"ab" * 8])[:-12], None, "item claims 16 bytes, 12 left"),
        (encapsulated([b"ab" * 8]).replace(b"\xfe\xff\x00\xe0\x10", b"\xfe\xff\x10\xe0\x10"), None,
         "(FFFE,E010) where a fragment item should be"),
    ],
    ids=["no-delimiter", "no-fragments", "table-count", "table-range", "few", "cut", "item-tag"],
)  # fmt: skip
def test_broken_fragments(pixels: bytes, frames: int | None, problem: str) -> None:
    reason = refused(_encapsulated_instance(pixels, frames), RLE_LOSSLESS)
    assert reason.status == STATUS_PIXEL_DATA and problem in reason.reason, reason.reason


def test_basic_offset_table_of_odd_size() -> None:
    pixels = encapsulated([b"ab" * 8])
    table_item = struct.pack("<HHL", 0xFFFE, 0xE000, 0)
    bad = pixels.replace(table_item, struct.pack("<HHL", 0xFFFE, 0xE000, 2) + b"\0\0", 1)
    reason = refused(_encapsulated_instance(bad), RLE_LOSSLESS)
    assert "Basic Offset Table of 2 bytes" in reason.reason


# -- sequences -------------------------------------------------------------------------------------


def _with_sequence(ds: Dataset, syntax: str = EXPLICIT_VR_LE) -> Dataset:
    item = Dataset()
    item.CodeValue = "T-D0050"
    item.CodingSchemeDesignator = "SRT"
    ds.AnatomicRegionSequence = [item, Dataset()]
    return ds


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE])
def test_sequences_of_defined_and_undefined_length_pass(syntax: str) -> None:
    ds = _with_sequence(ct())
    check_instance(part10(encode(ds, syntax), syntax, ds), syntax)
    ds["AnatomicRegionSequence"].is_undefined_length = True
    for item in ds.AnatomicRegionSequence:
        item.is_undefined_length_sequence_item = True
    check_instance(part10(encode(ds, syntax), syntax, ds), syntax)


def test_sequence_without_its_delimiter() -> None:
    ds = _with_sequence(ct())
    ds["AnatomicRegionSequence"].is_undefined_length = True
    body = encode(ds, EXPLICIT_VR_LE)
    delimiter = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    reason = refused(part10(body.replace(delimiter, b""), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert reason.status == STATUS_CANNOT_DECODE
    assert reason.reason.startswith("(0008,2218) Anatomic Region Sequence: ")


def test_item_running_past_its_sequence() -> None:
    ds = _with_sequence(ct())
    body = encode(ds, EXPLICIT_VR_LE)
    first_item = body.index(struct.pack("<HH", 0xFFFE, 0xE000))
    (length,) = struct.unpack_from("<L", body, first_item + 4)
    bad = body[: first_item + 4] + struct.pack("<L", length + 200) + body[first_item + 8 :]
    reason = refused(part10(bad, EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert "Anatomic Region Sequence: item claims" in reason.reason


def test_sequences_nested_too_deep() -> None:
    ds = ct()
    inner = Dataset()
    for _ in range(MAX_DEPTH + 2):
        outer = Dataset()
        outer.ReferencedSeriesSequence = [inner]
        inner = outer
    ds.ReferencedSeriesSequence = inner.ReferencedSeriesSequence
    reason = refused(part10(encode(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert f"nested deeper than {MAX_DEPTH}" in reason.reason


def test_stray_item_delimiter_at_the_top_level() -> None:
    ds = ct()
    body = encode(without_pixels(ds), EXPLICIT_VR_LE) + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    reason = refused(part10(body, EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert "item delimiter (FFFE,E00D) outside an item" in reason.reason


# -- values the node stores in columns -------------------------------------------------------------


def test_a_40_character_modality_is_refused_naming_it() -> None:
    ds = ct()
    ds.Modality = "C" * 40
    reason = refused(part10(encode(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds), EXPLICIT_VR_LE)
    assert (reason.status, reason.reason) == (
        STATUS_VALUE_TOO_LONG,
        "(0008,0060) Modality value longer than 16 (CS): 40 bytes",
    )


def test_value_lengths_are_per_value_and_per_pn_component_group() -> None:
    assert not value_too_long("CS", b"CT\\" + b"M" * 16, 16)  # two values, each within 16
    assert value_too_long("CS", b"M" * 17, 16)
    assert not value_too_long("CS", b"M" * 16 + b" ", 16)  # the padding does not count
    assert not value_too_long("PN", b"A" * 60 + b"=" + b"B" * 60, 64)
    assert value_too_long("PN", b"A" * 65, 64)


# -- what passes, pydicom reads ------------------------------------------------------------------------


def _read_everything(data: bytes) -> None:
    """dcmread, then every element's value (pydicom converts lazily), nested ones too."""
    ds = dcmread(BytesIO(data))
    pending = [ds]
    while pending:
        current = pending.pop()
        for element in current:
            if element.VR == "SQ":
                pending.extend(element.value)


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
def test_mutated_instances_that_pass_are_readable_by_pydicom(syntax: str) -> None:
    """Bit flips, byte changes and cuts of a small instance with a sequence: every mutant that the
    validator passes is read to its last value by pydicom (what assembly and forwarding do)."""
    ds = _with_sequence(ct(rows=8))
    ds["AnatomicRegionSequence"].is_undefined_length = True
    ds.AnatomicRegionSequence[0].is_undefined_length_sequence_item = True
    original = part10(encode(ds, syntax), syntax, ds)
    meta_end = len(part10(b"", syntax, ds))
    rng = random.Random(11)
    passed = refused_count = 0
    for _ in range(1500):
        data = bytearray(original)
        for _ in range(rng.choice((1, 1, 2, 4))):
            at = rng.randrange(meta_end, len(data))
            data[at] = rng.choice((data[at] ^ (1 << rng.randrange(8)), rng.randrange(256), 0xFF, 0))
        if rng.random() < 0.1:
            del data[rng.randrange(meta_end, len(data)) :]
        mutant = bytes(data)
        try:
            check_instance(mutant, syntax)
        except InvalidInstance as exc:
            assert 0xC000 <= exc.status <= 0xCFFF and exc.reason
            refused_count += 1
            continue
        passed += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _read_everything(mutant)
    assert passed > 100 and refused_count > 100, (passed, refused_count)
