"""The C-STORE fast path: a request written straight onto an established association's socket.

Why: pynetdicom's sender spends most of its CPU outside the network: it builds and encodes every
command set with pydicom (twice, for the group length), and hands each PDU-sized fragment of the data
set to its DUL thread as a P-DATA primitive that goes through the state machine and a PDU encoder.
For a 512x512 CT instance at the common 16 KiB maximum PDU that is ~35 trips per instance, and
the sender, not the peer, sets the pace.

What: for an instance sent as stored, this module encodes the C-STORE-RQ command set itself (seven
fixed elements, Implicit VR Little Endian, PS3.7 9.3.1.1), frames the command and the file's bytes
after the File Meta Information as P-DATA-TF PDUs (PS3.8 9.3.5) no larger than the peer's maximum
PDU length, and writes them on the association's socket from the calling thread. Everything else
stays pynetdicom's: association negotiation, the DUL thread reading the peer's PDUs, the decoded
C-STORE-RSP (taken with ``dimse.get_msg``), release and abort.

Why it is safe: in the established state (Sta6) sending P-DATA does not change the DUL state (DT-1),
and on a C-STORE SCU association nothing else writes on the socket while a request is being sent:
our thread sends one request at a time and waits for its response; the DUL thread only writes for
release or abort, which happen after (or instead of) our writes. A write that fails or does not
progress within the timeout raises WireError; the caller aborts the association.

Not on TLS associations (WireStore raises WireError; the caller uses pynetdicom's send_c_store): there
the DUL thread reading the socket and ours writing it would share one SSL connection object.

The seam is small: `WireStore(assoc)` and `WireStore.send(...)`. DimseSender(fast_path=False) uses
pynetdicom's send_c_store throughout; tests run both and compare what the peer received.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
from pathlib import Path
from typing import BinaryIO

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from node.dimse_encoding import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_STORE_RQ,
    C_STORE_RSP,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    ERROR_COMMENT,
    MESSAGE_ID,
    MESSAGE_ID_BEING_RESPONDED_TO,
    NO_DATA_SET,
    PRIORITY,
    STATUS,
    command_set,
    parse_command,
    parse_pdvs,
    pdata_header,
    uid_bytes,
    us_value,
)
from node.pynetdicom_tuning import intercept_pdata

_PREAMBLE = 128
PREAMBLE_BYTES = _PREAMBLE
_PRIORITY_LOW = 0x0002  # what pynetdicom's send_c_store sends by default
_DATA_SET_PRESENT = 0x0001  # any value but 0x0101; pynetdicom sends 0x0001
_READ_UNLIMITED = 1 << 20  # chunk size when the peer sets no maximum PDU length
HEAD_BYTES = _PREAMBLE + 16  # preamble, "DICM", (0002,0000) UL and its value


class WireError(Exception):
    """The request could not be written: the connection is closed (`closed`), or the peer did not read
    within the timeout."""

    def __init__(self, message: str, closed: bool = False) -> None:
        super().__init__(message)
        self.closed = closed


class UnreadableFile(Exception):
    """The file could not be opened, its header read, or it has no data set; nothing was sent."""


class NotPlainPart10(Exception):
    """The file is not a Part 10 file whose File Meta starts with its group length; nothing was sent."""


def dataset_offset(path: Path) -> int | None:
    """Offset of the data set in a Part 10 file whose File Meta starts with its group length.

    None when the file does not look like that (no 'DICM', no (0002,0000) UL first); the caller then
    falls back to pynetdicom, which parses the File Meta fully.
    """
    with open(path, "rb") as f:
        return offset_from_head(f.read(HEAD_BYTES))


def offset_from_head(head: bytes) -> int | None:
    """The data set's offset from a Part 10 file's first HEAD_BYTES bytes (see dataset_offset)."""
    if len(head) < HEAD_BYTES or head[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        return None
    # (0002,0000) UL, explicit VR little endian: tag, "UL", length 4, value.
    if head[_PREAMBLE + 4 : _PREAMBLE + 12] != b"\x02\x00\x00\x00UL\x04\x00":
        return None
    (group_length,) = struct.unpack("<I", head[_PREAMBLE + 12 : _PREAMBLE + 16])
    return _PREAMBLE + 16 + group_length


def c_store_command(sop_class_uid: str, sop_instance_uid: str, message_id: int) -> bytes:
    """The encoded command set of a C-STORE-RQ with a data set, low priority."""
    return command_set(
        [
            (AFFECTED_SOP_CLASS_UID, uid_bytes(sop_class_uid)),
            (COMMAND_FIELD, struct.pack("<H", C_STORE_RQ)),
            (MESSAGE_ID, struct.pack("<H", message_id)),
            (PRIORITY, struct.pack("<H", _PRIORITY_LOW)),
            (COMMAND_DATA_SET_TYPE, struct.pack("<H", _DATA_SET_PRESENT)),
            (AFFECTED_SOP_INSTANCE_UID, uid_bytes(sop_instance_uid)),
        ]
    )


def read_store_responses(assoc: Association) -> None:
    """Parse this SCU association's C-STORE-RSPs on its DUL thread and queue them for `dimse.get_msg`
    as pynetdicom C_STORE primitives carrying MessageIDBeingRespondedTo and Status, skipping
    pynetdicom's PDU objects, P-DATA primitive and pydicom decoding of the command set (about a
    third of the sender's CPU per instance). Any other PDU goes to pynetdicom as before."""
    responses = assoc.dimse.msg_queue

    def take(pdu: bytearray, _read_next: object, _abort: object, pynetdicom_idle: bool) -> bytearray | None:
        if not pynetdicom_idle:
            return pdu
        pdvs = parse_pdvs(pdu)
        if pdvs is None or len(pdvs) != 1 or not (pdvs[0].is_command and pdvs[0].is_last):
            return pdu
        elements = parse_command(memoryview(pdu)[pdvs[0].start : pdvs[0].end])
        if elements is None:
            return pdu
        field = us_value(elements.get(COMMAND_FIELD))
        data_set = us_value(elements.get(COMMAND_DATA_SET_TYPE))
        message_id = us_value(elements.get(MESSAGE_ID_BEING_RESPONDED_TO))
        status = us_value(elements.get(STATUS))
        if field != C_STORE_RSP or data_set != NO_DATA_SET or message_id is None or status is None:
            return pdu
        response = C_STORE()
        response.MessageIDBeingRespondedTo = message_id
        response.Status = status
        comment = elements.get(ERROR_COMMENT)
        if comment:
            response.ErrorComment = comment.decode("ascii", "replace").strip(" \x00")  # type: ignore[assignment]
        responses.put((pdvs[0].context_id, response))
        return None

    intercept_pdata(assoc, take, calm_reactor=False)


class WireStore:
    """Writes C-STORE requests for one established association."""

    def __init__(self, assoc: Association, timeout: float) -> None:
        transport = assoc.dul.socket
        sock = getattr(transport, "socket", None)
        if not isinstance(sock, socket.socket):
            raise WireError("the association has no plain TCP socket")
        if isinstance(sock, ssl.SSLSocket):
            # An SSL connection must not be written from one thread while pynetdicom's DUL thread reads
            # it (OpenSSL's SSL objects are not safe for that), and takes no MSG_DONTWAIT either.
            raise WireError("TLS association: pynetdicom's sender is used")
        self._sock = sock
        read_store_responses(assoc)
        max_length = int(assoc.acceptor.maximum_length or 0)
        # A PDV item carries 6 bytes of header inside the PDU's variable field (as pynetdicom counts).
        self._fragment = max_length - 6 if max_length else _READ_UNLIMITED
        if self._fragment < 1:
            raise WireError(f"peer maximum PDU length {max_length} is too small")
        self._timeout = timeout

    @staticmethod
    def usable() -> bool:
        return hasattr(socket, "MSG_DONTWAIT")

    def send(
        self, context_id: int, sop_class_uid: str, sop_instance_uid: str, message_id: int, path: Path
    ) -> None:
        """Write one C-STORE-RQ: the command, then the file's data set (after its File Meta), fragmented.

        Raises NotPlainPart10 before writing anything when the file's File Meta cannot be skipped
        by its group length (the caller sends such a file with pynetdicom), UnreadableFile when it
        cannot be opened (nothing sent either), OSError when reading fails part way, WireError when
        the connection fails.
        """
        # Opened outside `with` so that an open failure (nothing sent) is told apart from a read failure.
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise UnreadableFile(f"cannot read {path}: {exc.strerror or exc}") from exc
        with f:
            try:
                head = f.read(HEAD_BYTES)
                size = os.fstat(f.fileno()).st_size
            except OSError as exc:
                raise UnreadableFile(f"cannot read {path}: {exc.strerror or exc}") from exc
            offset = offset_from_head(head)
            if offset is None:
                raise NotPlainPart10(str(path))
            if offset >= size:
                # Checked before the command goes out: an empty data set would spoil the association.
                raise UnreadableFile(
                    f"spool file {path} has no data set after its File Meta "
                    f"({size} bytes, data set at {offset})"
                )
            f.seek(offset)
            command = c_store_command(sop_class_uid, sop_instance_uid, message_id)
            # Commands are small; a peer's maximum PDU is at least a few KiB (dcmtk: 4096).
            self._write(pdata_header(context_id, 0x03, len(command)) + command)
            self._write_data_set(context_id, f)

    def _write_data_set(self, context_id: int, f: BinaryIO) -> None:
        chunk = f.read(self._fragment)
        if not chunk:
            raise WireError("empty data set")
        while True:
            following = f.read(self._fragment)
            control = 0x00 if following else 0x02  # last fragment: bit 1 set
            self._write(pdata_header(context_id, control, len(chunk)) + chunk)
            if not following:
                return
            chunk = following

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise WireError(f"connection closed: {exc.strerror or exc}", closed=True) from exc
            if sent:
                view = view[sent:]
                continue
            try:
                _, writable, _ = select.select([], [self._sock], [], self._timeout)
            except (OSError, ValueError) as exc:  # closed under us (abort from the DUL thread)
                raise WireError(f"connection closed: {exc}", closed=True) from exc
            if not writable:
                raise WireError(f"the peer did not read for {self._timeout:g} s")
