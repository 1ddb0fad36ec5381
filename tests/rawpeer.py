"""A scripted DICOM peer on a raw socket: sends chosen PDU bytes and records what comes back.

The PDUs are built by hand with struct (PS3.8 section 9.3), as pynetdicom's own tests do, so a test can
send what no well-behaved library would: a header that claims 2 GiB, a PDU type that does not exist,
a presentation context with no abstract syntax, a PDV on an even context ID.

    with RawPeer(port) as peer:
        peer.send(associate_rq("NODE", "RAW", [(1, VERIFICATION, [IMPLICIT_VR_LE])]))
        answer = peer.answer(timeout=5)        # Answer(kind="pdu", pdu_type=0x02, body=...)
        assert answer.is_accept and 1 in answer.accepted_contexts()

Every read has a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030


def _uid(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def pdu(pdu_type: int, body: bytes, declared_length: int | None = None) -> bytes:
    """A PDU: type, reserved, 4-byte length (the body's, unless `declared_length` says otherwise), body."""
    length = len(body) if declared_length is None else declared_length
    return struct.pack(">BBL", pdu_type, 0, length) + body


def associate_rq(
    called_ae: str,
    calling_ae: str,
    contexts: list[tuple[int, str | None, list[str]]],
    max_pdu: int = 16384,
    declared_length: int | None = None,
) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2). contexts: (ID, abstract syntax, transfer syntaxes). Malformed on
    request: abstract syntax None leaves its sub-item out, "" sends it empty; an empty list sends no
    transfer syntax sub-item, "" in the list an empty one."""
    variable = _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
    for context_id, abstract, transfers in contexts:
        sub = b""
        if abstract is not None:
            sub += _item(0x30, _uid(abstract))
        for transfer in transfers:
            sub += _item(0x40, _uid(transfer))
        variable += _item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, _uid("1.2.826.0.1.3680043.9.7433.1"))
    variable += _item(0x50, user)
    fixed = (
        struct.pack(">HH", 1, 0)
        + called_ae.encode("ascii").ljust(16)
        + calling_ae.encode("ascii").ljust(16)
        + b"\0" * 32
    )
    return pdu(A_ASSOCIATE_RQ, fixed + variable, declared_length)


def p_data_tf(pdvs: list[tuple[int, int, bytes]], declared_length: int | None = None) -> bytes:
    """P-DATA-TF (PS3.8 9.3.5). pdvs: (presentation context ID, message control header, fragment)."""
    body = b"".join(
        struct.pack(">LB", len(data) + 2, context_id) + bytes([control]) + data
        for context_id, control, data in pdvs
    )
    return pdu(P_DATA_TF, body, declared_length)


def release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, b"\0\0\0\0")


def _element(group: int, element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"  # UIDs pad with NUL; the tests send no odd-length text
    return struct.pack("<HHL", group, element, len(value)) + value


def command_set(elements: dict[int, bytes | str | int]) -> bytes:
    """A DIMSE command set in Implicit VR Little Endian with its group length. Keys are element numbers
    of group 0000 (0x0002 AffectedSOPClassUID, 0x0100 CommandField, ...); str values are UIDs/text,
    int values are US."""
    encoded = b""
    for element in sorted(elements):
        value = elements[element]
        if isinstance(value, int):
            raw = struct.pack("<H", value)
        elif isinstance(value, str):
            raw = value.encode("ascii")
        else:
            raw = value
        encoded += _element(0x0000, element, raw)
    return _element(0x0000, 0x0000, struct.pack("<L", len(encoded))) + encoded


def c_store_rq(message_id: int, sop_class: str | None, sop_instance: str | None) -> bytes:
    elements: dict[int, bytes | str | int] = {
        0x0100: C_STORE_RQ,
        0x0110: message_id,
        0x0700: 0,
        0x0800: 0x0000,
    }
    if sop_class is not None:
        elements[0x0002] = sop_class
    if sop_instance is not None:
        elements[0x1000] = sop_instance
    return command_set(elements)


def c_echo_rq(message_id: int) -> bytes:
    return command_set({0x0002: VERIFICATION, 0x0100: C_ECHO_RQ, 0x0110: message_id, 0x0800: 0x0101})


def parse_command(data: bytes) -> dict[int, bytes]:
    """Group 0000 elements of an Implicit VR Little Endian command set: element number -> raw value."""
    out: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHL", data, offset)
        offset += 8
        if group == 0:
            out[element] = data[offset : offset + length]
        offset += length
    return out


@dataclass
class Answer:
    """What the node did: sent a PDU (`kind` "pdu"), closed the connection ("closed"), or nothing
    before the deadline ("timeout")."""

    kind: str
    pdu_type: int | None = None
    body: bytes = b""

    @property
    def is_accept(self) -> bool:
        return self.pdu_type == A_ASSOCIATE_AC

    @property
    def reject(self) -> tuple[int, int, int] | None:
        """(result, source, reason) of an A-ASSOCIATE-RJ."""
        if self.pdu_type != A_ASSOCIATE_RJ:
            return None
        return self.body[1], self.body[2], self.body[3]

    @property
    def abort(self) -> tuple[int, int] | None:
        """(source, reason) of an A-ABORT."""
        if self.pdu_type != A_ABORT:
            return None
        return self.body[2], self.body[3]

    def accepted_contexts(self) -> list[int]:
        """The context IDs an A-ASSOCIATE-AC accepted (result 0)."""
        accepted = []
        offset = 68  # fixed fields of the A-ASSOCIATE-AC
        while offset + 4 <= len(self.body):
            item_type, _, length = struct.unpack_from(">BBH", self.body, offset)
            if item_type == 0x21 and self.body[offset + 6] == 0:
                accepted.append(self.body[offset + 4])
            offset += 4 + length
        return accepted

    def max_pdu_length(self) -> int | None:
        """The Maximum Length Received that an A-ASSOCIATE-AC advertises (user information 0x51)."""
        offset = 68
        while offset + 4 <= len(self.body):
            item_type, _, length = struct.unpack_from(">BBH", self.body, offset)
            if item_type == 0x50:
                sub, end = offset + 4, offset + 4 + length
                while sub + 4 <= end:
                    sub_type, _, sub_length = struct.unpack_from(">BBH", self.body, sub)
                    if sub_type == 0x51:
                        return int(struct.unpack_from(">L", self.body, sub + 4)[0])
                    sub += 4 + sub_length
            offset += 4 + length
        return None

    def command(self) -> dict[int, bytes]:
        """The command set carried by a P-DATA-TF (its command PDVs joined)."""
        assert self.pdu_type == P_DATA_TF, self
        data = b""
        offset = 0
        while offset + 6 <= len(self.body):
            length, _context = struct.unpack_from(">LB", self.body, offset)
            control = self.body[offset + 5]
            if control & 1:
                data += self.body[offset + 6 : offset + 4 + length]
            offset += 4 + length
        return parse_command(data)

    def status(self) -> int:
        return int(struct.unpack("<H", self.command()[0x0900])[0])


class RawPeer:
    """One TCP connection to the node; `source` binds the client end (e.g. "127.0.0.2")."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", source: str | None = None, connect_timeout: float = 5.0
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(connect_timeout)
        self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, count: int, deadline: float) -> bytes | None:
        """Exactly `count` bytes; b"" (or fewer) when the node closed; None at the deadline."""
        data = b""
        while len(data) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(count - len(data))
            except TimeoutError:
                return None
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
        return data

    def answer(self, timeout: float = 10.0) -> Answer:
        """The next PDU the node sends, or "closed", or "timeout" after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        header = self._read(6, deadline)
        if header is None:
            return Answer("timeout")
        if len(header) < 6:
            return Answer("closed")
        pdu_type, _, length = struct.unpack(">BBL", header)
        body = self._read(length, deadline)
        if body is None:
            return Answer("timeout", pdu_type)
        if len(body) < length:
            return Answer("closed", pdu_type, body)
        return Answer("pdu", pdu_type, body)

    def closed_by_node(self, timeout: float = 10.0) -> bool:
        """True when the node closes the connection within `timeout` (PDUs it sends first are read
        and dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.answer(max(deadline - time.monotonic(), 0.0))
            if got.kind == "closed":
                return True
            if got.kind == "timeout":
                return False

    def associate(
        self,
        called_ae: str = "NODE",
        calling_ae: str = "RAWPEER",
        contexts: list[tuple[int, str, list[str]]] | None = None,
        timeout: float = 10.0,
    ) -> Answer:
        """Send an A-ASSOCIATE-RQ (by default CT storage and Verification) and return the answer."""
        if contexts is None:
            contexts = [(1, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE]), (3, VERIFICATION, [IMPLICIT_VR_LE])]
        self.send(associate_rq(called_ae, calling_ae, contexts))
        return self.answer(timeout)


def data_set_bytes(ds: Any) -> bytes:
    """A pydicom Dataset encoded in Explicit VR Little Endian (the accepted CT context 1 of `established`)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def established(peer: RawPeer) -> None:
    """Associate with CT storage (context 1, Explicit VR LE) and Verification (context 3)."""
    answer = peer.associate()
    assert answer.is_accept and answer.accepted_contexts() == [1, 3], answer
