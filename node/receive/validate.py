"""Is this a complete, consistent instance? One pass over the encoded bytes, before anything is stored.

`check_instance(data, transfer_syntax_uid)` walks the Part 10 bytes (preamble, file meta, data set) as
the transfer syntax says, with struct on a memoryview (no pydicom Dataset per element), and raises
InvalidInstance naming the element and the problem:

- structure (0xC210): every element ends inside its parent (data set, item, sequence), lengths are
  consistent with what is left, a VR is one of PS3.5's, undefined lengths only where PS3.5 allows them,
  items and sequences delimited, nothing left over at the end; Explicit VR bytes on an Implicit VR
  context are named as such; binary VRs (US, UL, FD, ...) have a length that is a multiple of their size;
- pixel data (0xC230): native pixel data has rows x columns x samples x frames x bits / 8 bytes (plus one
  byte of padding where that is odd); an encapsulated transfer syntax has encapsulated pixel data (a Basic
  Offset Table item, then fragments, each item inside the data, then the sequence delimiter) and a native
  one has not;
- values that the node stores in database columns (0xC240): longer than their VR allows (PS3.5 6.2).
  Only these: other attributes are stored as sent, as archives do (modalities do send overlong values).

Sequences nest at most MAX_DEPTH deep (no recursion bomb). A Deflated data set is inflated up to
`max_bytes` (no deflate bomb).
"""

from __future__ import annotations

import functools
import mmap
import struct
import zlib

from pydicom.datadict import DicomDictionary, dictionary_VR

STATUS_CANNOT_DECODE = 0xC210
STATUS_PIXEL_DATA = 0xC230
STATUS_VALUE_TOO_LONG = 0xC240

MAX_DEPTH = 32

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE})

# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length in Explicit VR.
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
# Binary VRs: the value length is a multiple of this many bytes.
VALUE_SIZE = {
    b"US": 2, b"SS": 2, b"OW": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"AT": 4, b"OF": 4, b"OL": 4,
    b"FD": 8, b"SV": 8, b"UV": 8, b"OD": 8, b"OV": 8,
}  # fmt: skip
# Implicit VR "US or SS" elements: pydicom decides by Pixel Representation, and fails without it.
US_OR_SS_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "US or SS")
# Where Implicit VR has no VR, pydicom takes the dictionary's: which elements are sequences (to walk their
# items), and which are binary (pydicom cannot read a US of 3 bytes; "US or SS" and "US or OW" are 2).
SEQUENCE_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
IMPLICIT_VALUE_SIZE = {
    tag: VALUE_SIZE[entry[0][:2].encode()]
    for tag, entry in DicomDictionary.items()
    if entry[0][:2].encode() in VALUE_SIZE and not entry[0].startswith("OB")
}

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF

ROWS, COLUMNS, SAMPLES, BITS_ALLOCATED, FRAMES = 0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008
PIXEL_REPRESENTATION = 0x00280103
# The VRs the pixel data's length is computed from must have (Explicit VR): pydicom, and every reader
# after it, cannot compute the length from a Rows sent as text.
IMAGE_VRS = {ROWS: b"US", COLUMNS: b"US", SAMPLES: b"US", BITS_ALLOCATED: b"US", FRAMES: b"IS"}
TRANSFER_SYNTAX = 0x00020010

# PS3.5 Table 6.2-1: maximum length of one value (PN: of one component group), in bytes.
MAX_LENGTH = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64, "PN": 64,
    "SH": 16, "TM": 14, "UI": 64,
}  # fmt: skip
# Attributes the node keeps in database columns (node.db.models): tag -> VR. Add one here when a column
# takes another attribute. UIDs are checked by node.uids (0xC220), not here.
STORED_ATTRIBUTES: dict[int, str] = {
    0x00080060: "CS",  # Modality: series.modality
    0x00200013: "IS",  # Instance Number: instances.instance_number
}


class InvalidInstance(Exception):
    """The bytes are not a complete, consistent instance; `status` is the DICOM status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def tag_name(tag: int) -> str:
    entry = DicomDictionary.get(tag)
    where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    return f"{where} {entry[2]}" if entry else where


def value_too_long(vr: str, value: bytes, maximum: int) -> bool:
    """True if one value of a multi-valued element (PN: one component group) exceeds `maximum`."""
    if len(value.rstrip(b" \0")) <= maximum:
        return False
    parts = value.rstrip(b" \0").split(b"\\")
    if vr == "PN":
        parts = [group for part in parts for group in part.split(b"=")]
    return any(len(part) > maximum for part in parts)


class _Walker:
    def __init__(self, data: memoryview, explicit: bool, little: bool, syntax: str) -> None:
        self.data = data
        self.explicit = explicit
        self.little = little
        self.syntax = syntax
        self.head = struct.Struct("<HH" if little else ">HH")
        self.u16 = struct.Struct("<H" if little else ">H")
        self.u32 = struct.Struct("<L" if little else ">L")
        # An element's first 8 bytes in one unpack: group, element, then VR and 2-byte length (Explicit
        # VR) or the 4-byte length (Implicit VR).
        self.element_head = struct.Struct(("<" if little else ">") + ("HH2sH" if explicit else "HHL"))
        # The top-level attributes that say how long native pixel data is, as encoded.
        self.image: dict[int, bytes] = {}
        # The offset of the data set's first element (where Explicit VR bytes give themselves away).
        self.first = -1

    # -- data sets ---------------------------------------------------------------------------------

    def dataset(self, offset: int, limit: int, depth: int, delimited: bool, top: bool) -> int:
        """Walk the elements from `offset` to `limit`; `delimited` (an item of undefined length): up to
        its item delimiter, which must come before `limit`. Returns the offset after the last."""
        data = self.data
        while offset < limit:
            if limit - offset < 8:
                raise _decode(f"{limit - offset} bytes left at offset {offset}: not a whole element")
            head = self.element_head.unpack_from(data, offset)
            group = head[0]
            tag = group << 16 | head[1]
            if group == 0xFFFE:
                if tag != ITEM_DELIMITER:
                    raise _decode(f"({group:04X},{head[1]:04X}) where an element should be, offset {offset}")
                if not delimited:
                    raise _decode(f"item delimiter (FFFE,E00D) outside an item at offset {offset}")
                return offset + 8
            offset = self.element(tag, head, offset, limit, depth, top)
        if delimited:
            raise _decode("item of undefined length without item delimiter (FFFE,E00D)")
        return offset

    def element(self, tag: int, head: tuple[int, ...], offset: int, limit: int, depth: int, top: bool) -> int:
        data = self.data
        vr = b""
        if self.explicit:
            vr = head[2]  # type: ignore[assignment]  # bytes from the "2s"
            if vr in SHORT_VRS:
                length = head[3]
                start = offset + 8
            elif vr in LONG_VRS:
                if limit - offset < 12:
                    raise _decode(f"{tag_name(tag)} header cut short")
                (length,) = self.u32.unpack_from(data, offset + 8)
                start = offset + 12
            else:
                raise _decode(f"{tag_name(tag)} has an unknown VR {_show(vr)}")
        else:
            if offset == self.first and _looks_explicit(data, offset):
                self.explicit_on_implicit(tag, offset, limit)
            length = head[2]
            start = offset + 8
        if length == UNDEFINED:
            return self.undefined(tag, vr, start, limit, depth, top)
        end = start + length
        if end > limit:
            raise _decode(f"{tag_name(tag)} claims {length} bytes, {limit - start} left")
        size = VALUE_SIZE.get(vr) if self.explicit else _implicit_size(tag)
        if size is not None and length % size:
            raise _decode(f"{tag_name(tag)} value of {length} bytes, not a multiple of {size}")
        if vr == b"SQ" or (not self.explicit and tag in SEQUENCE_TAGS):
            self.items(tag, start, end, depth + 1, delimited=False)
        elif top:
            if vr and tag in IMAGE_VRS and vr not in (IMAGE_VRS[tag], b"UN"):
                raise _pixels(f"{tag_name(tag)} has VR {_show(vr)}, not {IMAGE_VRS[tag].decode()}")
            self.top_value(tag, start, end)
        return end

    def undefined(self, tag: int, vr: bytes, start: int, limit: int, depth: int, top: bool) -> int:
        """An element of undefined length: a sequence, or encapsulated pixel data."""
        if tag == PIXEL_DATA:
            if self.syntax in NATIVE_SYNTAXES:
                raise _pixels(f"{tag_name(tag)} is encapsulated on native {self.syntax}")
            return self.encapsulated(start, limit, top)
        if self.explicit and vr not in (b"SQ", b"UN"):
            raise _decode(f"{tag_name(tag)} {vr.decode()} of undefined length")
        if vr == b"UN":  # PS3.5 6.2.2: an unknown sequence, encoded as Implicit VR Little Endian
            inner = _Walker(self.data, explicit=False, little=True, syntax=self.syntax)
            return inner.items(tag, start, limit, depth + 1, delimited=True)
        return self.items(tag, start, limit, depth + 1, delimited=True)

    def items(self, tag: int, offset: int, limit: int, depth: int, delimited: bool) -> int:
        """The items of sequence `tag` from `offset` to `limit` (`delimited`: to its sequence delimiter,
        which must come before `limit`)."""
        if depth > MAX_DEPTH:
            raise _decode(f"{tag_name(tag)}: sequences nested deeper than {MAX_DEPTH}")
        data = self.data
        while offset < limit:
            if limit - offset < 8:
                raise _decode(f"{tag_name(tag)}: {limit - offset} bytes left where an item should be")
            group, element = self.head.unpack_from(data, offset)
            (length,) = self.u32.unpack_from(data, offset + 4)
            item_tag = group << 16 | element
            if item_tag == SEQUENCE_DELIMITER and delimited:
                return offset + 8
            if item_tag != ITEM:
                raise _decode(f"{tag_name(tag)}: ({group:04X},{element:04X}) where an item should be")
            start = offset + 8
            if length == UNDEFINED:
                offset = self.dataset(start, limit, depth, delimited=True, top=False)
                continue
            if start + length > limit:
                raise _decode(f"{tag_name(tag)}: item claims {length} bytes, {limit - start} left")
            offset = self.dataset(start, start + length, depth, delimited=False, top=False)
        if delimited:
            raise _decode(f"{tag_name(tag)}: sequence of undefined length without delimiter (FFFE,E0DD)")
        return offset

    # -- pixel data and the values at the top level -------------------------------------------------

    def top_value(self, tag: int, start: int, end: int) -> None:
        if tag in (ROWS, COLUMNS, SAMPLES, BITS_ALLOCATED, FRAMES, PIXEL_REPRESENTATION):
            self.image[tag] = bytes(self.data[start:end])
        elif not self.explicit and tag in US_OR_SS_TAGS and PIXEL_REPRESENTATION not in self.image:
            raise _decode(f"{tag_name(tag)} is US or SS, and (0028,0103) Pixel Representation is missing")
        stored_vr = STORED_ATTRIBUTES.get(tag)
        if stored_vr is not None:
            maximum = MAX_LENGTH[stored_vr]
            if value_too_long(stored_vr, bytes(self.data[start:end]), maximum):
                raise InvalidInstance(
                    STATUS_VALUE_TOO_LONG,
                    f"{tag_name(tag)} value longer than {maximum} ({stored_vr}): {end - start} bytes",
                )
        if tag == PIXEL_DATA:
            if self.syntax not in NATIVE_SYNTAXES:
                raise _pixels(f"{tag_name(tag)} is native on encapsulated {self.syntax}")
            self.native_pixels(end - start)

    def number(self, tag: int) -> int | None:
        raw = self.image.get(tag)
        if raw is None or not raw:
            return None
        if tag == FRAMES:  # IS
            text = raw.rstrip(b" \0").strip()
            if not text.isdigit():
                raise _pixels(f"{tag_name(tag)} is not a number: {_show(raw[:16])}")
            return int(text)
        if len(raw) != 2:
            raise _decode(f"{tag_name(tag)} US value of {len(raw)} bytes")
        return int(self.u16.unpack(raw)[0])

    def native_pixels(self, length: int) -> None:
        # Type 1 in the Image Pixel module (PS3.3 C.7.6.3): without them the length cannot be checked.
        required = (ROWS, COLUMNS, BITS_ALLOCATED, SAMPLES)
        missing = [tag_name(t) for t in required if self.number(t) is None]
        if missing:
            raise _pixels(f"{tag_name(PIXEL_DATA)} without {', '.join(missing)}")
        rows, columns, bits = self.number(ROWS), self.number(COLUMNS), self.number(BITS_ALLOCATED)
        assert rows is not None and columns is not None and bits is not None
        samples = self.number(SAMPLES) or 1
        frames = self.number(FRAMES) or 1
        pixels = rows * columns * samples * frames
        expected = (pixels * bits + 7) // 8
        if length != expected and not (expected % 2 and length == expected + 1):
            raise _pixels(f"{tag_name(PIXEL_DATA)} {length} bytes, expected {expected}")

    def encapsulated(self, offset: int, limit: int, top: bool) -> int:
        """PS3.5 A.4: a Basic Offset Table item, fragment items, the sequence delimiter."""
        data, name = self.data, tag_name(PIXEL_DATA)
        table: list[int] | None = None
        fragments = total = 0
        while True:
            if limit - offset < 8:
                raise _pixels(f"{name}: encapsulated without sequence delimiter")
            group, element = self.head.unpack_from(data, offset)
            (length,) = self.u32.unpack_from(data, offset + 4)
            item_tag = group << 16 | element
            if item_tag == SEQUENCE_DELIMITER:
                offset += 8
                break
            if item_tag != ITEM:
                raise _pixels(f"{name}: ({group:04X},{element:04X}) where a fragment item should be")
            if length == UNDEFINED or offset + 8 + length > limit:
                raise _pixels(f"{name}: item claims {length} bytes, {limit - offset - 8} left")
            if table is None:
                if length % 4:
                    raise _pixels(f"{name}: Basic Offset Table of {length} bytes, not a multiple of 4")
                table = list(self.offsets(length // 4).unpack_from(data, offset + 8))
            else:
                fragments += 1
                total += 8 + length
            offset += 8 + length
        if fragments == 0:
            raise _pixels(f"{name}: encapsulated without fragments")
        if not top:  # e.g. an icon image: its own rows and frames are not followed here
            return offset
        frames = self.number(FRAMES) or 1
        if fragments < frames:
            raise _pixels(f"{name}: {fragments} fragments for {frames} frames")
        if table:
            if len(table) != frames:
                raise _pixels(f"{name}: Basic Offset Table has {len(table)} offsets for {frames} frames")
            ascending = all(a < b for a, b in zip(table, table[1:], strict=False))
            if table[0] != 0 or not ascending or table[-1] >= total:
                raise _pixels(f"{name}: Basic Offset Table offsets do not fit the fragments")
        return offset

    def offsets(self, count: int) -> struct.Struct:
        return struct.Struct(f"{'<' if self.little else '>'}{count}L")

    # -- Explicit VR where Implicit VR was negotiated --------------------------------------------------

    def explicit_on_implicit(self, tag: int, offset: int, limit: int) -> None:
        """The first element's length starts with VR letters: if the data set parses as Explicit VR, it is
        Explicit VR bytes on an Implicit VR context (stored as such, nobody could read it)."""
        trial = _Walker(self.data, explicit=True, little=True, syntax=EXPLICIT_VR_LE)
        try:
            trial.dataset(offset, limit, 0, delimited=False, top=False)
        except InvalidInstance:
            return
        vr = _show(bytes(self.data[offset + 4 : offset + 6]))
        raise _decode(f"{tag_name(tag)}: VR {vr} where Implicit VR has its length: Explicit VR bytes")


def check_instance(
    data: bytes | bytearray | mmap.mmap, transfer_syntax_uid: str, max_bytes: int = 1 << 32
) -> None:
    """Raise InvalidInstance unless `data` (preamble, 'DICM', file meta, data set) is a complete,
    consistent instance in `transfer_syntax_uid`."""
    view = memoryview(data)
    if len(view) < 132 or view[128:132] != b"DICM":
        raise _decode("no DICM prefix after the 128-byte preamble")
    meta = _Walker(view, explicit=True, little=True, syntax=EXPLICIT_VR_LE)
    offset = 132
    meta_syntax = None
    while offset + 8 <= len(view) and meta.head.unpack_from(view, offset)[0] == 0x0002:
        head = meta.element_head.unpack_from(view, offset)
        tag = head[0] << 16 | head[1]
        start = offset
        offset = meta.element(tag, head, offset, len(view), 0, top=False)
        if tag == TRANSFER_SYNTAX:
            meta_syntax = bytes(view[start + 8 : offset]).rstrip(b"\0 ").decode("ascii", "replace")
    if meta_syntax is not None and meta_syntax != transfer_syntax_uid:
        raise _decode(f"(0002,0010) Transfer Syntax UID {meta_syntax} is not {transfer_syntax_uid}")
    syntax = transfer_syntax_uid
    if syntax == DEFLATED_EXPLICIT_VR_LE:
        view, offset = memoryview(_inflate(view[offset:], max_bytes)), 0
    walker = _Walker(view, explicit=syntax != IMPLICIT_VR_LE, little=syntax != EXPLICIT_VR_BE, syntax=syntax)
    walker.first = offset
    if offset >= len(view):
        raise _decode("empty data set")
    walker.dataset(offset, len(view), 0, delimited=False, top=True)


def _inflate(compressed: memoryview, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(compressed, max_bytes + 1)
    except zlib.error as exc:
        raise _decode(f"Deflated data set cannot be inflated: {exc}") from exc
    if len(data) > max_bytes:
        raise _decode(f"Deflated data set inflates to more than {max_bytes} bytes")
    return data


def _implicit_size(tag: int) -> int | None:
    """The value size pydicom will read an Implicit VR element with (None: any length)."""
    size = IMPLICIT_VALUE_SIZE.get(tag)
    if size is not None or tag in DicomDictionary or (tag >> 16) & 1:
        return size  # private elements are UN to pydicom without their creator's dictionary
    if tag & 0xFFFF == 0:
        return 4  # group length, UL
    return _repeater_size(tag)


@functools.lru_cache(maxsize=1024)
def _repeater_size(tag: int) -> int | None:
    """Curve and overlay groups (50xx, 60xx, ...): pydicom's repeater dictionary."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return None if vr.startswith("OB") else VALUE_SIZE.get(vr[:2].encode())


def _looks_explicit(data: memoryview, offset: int) -> bool:
    return bytes(data[offset + 4 : offset + 6]) in SHORT_VRS | LONG_VRS


def _show(raw: bytes) -> str:
    """Bytes for a message (and an ErrorComment, which is ASCII): quoted if printable, else in hex."""
    text = raw.decode("latin-1")
    return repr(text) if text.isascii() and text.isprintable() else "0x" + raw.hex().upper()


def _decode(reason: str) -> InvalidInstance:
    return InvalidInstance(STATUS_CANNOT_DECODE, reason)


def _pixels(reason: str) -> InvalidInstance:
    return InvalidInstance(STATUS_PIXEL_DATA, reason)
