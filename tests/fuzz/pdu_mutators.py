"""Mutations of a whole association sent as raw bytes: A-ASSOCIATE-RQ, the C-STORE command and data set
P-DATA-TF PDUs, A-RELEASE-RQ (PS3.8 9.3). A mutator returns the PDUs to send, in order; the driver sends
them, half-closes the socket and waits for the node to answer and close.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tests.rawpeer import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    P_DATA_TF,
    VERIFICATION,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    command_set,
    p_data_tf,
    pdu,
    release_rq,
)

CALLED_AE = "NODE"
CALLING_AE = "FUZZ"
Contexts = list[tuple[int, str | None, list[str]]]
GOOD_CONTEXTS: Contexts = [(1, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE]), (3, VERIFICATION, [IMPLICIT_VR_LE])]
COMMAND_LAST = 0x03  # message control header: command, last fragment
DATA_LAST = 0x02  # data set, last fragment


@dataclass(frozen=True)
class Association:
    """The parts of one valid association that stores `dataset` (Explicit VR LE) on context 1."""

    sop_instance_uid: str
    dataset: bytes

    def request(self, contexts: Contexts = GOOD_CONTEXTS, max_pdu: int = 16384) -> bytes:
        return associate_rq(CALLED_AE, CALLING_AE, contexts, max_pdu=max_pdu)

    def command(self) -> bytes:
        return c_store_rq(1, CT_IMAGE_STORAGE, self.sop_instance_uid)

    def pdus(self) -> list[bytes]:
        return [
            self.request(),
            p_data_tf([(1, COMMAND_LAST, self.command())]),
            p_data_tf([(1, DATA_LAST, self.dataset)]),
            release_rq(),
        ]


def _declared_length(pdu_bytes: bytes, length: int) -> bytes:
    return pdu_bytes[:2] + struct.pack(">L", length & 0xFFFFFFFF) + pdu_bytes[6:]


def pdu_length(rng: random.Random, a: Association) -> list[bytes]:
    """One PDU's length field wrong: zero, off by one, far too long, 2 GiB, 4 GiB - 1."""
    pdus = a.pdus()
    i = rng.randrange(len(pdus))
    actual = len(pdus[i]) - 6
    pdus[i] = _declared_length(
        pdus[i], rng.choice([0, 1, actual - 1, actual + 1, actual + 1000, 0x7FFFFFFF, 0xFFFFFFFF])
    )
    return pdus


def pdu_type(rng: random.Random, a: Association) -> list[bytes]:
    """One PDU's type byte replaced: by one that does not exist or one that is wrong at that point."""
    pdus = a.pdus()
    i = rng.randrange(len(pdus))
    new = rng.choice([0x00, 0x08, 0x09, 0x10, 0x7F, 0xFF, A_ASSOCIATE_RQ, A_ASSOCIATE_AC, P_DATA_TF, A_ABORT])
    pdus[i] = bytes([new]) + pdus[i][1:]
    return pdus


def stream_truncated(rng: random.Random, a: Association) -> list[bytes]:
    """The association's bytes cut at a random point (the driver then half-closes)."""
    stream = b"".join(a.pdus())
    return [stream[: rng.randrange(len(stream))]]


def stream_bit_flips(rng: random.Random, a: Association) -> list[bytes]:
    """Bit flips in the PDU and PDV headers, the A-ASSOCIATE-RQ and the command set (the protocol
    bytes, not the data set, which `dataset_mutators` covers)."""
    pdus = a.pdus()
    i = rng.choice([0, 0, 1, 2, 3])
    data = bytearray(pdus[i])
    span = len(data) if i != 2 else 12  # P-DATA with the data set: its PDU and PDV headers only
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(span)
        data[position] ^= 1 << rng.randrange(8)
    pdus[i] = bytes(data)
    return pdus


def _items(body: bytes, start: int, end: int) -> list[int]:
    """Offsets of the items (type, reserved, 2-byte length) between start and end."""
    out, offset = [], start
    while offset + 4 <= end:
        out.append(offset)
        (length,) = struct.unpack_from(">H", body, offset + 2)
        offset += 4 + length
    return out


def item_length(rng: random.Random, a: Association) -> list[bytes]:
    """An item or sub-item length in the A-ASSOCIATE-RQ wrong (application context, presentation
    context, abstract/transfer syntax, user information, maximum length)."""
    request = bytearray(a.request())
    top = _items(bytes(request), 6 + 68, len(request))
    offsets = list(top)
    for item in top:
        if request[item] in (0x20, 0x50):
            (length,) = struct.unpack_from(">H", request, item + 2)
            first = item + 4 + (4 if request[item] == 0x20 else 0)
            offsets += _items(bytes(request), first, item + 4 + length)
    at = rng.choice(offsets)
    (length,) = struct.unpack_from(">H", request, at + 2)
    new = rng.choice([0, 1, length - 1, length + 1, length + 40, 0xFFFF])
    struct.pack_into(">H", request, at + 2, max(new, 0) & 0xFFFF)
    return [bytes(request), *a.pdus()[1:]]


def presentation_contexts(rng: random.Random, a: Association) -> list[bytes]:
    """Presentation contexts a strict acceptor must refuse or handle: even, zero, duplicate IDs; no,
    empty, overlong or non-UID abstract syntaxes; no, unknown, empty or very many transfer syntaxes;
    and then the C-STORE on context 1 anyway."""
    choice = rng.randrange(9)
    contexts: Contexts
    if choice == 0:
        contexts = [(2, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])]
    elif choice == 1:
        contexts = [(0, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE]), (1, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])]
    elif choice == 2:
        contexts = [(1, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE]), (1, VERIFICATION, [IMPLICIT_VR_LE])]
    elif choice == 3:
        contexts = [(1, rng.choice([None, "", "1." * 40 + "1", "not a uid", "1.2.3"]), [EXPLICIT_VR_LE])]
    elif choice == 4:
        contexts = [(1, CT_IMAGE_STORAGE, rng.choice([[], [""], ["1.2.3.4.5"], ["x" * 70]]))]
    elif choice == 5:
        contexts = [(1, CT_IMAGE_STORAGE, [f"1.2.840.10008.1.2.4.{n}" for n in range(60)] + [EXPLICIT_VR_LE])]
    elif choice == 6:
        contexts = [(n, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE]) for n in range(1, 256, 2)]  # 128 contexts
    elif choice == 7:
        contexts = [(255, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])]
    else:
        contexts = []
    return [a.request(contexts), *a.pdus()[1:]]


def max_pdu(rng: random.Random, a: Association) -> list[bytes]:
    """The requestor's Maximum Length Received: 0 (unlimited), tiny, or 4 GiB - 1."""
    return [a.request(max_pdu=rng.choice([0, 1, 6, 0xFFFFFFFF])), *a.pdus()[1:]]


def pdv_headers(rng: random.Random, a: Association) -> list[bytes]:
    """PDV items wrong: a context ID not negotiated, control bits reserved/contradictory, the data set
    before the command, the command never marked last, a PDV length that disagrees with the PDU."""
    request, command, data, release = a.pdus()
    choice = rng.randrange(6)
    if choice == 0:
        context = rng.choice([0, 2, 5, 255])
        command = p_data_tf([(context, COMMAND_LAST, a.command())])
    elif choice == 1:
        command = p_data_tf([(1, rng.choice([0x04, 0x07, 0xFF, 0x01]), a.command())])
    elif choice == 2:
        command, data = data, command
    elif choice == 3:
        data = p_data_tf([(1, rng.choice([0x00, 0x01, 0x03]), a.dataset)])
    elif choice == 4:
        body = bytearray(data[6:])
        struct.pack_into(">L", body, 0, rng.choice([0, 1, 2, len(body) + 10, 0xFFFFFFFF]))
        data = pdu(P_DATA_TF, bytes(body))
    else:  # many tiny fragments of the command
        fragments = [a.command()[i : i + 2] for i in range(0, len(a.command()), 2)]
        pdvs = [(1, 0x01, f) for f in fragments[:-1]] + [(1, COMMAND_LAST, fragments[-1])]
        command = p_data_tf(pdvs)
    return [request, command, data, release]


def command_sets(rng: random.Random, a: Association) -> list[bytes]:
    """Command sets a DIMSE provider must refuse: unknown command field, a C-ECHO with a data set,
    no Affected SOP Instance UID, "no data set" followed by one, a wrong group length, bit flips."""
    choice = rng.randrange(7)
    if choice == 0:
        command = command_set({0x0002: CT_IMAGE_STORAGE, 0x0100: 0x0FFF, 0x0110: 1, 0x0800: 0})
    elif choice == 1:
        command = c_echo_rq(1)[:-2] + struct.pack("<H", 0)  # C-ECHO that says a data set follows
    elif choice == 2:
        command = c_store_rq(1, CT_IMAGE_STORAGE, None)
    elif choice == 3:
        command = command_set(
            {
                0x0002: CT_IMAGE_STORAGE,
                0x0100: 1,
                0x0110: 1,
                0x0700: 0,
                0x0800: 0x0101,
                0x1000: a.sop_instance_uid,
            }
        )
    elif choice == 4:
        command = bytearray(a.command())
        struct.pack_into("<L", command, 8, rng.choice([0, 4, 0xFFFFFFFF]))
        command = bytes(command)
    elif choice == 5:
        command = c_store_rq(1, rng.choice(["", "1.2.3", VERIFICATION, "9" * 64]), a.sop_instance_uid)
    else:
        data = bytearray(a.command())
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
        command = bytes(data)
    request, _, data_pdu, release = a.pdus()
    return [request, p_data_tf([(1, COMMAND_LAST, command)]), data_pdu, release]


def out_of_order(rng: random.Random, a: Association) -> list[bytes]:
    """PDUs in an order the state machine forbids: data before the association, two requests, a
    release first, an A-ASSOCIATE-AC from the requestor, an abort in the middle."""
    request, command, data, release = a.pdus()
    choice = rng.randrange(6)
    if choice == 0:
        return [command, data, release]
    if choice == 1:
        return [request, request, command, data, release]
    if choice == 2:
        return [release, request, command, data]
    if choice == 3:
        return [pdu(A_ASSOCIATE_AC, request[6:]), command, data]
    if choice == 4:
        return [request, command, pdu(A_ABORT, b"\0\0\0\0"), data, release]
    return [request, command, pdu(A_RELEASE_RQ, b"\0\0\0\0"), data, release]


def request_fields(rng: random.Random, a: Association) -> list[bytes]:
    """A-ASSOCIATE-RQ fixed fields wrong: protocol version, AE titles of spaces or binary, a wrong
    application context name, a huge declared length with a short body."""
    request = bytearray(a.request())
    choice = rng.randrange(5)
    if choice == 0:
        struct.pack_into(">H", request, 6, rng.choice([0, 2, 0xFFFF]))
    elif choice == 1:
        request[10:26] = b" " * 16
    elif choice == 2:
        request[26:42] = bytes(rng.randrange(256) for _ in range(16))
    elif choice == 3:
        at = 6 + 68 + 4
        request[at : at + 4] = b"9.9."
    else:
        request = bytearray(_declared_length(bytes(request), 0x7FFFFFFF))
    return [bytes(request), *a.pdus()[1:]]


PduMutator = Callable[[random.Random, Association], list[bytes]]

PDU_MUTATORS: dict[str, PduMutator] = {
    "pdu_length": pdu_length,
    "pdu_type": pdu_type,
    "stream_truncated": stream_truncated,
    "stream_bit_flips": stream_bit_flips,
    "item_length": item_length,
    "presentation_contexts": presentation_contexts,
    "max_pdu": max_pdu,
    "pdv_headers": pdv_headers,
    "command_sets": command_sets,
    "out_of_order": out_of_order,
    "request_fields": request_fields,
}
