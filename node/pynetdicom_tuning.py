"""The one place where the node changes pynetdicom's behaviour. Keep every such change here.

Everything is installed once, process wide, by `install()` (NodeService.start calls it; a benchmark or
test that uses pynetdicom without a NodeService calls it itself). Nothing here is installed from a
constructor. tests/unit/test_netloop.py fails if pynetdicom's internals move so that a seam no longer
applies.

1. TCP_NODELAY. dcmtk and pynetdicom leave Nagle's algorithm on; on C-STORE traffic (a small
   response after each large request) it costs 5-30x throughput. `set_nodelay` / `tune_association`
   are EVT_CONN_OPEN handlers for both the SCP and the SCU side.

2. Poll delay. pynetdicom's association reactor sleeps a fixed 1 ms per loop and its DUL reactor
   sleeps `_run_loop_delay` (1 ms) when idle. Those sleeps, not CPU, set the per-instance floor
   (~2.5 ms against dcmtk's ~0.23 ms). `install` replaces the `time` module seen by pynetdicom's
   association module with a shim whose `sleep` is capped at the configured delay, and
   `tune_association` sets the DUL delay per association.

3. Reading PDUs (DULServiceProvider._read_pdu_data is replaced by `_read_pdu`). pynetdicom reads the
   6-byte header, then allocates and waits for whatever length it declares, without a deadline. Here:
   - the declared length is checked before anything is allocated: at most NEGOTIATION_PDU_LIMIT
     for the association PDUs, CONTROL_PDU_LIMIT for A-RELEASE and A-ABORT, and for P-DATA-TF the
     maximum PDU length this side advertised (the SCP: receive.max_pdu_bytes). Above it: A-ABORT
     (service-provider, "invalid PDU parameter value") and close;
   - a PDU that has started must arrive in full within the network timeout and, before the
     A-ASSOCIATE-RQ is complete, within what is left of the ARTIM timer (PS3.8 9.1.5; pynetdicom sets
     it to acse_timeout, which the SCP sets to receive.negotiation_timeout). Past the ARTIM deadline
     the connection is closed (PS3.8: ARTIM expiry in Sta2 closes the transport); past the network
     timeout inside an association, A-ABORT and close;
   - an unknown PDU type gets A-ABORT "unrecognized PDU"; an undecodable PDU or a malformed
     A-ASSOCIATE-RQ (a presentation context without abstract or transfer syntax, even context IDs,
     no application context) gets A-ABORT "invalid PDU parameter value". Then the connection closes;
   - the body is read into one preallocated buffer with recv_into, as much as the kernel has per
     call (pynetdicom reads 4 KiB at a time: about 130 recv calls per 512x512 CT image).
   TLS sockets (the SCP's TLS port, TLS destinations) get the same caps, deadlines and answers through
   `fill_tls`.

4. DIMSE requests pynetdicom would leave unanswered (DIMSEServiceProvider.receive_primitive and
   Association._serve_request are wrapped): a PDV on an even or not accepted presentation context
   gets A-ABORT "invalid PDU parameter value"; an unknown command field gets a response with status
   0x0211 (unrecognized operation, PS3.7 C.5); a request that lacks a required parameter gets a
   failure response (C-STORE without Affected SOP Instance UID: 0x0117 invalid SOP instance; without
   Affected SOP Class UID: 0x0122 SOP class not supported; otherwise 0x0212 mistyped argument).
   The association stays usable after a status.

5. Connections per calling host: `start_server` runs a ThreadedAssociationServer subclass whose
   verify_request closes a new connection at once when its IP already has `max_per_host` open ones
   (negotiated or not). `close_unnegotiated` and `abort_associations` serve the shutdown drain.

6. The C-STORE SCU's associations (node.deliver.dimse applies these to each one it opens):
   `guard_responses` stops the reactor from swallowing C-STORE responses (pynetdicom issue #875) and
   `quiet_logging` unbinds pynetdicom's per-message logging handlers.

7. The state machine after the connection has gone (fsm.StateMachine.do_action is wrapped): a peer
   that sends its A-ASSOCIATE-RQ and at once something that makes the DUL abort (a P-DATA-TF before
   the A-ASSOCIATE-AC, an unknown PDU) puts the machine in Sta13 or Sta1 while the association thread
   is still deciding; its A-ASSOCIATE-AC/RJ (Evt7/Evt8) then raised InvalidEventError and killed the
   DUL thread with a traceback (found by tests/fuzz). A local primitive in those states has nowhere
   to go and is dropped.

Every abort, close and refusal above triggers EVT_PROTOCOL_ERROR (a pynetdicom notification event
defined here) with `answer` ("A-ABORT", "closed", "status"), `why`, and `source`/`reason` or `status`,
so that the SCP can audit it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time as _time
import types
import weakref
from collections.abc import Callable
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import _config, evt
from pynetdicom import association as _association
from pynetdicom import dimse as _dimse
from pynetdicom import dul as _dul
from pynetdicom import fsm as _fsm
from pynetdicom import transport as _transport
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dimse_messages import _MESSAGE_TYPES
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_items import TransferSyntaxSubItem
from pynetdicom.pdu_primitives import P_DATA

logger = logging.getLogger(__name__)

DEFAULT_POLL_DELAY = 0.0001
_DEFAULT_DUL_DELAY = 0.001

# An A-ASSOCIATE-RQ with 128 presentation contexts of 10 transfer syntaxes each is about 38 KiB; a
# user identity item carries at most 2 x 64 KiB but real tokens are a few KiB. 128 KiB fits both.
NEGOTIATION_PDU_LIMIT = 128 * 1024
# A-RELEASE-RQ/RP and A-ABORT have a 4-byte body (PS3.8 9.3.6-9.3.8); anything much larger is hostile.
CONTROL_PDU_LIMIT = 64
# When this side advertised no maximum (0), as some test peers do: still a bound on one allocation.
UNADVERTISED_PDU_LIMIT = 64 * 1024 * 1024

P_DATA_TF_TYPE = 0x04
_CONTROL_TYPES = (0x05, 0x06, 0x07)
_PDU_NAMES = {
    1: "A-ASSOCIATE-RQ",
    2: "A-ASSOCIATE-AC",
    3: "A-ASSOCIATE-RJ",
    4: "P-DATA-TF",
    5: "A-RELEASE-RQ",
    6: "A-RELEASE-RP",
    7: "A-ABORT",
}
# A-ABORT source 2 (service-provider) reasons, PS3.8 9.3.8.
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_INVALID_PARAMETER = 0x06
SOURCE_PROVIDER = 0x02
# Established: the states in which P-DATA may flow (PS3.8 Table 9-10).
_ESTABLISHED = frozenset({"Sta6", "Sta7", "Sta8", "Sta9", "Sta10", "Sta11", "Sta12"})
# An acceptor awaits the A-ASSOCIATE-RQ in Sta2; its first PDU may be read in Sta1, before the DUL
# has processed the transport indication (Evt5) that pynetdicom queues when the connection opens.
_AWAITING_RQ = frozenset({"Sta1", "Sta2"})


# DIMSE statuses (PS3.7 Annex C) for requests the node refuses before any service sees them.
STATUS_INVALID_SOP_INSTANCE = 0x0117
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_MISTYPED_ARGUMENT = 0x0212
STATUS_UNRECOGNIZED_OPERATION = 0x0211
_REQUEST_FIELDS: dict[type, int] = {C_STORE: 0x0001, C_ECHO: 0x0030}

# pynetdicom's PDU decoders raise these on malformed input.
# pynetdicom checks item lengths inside an A-ASSOCIATE-RQ with `assert` (pdu.py _generate_items): an
# item whose length runs past the PDU raised AssertionError past this reader (found by tests/fuzz).
_DECODE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    struct.error,
    UnicodeDecodeError,
    AssertionError,
)

EVT_PROTOCOL_ERROR = evt.NotificationEvent(
    "EVT_PROTOCOL_ERROR", "The node aborted, closed or refused on a protocol error (node.pynetdicom_tuning)"
)


# -- 2. poll delay ---------------------------------------------------------------------------------


class _CappedSleepTime(types.ModuleType):
    """A stand-in for the `time` module whose sleep never exceeds `cap` seconds."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        _time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def _install_poll_delay(seconds: float) -> None:
    current = _association.__dict__.get("time")
    if isinstance(current, _CappedSleepTime):
        current.cap = seconds
    else:
        _association.time = _CappedSleepTime(seconds)


def poll_delay_installed() -> float | None:
    current = _association.__dict__.get("time")
    return current.cap if isinstance(current, _CappedSleepTime) else None


# -- 3. reading PDUs -------------------------------------------------------------------------------

_ORIGINAL_READ_PDU = _dul.DULServiceProvider._read_pdu_data


def _awaiting_rq(dul: _dul.DULServiceProvider) -> bool:
    return dul.assoc.is_acceptor and dul.state_machine.current_state in _AWAITING_RQ


def fill(sock: socket.socket, view: memoryview, deadline: float | None) -> int | None:
    """Read into all of `view`; returns the count (less than len(view) if the peer closed), or None
    when `deadline` (time.monotonic) passed first. Reads without waiting (MSG_DONTWAIT) and waits
    with poll when the kernel has nothing, so the socket's own blocking mode and timeout (shared with
    the threads that send on it) are never changed."""
    poller: select.poll | None = None
    read, size = 0, len(view)
    while read < size:
        try:
            got = sock.recv_into(view[read:], size - read, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if poller is None:
                poller = select.poll()
                poller.register(sock, select.POLLIN)
            if deadline is None:
                poller.poll()
                continue
            remaining = deadline - _time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return None
            continue
        except OSError:
            # Reset, or the socket closed under this reader by another thread (EBADF: seen once in
            # 100,000 fuzz cases, which made pynetdicom's DUL log "Exception in DUL.run()"): the
            # connection is gone either way, and the caller answers that as the peer closing (Evt17).
            return read
        if not got:
            return read
        read += got
    return read


def fill_tls(sock: socket.socket, view: memoryview, deadline: float | None) -> int | None:
    """`fill` for a TLS socket, same answers. An SSLSocket takes no recv flags, and select/poll cannot
    tell a complete TLS record from part of one, so the wait is the socket's own timeout, set to what is
    left of `deadline` before each read and put back after. That is safe because only the DUL thread
    uses a TLS association's socket: pynetdicom reads and sends there, and node.deliver.wire (which
    writes from the sender's thread) is not used on TLS associations."""
    previous = sock.gettimeout()
    read, size = 0, len(view)
    try:
        while read < size:
            if deadline is None:
                sock.settimeout(None)
            else:
                remaining = deadline - _time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
            try:
                got = sock.recv_into(view[read:], size - read)
            except TimeoutError:
                return None
            except (OSError, ValueError):  # ssl.SSLError (bad record, alert), reset; closed under us
                return read
            if not got:
                return read
            read += got
    finally:
        try:
            sock.settimeout(previous)
        except OSError:
            pass
    return read


def _deadline(dul: _dul.DULServiceProvider) -> float | None:
    timeout = dul.network_timeout
    if _awaiting_rq(dul) and dul.artim_timer.timeout is not None:
        artim = max(dul.artim_timer.remaining, 0.0)
        timeout = artim if timeout is None else min(timeout, artim)
    return None if timeout is None else _time.monotonic() + timeout


def _limit(dul: _dul.DULServiceProvider, pdu_type: int, state: str) -> int:
    if pdu_type == P_DATA_TF_TYPE and state in _ESTABLISHED:
        assoc = dul.assoc
        local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
        advertised = int(local.maximum_length or 0)
        return advertised or UNADVERTISED_PDU_LIMIT
    if pdu_type in _CONTROL_TYPES:
        return CONTROL_PDU_LIMIT
    return NEGOTIATION_PDU_LIMIT


def _association_rq_problem(pdu: A_ASSOCIATE_RQ) -> str | None:
    """Why an A-ASSOCIATE-RQ is malformed (PS3.8 9.3.2), or None."""
    if not pdu.application_context_name:
        return "A-ASSOCIATE-RQ without application context"
    contexts = pdu.presentation_context
    if not contexts:
        return "A-ASSOCIATE-RQ without presentation contexts"
    for item in contexts:
        context_id = item.context_id or 0
        if context_id % 2 == 0:
            return f"A-ASSOCIATE-RQ with even presentation context ID {context_id}"
        sub_items = item.abstract_transfer_syntax_sub_items
        transfers = [s for s in sub_items if isinstance(s, TransferSyntaxSubItem)]
        if not item.abstract_syntax:
            return f"presentation context {context_id} has no abstract syntax"
        if not transfers or not all(s.transfer_syntax_name for s in transfers):
            return f"presentation context {context_id} has no transfer syntax"
    try:
        pdu.to_primitive()
    except _DECODE_ERRORS as exc:
        return f"A-ASSOCIATE-RQ not usable: {type(exc).__name__}"
    return None


def _read_pdu(self: _dul.DULServiceProvider) -> None:
    """DULServiceProvider._read_pdu_data with caps, deadlines and answers to malformed PDUs; the
    events it queues for the state machine are pynetdicom's (Evt17 closed, Evt3-16 per PDU type).
    A P-DATA-TF PDU of an established association with a P-DATA interceptor goes to it first."""
    transport = self.socket
    sock = transport.socket if transport is not None else None
    if transport is None or sock is None:
        self.event_queue.put("Evt17")
        return
    state = self.state_machine.current_state
    data = _read_whole_pdu(self, sock, state)
    if data is None:
        return
    interceptor: PDataInterceptor | None = getattr(self.assoc, _INTERCEPTOR_ATTRIBUTE, None)
    if interceptor is not None and data[0] == P_DATA_TF_TYPE and state == "Sta6":
        data = interceptor(
            data,
            lambda: _read_whole_pdu(self, sock, state),
            lambda why: _abort(self, REASON_INVALID_PARAMETER, why),
            _dimse_idle(self),
        )
        if data is None:
            return
    _dispatch_pdu(self, data)


def _read_whole_pdu(dul: _dul.DULServiceProvider, sock: socket.socket, state: str) -> bytearray | None:
    """The next whole PDU (header included), or None when it could not be read: the peer closed,
    a deadline passed, the type is unknown or the length over the limit (each already answered:
    Evt17 queued, or A-ABORT sent and the connection closed)."""
    # recv_into(..., MSG_DONTWAIT) is not allowed on TLS sockets: they have a reader of their own.
    read = fill_tls if isinstance(sock, ssl.SSLSocket) else fill
    deadline = _deadline(dul)
    header = bytearray(6)
    got = read(sock, memoryview(header), deadline)
    if got is None:
        _timed_out(dul, "a PDU header")
        return None
    if got < 6:
        _peer_closed(dul)
        return None
    pdu_type, _, length = struct.unpack(">BBL", header)
    name = _PDU_NAMES.get(pdu_type)
    if name is None:
        _abort(dul, REASON_UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X}")
        return None
    limit = _limit(dul, pdu_type, state)
    if length > limit:
        _abort(dul, REASON_INVALID_PARAMETER, f"{name} declares {length} bytes, more than the limit {limit}")
        return None
    data = bytearray(6 + length)
    data[:6] = header
    got = read(sock, memoryview(data)[6:], deadline)
    if got is None:
        _timed_out(dul, f"a {length}-byte {name}")
        return None
    if got < length:
        _peer_closed(dul)
        return None
    return data


def _dispatch_pdu(dul: _dul.DULServiceProvider, data: bytearray) -> None:
    """Decode a whole PDU and queue it for pynetdicom's state machine (or answer it if malformed)."""
    name = _PDU_NAMES.get(data[0], "PDU")
    try:
        pdu, event = dul._decode_pdu(data)
    except _DECODE_ERRORS as exc:
        _abort(dul, REASON_INVALID_PARAMETER, f"undecodable {name}: {type(exc).__name__}")
        return
    if isinstance(pdu, A_ASSOCIATE_RQ):
        problem = _association_rq_problem(pdu)
        if problem is not None:
            _abort(dul, REASON_INVALID_PARAMETER, problem)
            return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


# -- 3b. P-DATA interceptors (the C-STORE receive fast path, node/receive/wire.py) --------------------

# interceptor(pdu, read_next, abort, pynetdicom_idle) -> the PDU pynetdicom must still handle, or None.
PDataInterceptor = Callable[
    [bytearray, Callable[[], "bytearray | None"], Callable[[str], None], bool], "bytearray | None"
]
# Kept on the association itself, not in a WeakKeyDictionary: an interceptor refers to its association
# (node.receive.wire.StoreReceiver), and a value that refers to its weak key keeps it alive for ever.
_INTERCEPTOR_ATTRIBUTE = "_node_pdata_interceptor"


# How long the acceptor's reactor waits for a DIMSE message per loop when an interceptor serves
# the association's C-STOREs (it also checks for release and abort once per loop).
_REACTOR_WAIT = 0.002


def intercept_pdata(assoc: Association, interceptor: PDataInterceptor, calm_reactor: bool = True) -> None:
    """Offer every P-DATA-TF PDU of `assoc` (Sta6, plain TCP or TLS) to `interceptor` before pynetdicom.

    calm_reactor (acceptors): the association's reactor thread then waits on its message queue
    instead of polling it every 0.1 ms (the capped sleep of 2.): the interceptor runs on the DUL
    thread, and a reactor waking 10,000 times a second took the GIL from it (one association: 47
    against 86 images/s). Not for a C-STORE SCU association, whose reactor guard_responses silences."""
    setattr(assoc, _INTERCEPTOR_ATTRIBUTE, interceptor)
    if not calm_reactor:
        return
    queue_ = assoc.dimse.msg_queue

    def get_msg(block: bool = False) -> Any:
        try:
            return queue_.get(block=True, timeout=None if block else _REACTOR_WAIT)
        except queue.Empty:
            return None, None

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]


def _dimse_idle(dul: _dul.DULServiceProvider) -> bool:
    """pynetdicom is between DIMSE messages: no message half assembled, no data set being dropped,
    no PDU waiting for the state machine. Only then may a PDU start a message outside it."""
    dimse = dul.assoc.dimse
    return dimse.message is None and dimse not in _DISCARDING and dul.event_queue.empty()


def _peer_closed(dul: _dul.DULServiceProvider) -> None:
    """The peer closed the connection (mid-PDU or between PDUs): Evt17, as pynetdicom queues it."""
    dul.event_queue.put("Evt17")
    if _awaiting_rq(dul):
        _wake_acceptor(dul)


def _timed_out(dul: _dul.DULServiceProvider, what: str) -> None:
    if _awaiting_rq(dul):
        # ARTIM expiry while awaiting the A-ASSOCIATE-RQ: close the transport, send nothing (AA-2).
        _notify(dul, "closed", f"{what} did not arrive within the negotiation timeout (ARTIM)")
        _close(dul)
    else:
        _abort(dul, REASON_NOT_SPECIFIED, f"{what} did not arrive in full within the network timeout")


def _peer(assoc: Association) -> str:
    remote = assoc.requestor if assoc.is_acceptor else assoc.acceptor
    info = remote.address_info
    return f"{info.address}:{info.port}" if info is not None else "?"


def _notify(dul: _dul.DULServiceProvider, answer: str, why: str, **details: int) -> None:
    logger.warning("%s from %s: %s", answer, _peer(dul.assoc), why)
    evt.trigger(dul.assoc, EVT_PROTOCOL_ERROR, {"answer": answer, "why": why, **details})


def _abort(dul: _dul.DULServiceProvider, reason: int, why: str) -> None:
    """Send A-ABORT (service-provider, `reason`) and close the connection."""
    pdu = A_ABORT_RQ()
    pdu.source = SOURCE_PROVIDER
    pdu.reason_diagnostic = reason
    transport = dul.socket
    if transport is not None and transport.socket is not None:
        transport.send(pdu.encode())
    _notify(dul, "A-ABORT", why, source=SOURCE_PROVIDER, reason=reason)
    _close(dul)


def _close(dul: _dul.DULServiceProvider) -> None:
    """Close the transport from the DUL thread (pynetdicom queues Evt17 for the state machine)."""
    awaiting_rq = _awaiting_rq(dul)
    if dul.socket is not None:
        dul.socket.close()
    if awaiting_rq:
        _wake_acceptor(dul)


def _wake_acceptor(dul: _dul.DULServiceProvider) -> None:
    """The acceptor's Association thread waits acse_timeout for the A-ASSOCIATE-RQ on to_user_queue;
    None is what its timeout yields, so it ends now instead (and frees its slot)."""
    dul.to_user_queue.put(None)  # type: ignore[arg-type]


# -- 3c. idle associations --------------------------------------------------------------------------

_ORIGINAL_IDLE_EXPIRED = _dul.DULServiceProvider.idle_timer_expired
_IDLE_NOTIFIED: weakref.WeakSet[_dul.DULServiceProvider] = weakref.WeakSet()


def _idle_timer_expired(self: _dul.DULServiceProvider) -> bool:
    """DULServiceProvider.idle_timer_expired that also tells (EVT_PROTOCOL_ERROR, once) when an
    acceptor's association is about to be aborted for being idle past network_timeout: pynetdicom's
    reactor aborts it right after, and says so only in its own log."""
    expired = _ORIGINAL_IDLE_EXPIRED(self)
    if expired and self.assoc.is_acceptor and self not in _IDLE_NOTIFIED:
        _IDLE_NOTIFIED.add(self)
        timeout = self.network_timeout
        _notify(self, "A-ABORT", f"association idle for longer than network_timeout ({timeout:g} s)")
    return bool(expired)


# -- 4. DIMSE requests -----------------------------------------------------------------------------

_ORIGINAL_RECEIVE_PRIMITIVE = _dimse.DIMSEServiceProvider.receive_primitive
_ORIGINAL_SERVE_REQUEST = _association.Association._serve_request
# DIMSE providers that are dropping the data set of a message they refused.
_DISCARDING: weakref.WeakSet[_dimse.DIMSEServiceProvider] = weakref.WeakSet()


def _receive_primitive(self: _dimse.DIMSEServiceProvider, primitive: P_DATA) -> None:
    """DIMSEServiceProvider.receive_primitive that checks context IDs and command fields first."""
    assoc = self.assoc
    pdvs = list(primitive.presentation_data_value_list)
    for context_id, _data in pdvs:
        if context_id % 2 == 0 or context_id not in assoc._accepted_cx:
            kind = "even" if context_id % 2 == 0 else "not accepted"
            _abort(assoc.dul, REASON_INVALID_PARAMETER, f"PDV on presentation context {context_id} ({kind})")
            return
    if self in _DISCARDING:
        while pdvs and self in _DISCARDING:
            _context_id, data = pdvs.pop(0)
            if data[0] & 1:
                _DISCARDING.discard(self)
                why = "command fragment inside the data set of a refused message"
                _abort(assoc.dul, REASON_INVALID_PARAMETER, why)
                return
            if data[0] & 2:
                _DISCARDING.discard(self)
        if not pdvs:
            return
        primitive = _p_data(pdvs)
    try:
        _ORIGINAL_RECEIVE_PRIMITIVE(self, primitive)
    except KeyError:
        command = getattr(self.message, "command_set", None)
        field = command.get("CommandField") if command is not None else None
        if command is None or field is None or field in _MESSAGE_TYPES:
            raise
        self.message = None
        _unknown_command(self, command, pdvs)


def _unknown_command(
    self: _dimse.DIMSEServiceProvider, command: Dataset, pdvs: list[tuple[int, bytes]]
) -> None:
    """pynetdicom's decoder raised on a command field it does not know: answer 0x0211 (requests),
    skip the message's data set, carry on with the PDVs after the command."""
    assoc = self.assoc
    done = next(i for i, (_cx, data) in enumerate(pdvs) if data[0] & 3 == 3)
    context_id = int(pdvs[done][0])
    field = int(command.CommandField)
    why = f"unknown DIMSE command field 0x{field:04X}"
    if field & 0x8000:
        _notify(assoc.dul, "ignored", why)
    else:
        _refuse(assoc, context_id, command, STATUS_UNRECOGNIZED_OPERATION, why)
    if command.get("CommandDataSetType", 0x0101) != 0x0101:
        _DISCARDING.add(self)
    rest = pdvs[done + 1 :]
    if rest:
        _receive_primitive(self, _p_data(rest))


def _p_data(pdvs: list[tuple[int, bytes]]) -> P_DATA:
    primitive = P_DATA()
    # pynetdicom's setter wants lists, though its annotation says tuples.
    primitive.presentation_data_value_list = cast(Any, [[int(cx), bytes(data)] for cx, data in pdvs])
    return primitive


def _serve_request(self: Association, msg: Any, context_id: int) -> None:
    """Association._serve_request that answers requests lacking required parameters, which
    pynetdicom drops without a response."""
    request_field = _REQUEST_FIELDS.get(type(msg))
    if request_field is None or msg.is_valid_request or getattr(msg, "Status", None) is not None:
        _ORIGINAL_SERVE_REQUEST(self, msg, context_id)
        return
    command = Dataset()
    command.CommandField = request_field
    command.MessageID = msg.MessageID if msg.MessageID is not None else 0
    if msg.AffectedSOPClassUID:
        command.AffectedSOPClassUID = msg.AffectedSOPClassUID
    if isinstance(msg, C_STORE) and msg.AffectedSOPClassUID is None:
        status, why = STATUS_SOP_CLASS_NOT_SUPPORTED, "C-STORE-RQ without Affected SOP Class UID"
    elif isinstance(msg, C_STORE) and msg.AffectedSOPInstanceUID is None:
        status, why = STATUS_INVALID_SOP_INSTANCE, "C-STORE-RQ without Affected SOP Instance UID"
    else:
        missing = [k for k in type(msg).REQUEST_KEYWORDS if getattr(msg, k) is None]
        status, why = STATUS_MISTYPED_ARGUMENT, f"request without {', '.join(missing)}"
    _refuse(self, context_id, command, status, why)


def _refuse(assoc: Association, context_id: int, command: Dataset, status: int, why: str) -> None:
    """Send the failure response to `command` (a request's command set) on `context_id`."""
    response = Dataset()
    if "AffectedSOPClassUID" in command:
        response.AffectedSOPClassUID = command.AffectedSOPClassUID
    response.CommandField = int(command.CommandField) | 0x8000
    response.MessageIDBeingRespondedTo = int(command.get("MessageID", 0) or 0)
    response.CommandDataSetType = 0x0101
    response.Status = status
    response.ErrorComment = why[:64]
    body = encode(response, True, True) or b""
    group_length = struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body))
    assoc.dul.send_pdu(_p_data([(context_id, b"\x03" + group_length + body)]))
    _notify(assoc.dul, "status", why, status=status)


# -- 5. connections per host, shutdown -------------------------------------------------------------


def _is_open(assoc: Association) -> bool:
    transport = assoc.dul.socket
    return transport is not None and transport.socket is not None


# How long server_close waits for connections accepted before it to become associations it can close.
_LATE_STARTERS_WAIT = 2.0


class HostLimitedServer(_transport.ThreadedAssociationServer):
    """Closes a new connection at once when its IP already has `max_per_host` open connections."""

    def __init__(self, *args: Any, max_per_host: int, on_refused: Callable[[str, int], None], **kwargs: Any):
        self.max_per_host = max_per_host
        self._on_refused = on_refused
        # Connections verified whose Association thread may not run yet, by (host, port).
        self._starting: set[tuple[str, int]] = set()
        self._count_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def open_connections(self, host: str) -> int:
        """Open connections from `host`: those starting plus the live associations. A connection is
        in both while its Association thread starts (assoc.start() runs inside process_request_thread),
        so a live association still in `_starting` is counted once, not twice."""
        starting = {peer for peer in self._starting if peer[0] == host}
        live = sum(
            1
            for a in self.active_associations
            if _is_open(a) and a.requestor.address == host and (host, a.requestor.port) not in starting
        )
        return live + len(starting)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        with self._count_lock:
            count = self.open_connections(host)
            if count >= self.max_per_host:
                refused = True
            else:
                refused = False
                self._starting.add((host, int(client_address[1])))
        if refused:
            self._on_refused(host, count)
        return not refused

    def server_close(self) -> None:
        """Close the listening socket, then the connections accepted just before it that are still
        awaiting their A-ASSOCIATE-RQ, including those whose Association thread was only starting:
        the shutdown drain cannot see those yet, and each one's DUL thread (not a daemon) would keep
        the process alive until its negotiation timeout."""
        super().server_close()
        deadline = _time.monotonic() + _LATE_STARTERS_WAIT
        while True:
            _close_unnegotiated(self.active_associations)
            with self._count_lock:
                starting = bool(self._starting)
            if not starting or _time.monotonic() > deadline:
                break
            _time.sleep(0.01)
        _close_unnegotiated(self.active_associations)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # The Association thread is running (counted by open_connections) once this returns.
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count_lock:
                self._starting.discard((str(client_address[0]), int(client_address[1])))


def start_server(
    ae: ApplicationEntity,
    address: tuple[str, int],
    evt_handlers: list[Any],
    max_per_host: int,
    on_refused: Callable[[str, int], None],
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_class: type[HostLimitedServer] = HostLimitedServer,
    **server_kwargs: Any,
) -> HostLimitedServer:
    """ae.start_server(address, block=False, ...) with HostLimitedServer (or a subclass: the TLS port's,
    node.receive.tls_listener, with its ssl_context and keyword arguments)."""
    server = cast(
        HostLimitedServer,
        ae.make_server(
            address,
            evt_handlers=evt_handlers,
            ssl_context=ssl_context,
            server_class=server_class,
            max_per_host=max_per_host,
            on_refused=on_refused,
            **server_kwargs,
        ),
    )
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True)
    thread.start()
    ae._servers.append(server)  # AssociationServer.shutdown removes it from there
    return server


def established(ae: ApplicationEntity) -> list[Association]:
    return [a for a in ae.active_associations if a.is_acceptor and a.is_established]


_CLOSED: weakref.WeakSet[Association] = weakref.WeakSet()


def close_unnegotiated(ae: ApplicationEntity) -> int:
    """Close every accepted connection still awaiting its A-ASSOCIATE-RQ; returns how many."""
    return _close_unnegotiated(ae.active_associations)


def _close_unnegotiated(associations: list[Association]) -> int:
    closed = 0
    for assoc in associations:
        dul = assoc.dul
        if assoc in _CLOSED or not _awaiting_rq(dul) or not _is_open(assoc):
            continue
        transport = dul.socket
        sock = transport.socket if transport is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the DUL thread reads end-of-file: Evt17
            except OSError:
                pass
        _CLOSED.add(assoc)
        _wake_acceptor(dul)
        closed += 1
    return closed


def abort_associations(ae: ApplicationEntity) -> int:
    """A-ABORT every established association and close what else is open; returns how many."""
    close_unnegotiated(ae)
    aborted = 0
    for assoc in ae.active_associations:
        if assoc.is_acceptor and assoc.is_established:
            assoc.abort()  # blocking: A-ABORT sent, state machine idle, socket shut down
            aborted += 1
    return aborted


# -- 1. TCP_NODELAY and the per-association handlers ------------------------------------------------


def _socket_of(event: evt.Event) -> socket.socket | None:
    transport = getattr(event.assoc.dul, "socket", None)
    return getattr(transport, "socket", None)


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket."""
    sock = _socket_of(event)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tune_association(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY plus the DUL idle-poll delay from install()."""
    set_nodelay(event)
    cap = poll_delay_installed()
    if cap is not None and hasattr(event.assoc.dul, "_run_loop_delay"):
        event.assoc.dul._run_loop_delay = min(cap, _DEFAULT_DUL_DELAY)


CONN_OPEN_HANDLERS = [(evt.EVT_CONN_OPEN, tune_association)]


# -- 7. the state machine after the connection has gone --------------------------------------------

_ORIGINAL_DO_ACTION = _fsm.StateMachine.do_action
# Events from the local user (PS3.8 9.2): A-ASSOCIATE response accept/reject, P-DATA, A-RELEASE, A-ABORT.
_LOCAL_EVENTS = frozenset({"Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})
_GONE_STATES = frozenset({"Sta1", "Sta13"})  # idle, or awaiting the transport's close


def _do_action(self: _fsm.StateMachine, event: str) -> None:
    if (
        event in _LOCAL_EVENTS
        and self.current_state in _GONE_STATES
        and (event, self.current_state) not in _fsm.TRANSITION_TABLE
    ):
        logger.debug("dropped %s in %s: the connection is already closing", event, self.current_state)
        # The DUL only peeks at the local primitive (to_provider_queue[0]) when it makes the event; the
        # action takes it off. Dropped without that, it would be peeked again at every loop: the DUL
        # spun on it (never reading the socket, so never seeing the peer's close) until ARTIM ended
        # Sta13, and the association held its slot for negotiation_timeout seconds.
        with contextlib.suppress(queue.Empty):
            self.dul.to_provider_queue.get(block=False)
        return
    before = self.current_state
    _ORIGINAL_DO_ACTION(self, event)
    if event == "Evt6" and before == "Sta2" and self.current_state == "Sta13" and self.dul.assoc.is_acceptor:
        # The DUL itself rejected the A-ASSOCIATE-RQ (AE-6: a protocol version it does not support, PS3.8
        # 9.2): the acceptor's Association thread, which waits for the request, would wait acse_timeout.
        _notify(self.dul, "A-ASSOCIATE-RJ", "A-ASSOCIATE-RQ not acceptable to the DUL (protocol version)")
        _wake_acceptor(self.dul)


# -- install ---------------------------------------------------------------------------------------


def install(poll_delay_seconds: float = DEFAULT_POLL_DELAY) -> None:
    """Install every change above, process wide; idempotent (a second call only sets the delay)."""
    _install_poll_delay(poll_delay_seconds)
    _dul.DULServiceProvider._read_pdu_data = _read_pdu  # type: ignore[method-assign]
    _dimse.DIMSEServiceProvider.receive_primitive = _receive_primitive  # type: ignore[method-assign]
    _association.Association._serve_request = _serve_request  # type: ignore[method-assign]
    _dul.DULServiceProvider.idle_timer_expired = _idle_timer_expired  # type: ignore[method-assign]
    _fsm.StateMachine.do_action = _do_action  # type: ignore[method-assign]
    # send_c_store(<path>) sends the encoded data set straight from the file (node.deliver.dimse).
    _config.STORE_SEND_CHUNKED_DATASET = True


def installed() -> bool:
    return (
        _dul.DULServiceProvider._read_pdu_data is _read_pdu
        and _dimse.DIMSEServiceProvider.receive_primitive is _receive_primitive
        and _association.Association._serve_request is _serve_request
        and _dul.DULServiceProvider.idle_timer_expired is _idle_timer_expired
        and _fsm.StateMachine.do_action is _do_action
        and poll_delay_installed() is not None
        and _config.STORE_SEND_CHUNKED_DATASET
    )


# -- the C-STORE SCU side (node.deliver.dimse applies these to each association it opens) ---------------


def guard_responses(assoc: Association) -> None:
    """Stop the association's reactor thread from taking C-STORE responses meant for send_c_store.

    pynetdicom issue #875: ``send_c_store`` pauses the association reactor by clearing a checkpoint
    and waiting for ``_is_paused``, a flag that can still read True while the reactor has already
    passed the checkpoint. The reactor then calls ``dimse.get_msg(block=False)``; when the peer's
    response arrives in that window (a fast peer on loopback), the reactor takes it, logs "Received
    unexpected C-STORE-RSP service message" and drops it, and ``send_c_store`` waits for
    ``dimse_timeout``. The reactor's non-blocking ``get_msg`` exists to serve requests from the peer;
    a C-STORE SCU association carries none, so on our associations it always answers "nothing yet".
    tests/integration/test_forward_plan.py fails if pynetdicom's reactor stops using that call.
    """
    original = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block:
            return None, None
        return original(block=True)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]


_PER_MESSAGE_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def quiet_logging(assoc: Association) -> None:
    """Unbind pynetdicom's per-message logging handlers from this association (after negotiation).

    They format every PDU and DIMSE message (tens per instance) for log lines at INFO/DEBUG that
    the node does not keep; unbinding them saves about a tenth of the sender's CPU. The node logs
    one line per association and one per refused instance itself. Process-wide
    ``_config.LOG_HANDLER_LEVEL`` is left alone: the receiving side may want those lines.
    """
    for event, handler in _PER_MESSAGE_LOG_HANDLERS:
        assoc.unbind(event, handler)
