"""Bytes of the DICOM upper layer and DIMSE that both fast paths (send: node/deliver/wire.py, receive:
node/receive/wire.py) read or write themselves instead of through pynetdicom.

- Command sets: group 0000 elements, always Implicit VR Little Endian (PS3.7 6.3.1).
- P-DATA-TF PDUs: a 6-byte PDU header, then presentation data value items, each a 4-byte item length,
  a presentation context ID and a message control header (bit 0: command, bit 1: last fragment)
  before the fragment (PS3.8 9.3.5 and Annex E.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

P_DATA_TF = 0x04
CONTROL_COMMAND = 0x01
CONTROL_LAST = 0x02

# Command Field values (PS3.7 9.3, E.1).
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
# Command Data Set Type: this value means "no data set"; any other means one follows.
NO_DATA_SET = 0x0101

# Tags of the group 0000 elements the fast paths use (element numbers).
AFFECTED_SOP_CLASS_UID = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000

_PDV_HEADER = struct.Struct(">IBB")
_ELEMENT_HEADER = struct.Struct("<HHI")


def command_element(element: int, value: bytes) -> bytes:
    """A group 0000 element, Implicit VR Little Endian."""
    return _ELEMENT_HEADER.pack(0x0000, element, len(value)) + value


def uid_bytes(value: str) -> bytes:
    """A UI value padded to even length with NUL (PS3.5 6.2)."""
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def text_bytes(value: str) -> bytes:
    """A text value (LO, SH) padded to even length with a space."""
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """The encoded command set of `elements` (ascending element numbers), its group length first."""
    body = b"".join(command_element(element, value) for element, value in elements)
    return command_element(0x0000, struct.pack("<I", len(body))) + body


def pdata_header(context_id: int, control: int, length: int) -> bytes:
    """P-DATA-TF PDU header with one PDV item of `length` data bytes (PS3.8 9.3.5)."""
    item_length = length + 2
    return struct.pack(">BBIIBB", P_DATA_TF, 0x00, item_length + 4, item_length, context_id, control)


@dataclass(frozen=True)
class Pdv:
    """One presentation data value item of a P-DATA-TF PDU: its fragment is pdu[start:end]."""

    context_id: int
    control: int
    start: int
    end: int

    @property
    def is_command(self) -> bool:
        return bool(self.control & CONTROL_COMMAND)

    @property
    def is_last(self) -> bool:
        return bool(self.control & CONTROL_LAST)


def parse_pdvs(pdu: bytes | bytearray) -> list[Pdv] | None:
    """The PDV items of a whole P-DATA-TF PDU (header included), or None when the items do not fill
    the PDU exactly or one is shorter than its context ID and control header."""
    end = len(pdu)
    offset = 6
    items: list[Pdv] = []
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            return None
        length, context_id, control = _PDV_HEADER.unpack_from(pdu, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        items.append(Pdv(context_id, control, offset + 6, offset + 4 + length))
        offset += 4 + length
    return items or None


def parse_command(data: bytes | bytearray | memoryview) -> dict[int, bytes] | None:
    """The elements of an encoded command set by element number, or None when an element runs past
    the end or belongs to another group than 0000."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < _ELEMENT_HEADER.size:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(data, offset)
        offset += _ELEMENT_HEADER.size
        if group != 0x0000 or offset + length > end:
            return None
        elements[element] = bytes(data[offset : offset + length])
        offset += length
    return elements


def us_value(raw: bytes | None) -> int | None:
    """A US value (2 bytes, little endian), or None when absent or of another length."""
    if raw is None or len(raw) != 2:
        return None
    return int(struct.unpack("<H", raw)[0])


def uid_value(raw: bytes | None) -> str | None:
    """A UI value without its padding, or None when absent, empty or not ASCII."""
    if not raw:
        return None
    try:
        value = raw.decode("ascii").rstrip("\x00 ")
    except UnicodeDecodeError:
        return None
    return value or None
