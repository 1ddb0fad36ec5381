"""Mutations of an encoded C-STORE data set (the bytes a P-DATA-TF carries after the command set).

Each mutator takes a random generator and a `Encoded` data set and returns new bytes. The element walker
only understands the top level of Little Endian data sets (Explicit or Implicit VR), which is all the
mutators need to aim at a length field, a VR or the pixel data.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

# VRs whose Explicit VR length is 4 bytes after 2 reserved ones (PS3.5 7.1.2).
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
PIXEL_DATA = (0x7FE0, 0x0010)
HUGE = 0x7FFFFFF0  # "2 GiB" with a short body behind it


@dataclass(frozen=True)
class Element:
    """One top-level element: where it starts, where its length field is and how wide, its value span."""

    tag: tuple[int, int]
    start: int
    vr_at: int | None  # offset of the 2 VR bytes (Explicit VR only)
    length_at: int
    length_size: int  # 2 or 4
    value_at: int
    length: int


@dataclass(frozen=True)
class Encoded:
    data: bytes
    explicit: bool


def encode(ds: Dataset, explicit: bool) -> Encoded:
    """The data set as a C-STORE carries it: Little Endian, no preamble and no file meta."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = not explicit
    buffer.is_little_endian = True
    write_dataset(buffer, ds)
    return Encoded(buffer.getvalue(), explicit)


def elements(encoded: Encoded) -> list[Element]:
    """The top-level elements, as far as they can be walked (undefined lengths stop the walk)."""
    data, out, offset = encoded.data, [], 0
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if encoded.explicit:
            vr = data[offset + 4 : offset + 6]
            if vr in LONG_VRS:
                length_at, size, value_at = offset + 8, 4, offset + 12
            else:
                length_at, size, value_at = offset + 6, 2, offset + 8
            vr_at: int | None = offset + 4
        else:
            length_at, size, value_at, vr_at = offset + 4, 4, offset + 8, None
        if value_at > len(data):
            break
        fmt = "<L" if size == 4 else "<H"
        (length,) = struct.unpack_from(fmt, data, length_at)
        out.append(Element((group, element), offset, vr_at, length_at, size, value_at, length))
        if length == 0xFFFFFFFF:
            break
        offset = value_at + length
    return out


def _set_length(data: bytes, element: Element, length: int) -> bytes:
    if element.length_size == 2:
        length &= 0xFFFF
        packed = struct.pack("<H", length)
    else:
        packed = struct.pack("<L", length & 0xFFFFFFFF)
    return data[: element.length_at] + packed + data[element.length_at + element.length_size :]


def _pick(rng: random.Random, encoded: Encoded) -> Element:
    return rng.choice(elements(encoded))


def bit_flips(rng: random.Random, encoded: Encoded) -> bytes:
    data = bytearray(encoded.data)
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
    return bytes(data)


def header_bit_flips(rng: random.Random, encoded: Encoded) -> bytes:
    """Bit flips aimed at tags, VRs and lengths (a random flip mostly lands in pixel data)."""
    data = bytearray(encoded.data)
    for _ in range(rng.randint(1, 3)):
        element = _pick(rng, encoded)
        position = rng.randrange(element.start, element.value_at)
        data[position] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(rng: random.Random, encoded: Encoded) -> bytes:
    return encoded.data[: rng.randrange(len(encoded.data))]


def pixel_data_short(rng: random.Random, encoded: Encoded) -> bytes:
    """Pixel data cut short (by 1000 bytes where there are that many), its length field unchanged."""
    cut = min(1000, len(encoded.data) // 4) if rng.random() < 0.5 else rng.randint(1, 64)
    return encoded.data[:-cut]


def last_element_huge(rng: random.Random, encoded: Encoded) -> bytes:
    """The last element claims 2 GiB (or another huge length) with its short body behind it."""
    last = elements(encoded)[-1]
    return _set_length(encoded.data, last, rng.choice([HUGE, 0xFFFFFFFE, last.length + 0x10000]))


def element_huge(rng: random.Random, encoded: Encoded) -> bytes:
    element = _pick(rng, encoded)
    return _set_length(encoded.data, element, rng.choice([HUGE, 0xFFFF, 0xFFFFFFFE, element.length * 97 + 1]))


def element_length_off(rng: random.Random, encoded: Encoded) -> bytes:
    """One element's length a little wrong: odd, a few bytes over or under."""
    element = _pick(rng, encoded)
    delta = rng.choice([-2, -1, 1, 2, 3, 8, -8])
    return _set_length(encoded.data, element, max(element.length + delta, 0))


def vr_bytes(rng: random.Random, encoded: Encoded) -> bytes:
    """A VR changed: to another real VR (short <-> long length field) or to bytes that are none."""
    if not encoded.explicit:
        return header_bit_flips(rng, encoded)
    element = _pick(rng, encoded)
    assert element.vr_at is not None
    new = rng.choice([b"SQ", b"OB", b"UN", b"US", b"UL", b"DS", b"  ", b"\0\0", b"ZZ", b"\xff\xfe", b"ob"])
    at = element.vr_at
    return encoded.data[:at] + new + encoded.data[at + 2 :]


def _sequence(explicit: bool, body: bytes, length: int = 0xFFFFFFFF, tag: int = 0x00081115) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if explicit:
        return struct.pack("<HH2sHL", group, element, b"SQ", 0, length) + body
    return struct.pack("<HHL", group, element, length) + body


def _item(body: bytes, length: int = 0xFFFFFFFF) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, length) + body


ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def undefined_length_sequence(rng: random.Random, encoded: Encoded) -> bytes:
    """A sequence of undefined length inserted in tag order (before Series/SOP attributes), broken in
    one of several ways: no item delimiter, no sequence delimiter, an item longer than the data,
    nesting deeper than anyone needs, a delimiter with a non-zero length."""
    explicit = encoded.explicit
    if explicit:
        inner = struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", 8) + b"1.2.3.4\0"
    else:
        inner = struct.pack("<HHL", 0x0008, 0x1150, 8) + b"1.2.3.4\0"
    broken = rng.choice(["none", "no_item_end", "no_seq_end", "item_too_long", "deep", "delim_len", "bare"])
    if broken == "none":
        body = _item(inner) + ITEM_END + SEQUENCE_END
    elif broken == "no_item_end":
        body = _item(inner) + SEQUENCE_END
    elif broken == "no_seq_end":
        body = _item(inner) + ITEM_END
    elif broken == "item_too_long":
        body = _item(inner, length=len(inner) + 4096) + SEQUENCE_END
    elif broken == "deep":
        depth = rng.choice([8, 64, 400])
        body = b""
        for _ in range(depth):
            body = _item(_sequence(explicit, body, tag=0x00081115) + SEQUENCE_END) + ITEM_END
        body += SEQUENCE_END
    elif broken == "delim_len":
        body = _item(inner) + struct.pack("<HHL", 0xFFFE, 0xE00D, 8) + SEQUENCE_END
    else:  # an undefined-length sequence that runs to the end of the data
        body = _item(inner)
    sequence = _sequence(explicit, body)
    # (0008,1115) sorts after the (0008,xxxx) type-1 attributes that the node checks and before (0010,...)
    at = next((e.start for e in elements(encoded) if e.tag > (0x0008, 0x1115)), len(encoded.data))
    return encoded.data[:at] + sequence + encoded.data[at:]


def pixel_data_undefined_length(rng: random.Random, encoded: Encoded) -> bytes:
    """Native pixel data given undefined length (only legal when encapsulated), with or without
    fragments behind it."""
    pixel = next((e for e in elements(encoded) if e.tag == PIXEL_DATA), None)
    if pixel is None:
        return truncate(rng, encoded)
    data = _set_length(encoded.data, pixel, 0xFFFFFFFF)
    if rng.random() < 0.5:
        return data
    fragments = _item(b"", 0) + _item(encoded.data[pixel.value_at : pixel.value_at + 64], 64)
    return data[: pixel.value_at] + fragments + SEQUENCE_END


def swap_elements(rng: random.Random, encoded: Encoded) -> bytes:
    """Two elements out of ascending tag order."""
    found = elements(encoded)
    i = rng.randrange(len(found) - 1)
    a, b = found[i], found[i + 1]
    end_b = b.value_at + b.length
    data = encoded.data
    return data[: a.start] + data[b.start : end_b] + data[a.start : b.start] + data[end_b:]


def duplicate_element(rng: random.Random, encoded: Encoded) -> bytes:
    element = _pick(rng, encoded)
    end = element.value_at + element.length
    return encoded.data[:end] + encoded.data[element.start : end] + encoded.data[end:]


def random_bytes(rng: random.Random, encoded: Encoded) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 7, 8, 64, 1024]))


def trailing_garbage(rng: random.Random, encoded: Encoded) -> bytes:
    return encoded.data + rng.randbytes(rng.choice([1, 3, 8, 12, 200]))


Mutator = Callable[[random.Random, Encoded], bytes]

DATASET_MUTATORS: dict[str, Mutator] = {
    "bit_flips": bit_flips,
    "header_bit_flips": header_bit_flips,
    "truncate": truncate,
    "pixel_data_short": pixel_data_short,
    "last_element_huge": last_element_huge,
    "element_huge": element_huge,
    "element_length_off": element_length_off,
    "vr_bytes": vr_bytes,
    "undefined_length_sequence": undefined_length_sequence,
    "pixel_data_undefined_length": pixel_data_undefined_length,
    "swap_elements": swap_elements,
    "duplicate_element": duplicate_element,
    "random_bytes": random_bytes,
    "trailing_garbage": trailing_garbage,
}
