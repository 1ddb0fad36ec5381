"""The C-STORE receive fast path: requests read from the P-DATA-TF PDUs on the DUL thread, below
pynetdicom's DIMSE layer.

Why: pynetdicom turns every PDU into a P-DATA primitive, queues it through its state machine to the
DIMSE provider, decodes the command set with pydicom, queues the message to the association thread,
which calls the handler; the response goes back the same way. On 2 vCPU that costs about as much per
CT instance as storing it durably (docs/performance.md, "Receive path: where the time goes"), and the
three threads it uses compete for the GIL with the handler's.

What: `StoreReceiver.take` is called by node.pynetdicom_tuning's PDU reader (the DUL thread) with each
whole P-DATA-TF PDU of an established association. When the PDU starts a complete C-STORE-RQ
command set on an accepted presentation context, this module collects the data set's fragments itself
(reading the following PDUs with the same caps and deadlines), stores the instance
(node.receive.cstore.store: the same code as pynetdicom's path) and writes the C-STORE-RSP on the
socket. Anything else (C-ECHO, a command set that pynetdicom's checks must answer, a PDU while
pynetdicom is inside a message of its own) goes to pynetdicom unchanged.

Why it is safe: every write pynetdicom makes on an association happens on the DUL thread (its state
machine's actions), and so does this one, so responses are never interleaved with other PDUs. The
state machine stays in Sta6 (data transfer does not change it, PS3.8 Table 9-10). A PDU other than
P-DATA-TF in the middle of a data set (A-ABORT, A-RELEASE-RQ) ends the request unanswered, nothing
stored, and goes to pynetdicom. Nothing is acknowledged before Ingest.accept returned.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from pynetdicom.association import Association

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
    Pdv,
    command_set,
    parse_command,
    parse_pdvs,
    pdata_header,
    text_bytes,
    uid_bytes,
    uid_value,
    us_value,
)
from node.errors import SpoolError
from node.receive.cstore import ERROR_COMMENT_MAX, StoreAnswer, StoreRequest, part10_prefix
from node.receive.incoming import IncomingFile, Part10
from node.receive.ingest import STATUS_OUT_OF_RESOURCES, RejectedInstance

logger = logging.getLogger(__name__)

# Reads the next whole PDU of the association (caps and deadlines applied), or None when the
# connection ended or was aborted (the reader has already told pynetdicom).
ReadPdu = Callable[[], bytearray | None]
# Stores one instance and says what to answer (node.receive.cstore.store_part10 with its dependencies
# bound): the whole Part 10 file.
StoreFn = Callable[[StoreRequest, Part10], StoreAnswer]
# Answers (and audits) an instance dropped while it arrived (past the size limit, the disk floor).
RefuseFn = Callable[[StoreRequest, RejectedInstance, int], StoreAnswer]
# The buffer for one data set behind its File Meta (node.receive.incoming).
IncomingFn = Callable[[bytes], IncomingFile]
# Sends A-ABORT (invalid PDU parameter) with a reason and closes: node.pynetdicom_tuning's.
AbortFn = Callable[[str], None]


class _Command:
    """A C-STORE-RQ command set with every parameter the fast path needs, or not one at all."""

    def __init__(self, elements: dict[int, bytes]) -> None:
        self.sop_class_uid = uid_value(elements.get(AFFECTED_SOP_CLASS_UID))
        self.sop_instance_uid = uid_value(elements.get(AFFECTED_SOP_INSTANCE_UID))
        self.message_id = us_value(elements.get(MESSAGE_ID))
        self.field = us_value(elements.get(COMMAND_FIELD))
        self.data_set_type = us_value(elements.get(COMMAND_DATA_SET_TYPE))
        self.has_priority = us_value(elements.get(PRIORITY)) is not None

    @property
    def is_complete_store(self) -> bool:
        return (
            self.field == C_STORE_RQ
            and self.sop_class_uid is not None
            and self.sop_instance_uid is not None
            and self.message_id is not None
            and self.has_priority
            and self.data_set_type is not None
            and self.data_set_type != NO_DATA_SET
        )


def c_store_response(
    context_id: int, sop_class_uid: str, sop_instance_uid: str, message_id: int, answer: StoreAnswer
) -> bytes:
    """A whole P-DATA-TF PDU carrying the C-STORE-RSP (PS3.7 9.3.1.2)."""
    elements = [
        (AFFECTED_SOP_CLASS_UID, uid_bytes(sop_class_uid)),
        (COMMAND_FIELD, struct.pack("<H", C_STORE_RSP)),
        (MESSAGE_ID_BEING_RESPONDED_TO, struct.pack("<H", message_id)),
        (COMMAND_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
        (STATUS, struct.pack("<H", answer.status)),
    ]
    if answer.comment and answer.status != 0x0000:
        elements.append((ERROR_COMMENT, text_bytes(answer.comment[:ERROR_COMMENT_MAX])))
    elements.append((AFFECTED_SOP_INSTANCE_UID, uid_bytes(sop_instance_uid)))
    command = command_set(elements)
    return pdata_header(context_id, 0x03, len(command)) + command


class StoreReceiver:
    """The fast path of one acceptor association (created when the connection opens)."""

    def __init__(
        self,
        assoc: Association,
        store: StoreFn,
        refuse: RefuseFn,
        incoming: IncomingFn,
        request_for: Callable[[Association, str, str, str], StoreRequest],
    ) -> None:
        self._assoc = assoc
        self._store = store
        self._refuse = refuse
        self._incoming = incoming
        self._request_for = request_for

    def take(
        self, pdu: bytearray, read_next: ReadPdu, abort: AbortFn, pynetdicom_idle: bool
    ) -> bytearray | None:
        """Handle `pdu` (a whole P-DATA-TF PDU) when it starts a C-STORE-RQ; returns None when it (and
        what followed) was handled here, or the PDU that pynetdicom must handle: `pdu` itself when it
        is not ours, or a non-P-DATA PDU that arrived in the middle of a data set."""
        if not pynetdicom_idle:
            return pdu
        pdvs = parse_pdvs(pdu)
        if pdvs is None or not pdvs[0].is_command or not pdvs[0].is_last:
            return pdu
        context_id = pdvs[0].context_id
        context = self._assoc._accepted_cx.get(context_id)
        if context_id % 2 == 0 or context is None or any(p.is_command for p in pdvs[1:]):
            return pdu
        if any(p.context_id != context_id for p in pdvs):
            return pdu
        elements = parse_command(memoryview(pdu)[pdvs[0].start : pdvs[0].end])
        if elements is None:
            return pdu
        command = _Command(elements)
        if not command.is_complete_store:
            return pdu
        return self._receive_data_set(
            pdu, pdvs[1:], context_id, str(context.transfer_syntax[0]), command, read_next, abort
        )

    def _receive_data_set(
        self,
        pdu: bytearray,
        pdvs: list[Pdv],
        context_id: int,
        transfer_syntax: str,
        command: _Command,
        read_next: ReadPdu,
        abort: AbortFn,
    ) -> bytearray | None:
        assert command.sop_class_uid is not None and command.sop_instance_uid is not None
        assert command.message_id is not None
        request = self._request_for(
            self._assoc, transfer_syntax, command.sop_class_uid, command.sop_instance_uid
        )
        # The file as it will be spooled: the File Meta first, the fragments appended to it (in memory,
        # or on disk past receive.spill_to_disk_bytes).
        incoming = self._incoming(part10_prefix(request))
        try:
            complete, handback = self._collect(incoming, pdu, pdvs, context_id, command, read_next, abort)
            if not complete:
                # Closed or aborted while the data set arrived (handback None), or another PDU came
                # before its last fragment (pynetdicom handles it): nothing stored, no answer.
                return handback
            answer = self._answer(request, incoming)
        finally:
            incoming.abandon()  # what was not finished (a no-op once finish() handed it over)
        self._send(
            c_store_response(
                context_id, command.sop_class_uid, command.sop_instance_uid, command.message_id, answer
            )
        )
        return None

    def _collect(
        self,
        incoming: IncomingFile,
        pdu: bytearray,
        pdvs: list[Pdv],
        context_id: int,
        command: _Command,
        read_next: ReadPdu,
        abort: AbortFn,
    ) -> tuple[bool, bytearray | None]:
        """Append the data set's fragments until the last one: (True, None). (False, None) when the
        association ended first, (False, pdu) when a PDU other than P-DATA-TF came first."""
        while True:
            for pdv in pdvs:
                if pdv.context_id != context_id or pdv.is_command:
                    abort(
                        f"PDV on presentation context {pdv.context_id} "
                        f"({'command' if pdv.is_command else 'data'}) inside the data set of a C-STORE "
                        f"on context {context_id}"
                    )
                    return False, None
                incoming.append(memoryview(pdu)[pdv.start : pdv.end])
                if pdv.is_last:
                    return True, None
            following = read_next()
            if following is None:
                return False, None
            if following[0] != 0x04:
                logger.warning(
                    "C-STORE of %s ended by a PDU of type 0x%02X before its last fragment; not stored",
                    command.sop_instance_uid,
                    following[0],
                )
                return False, following
            parsed = parse_pdvs(following)
            if parsed is None:
                abort("malformed P-DATA-TF PDU (PDV items do not fill the PDU)")
                return False, None
            pdu, pdvs = following, parsed

    def _answer(self, request: StoreRequest, incoming: IncomingFile) -> StoreAnswer:
        if incoming.refusal is not None:
            return self._refuse(request, incoming.refusal, incoming.size)
        try:
            part10 = incoming.finish()
        except SpoolError as exc:
            return self._refuse(request, RejectedInstance(STATUS_OUT_OF_RESOURCES, str(exc)), incoming.size)
        return self._store(request, part10)

    def _send(self, pdu: bytes) -> None:
        transport = self._assoc.dul.socket
        if transport is not None:
            transport.send(pdu)  # on failure pynetdicom's transport queues Evt17 (connection closed)
