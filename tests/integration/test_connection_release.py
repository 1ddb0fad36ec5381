"""A connection the node has answered with A-ABORT or A-ASSOCIATE-RJ gives its slot back as soon as the
peer closes, not after negotiation_timeout: else a peer that misbehaves a few times in a row meets
receive.max_associations_per_host. Two ways it once lingered (found by the fuzzer, docs/security.md):
a P-DATA-TF sent before the A-ASSOCIATE-AC (the DUL then spun on the dropped A-ASSOCIATE response until
ARTIM), and an unsupported protocol version (the DUL rejects it itself, the acceptor thread waited)."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from tests.nodeutil import make_settings, running_node, scu, synthetic_ct
from tests.rawpeer import (
    A_ABORT,
    A_ASSOCIATE_RJ,
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    RawPeer,
    associate_rq,
    c_store_rq,
    data_set_bytes,
    p_data_tf,
    release_rq,
)

NEGOTIATION_TIMEOUT = 30.0  # the slot must come back long before this
RELEASED_WITHIN = 5.0


def _whole_association(request: bytes) -> bytes:
    """`request`, then a C-STORE and an A-RELEASE-RQ, in one send: the node reads them before it answers."""
    ds = synthetic_ct(rows=16)
    return (
        request
        + p_data_tf([(1, 0x03, c_store_rq(1, CT_IMAGE_STORAGE, ds.SOPInstanceUID))])
        + p_data_tf([(1, 0x02, data_set_bytes(ds))])
        + release_rq()
    )


def _request() -> bytes:
    return associate_rq("NODE", "RAWPEER", [(1, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])])


def _p_data_before_the_accept() -> tuple[bytes, int]:
    return _whole_association(_request()), A_ABORT


def _protocol_version_2() -> tuple[bytes, int]:
    request = bytearray(_request())
    request[6:8] = struct.pack(">H", 2)
    return _whole_association(bytes(request)), A_ASSOCIATE_RJ


def _open_connections(node: Any) -> int:
    return int(node.scp._server.open_connections("127.0.0.1"))


@pytest.mark.parametrize(
    "case", [_p_data_before_the_accept, _protocol_version_2], ids=lambda c: c.__name__[1:]
)
def test_answered_connection_frees_its_slot_when_the_peer_closes(tmp_path: Path, case: Any) -> None:
    data, expected = case()
    receive = {"negotiation_timeout": NEGOTIATION_TIMEOUT, "max_associations_per_host": 1}
    with running_node(make_settings(tmp_path, receive=receive)) as node:
        for _ in range(3):  # three in a row from one host, with a per-host limit of one
            with RawPeer(node.port) as peer:
                peer.send(data)
                peer.sock.shutdown(socket.SHUT_WR)
                answer = peer.answer(10)
                assert answer.kind == "pdu" and answer.pdu_type == expected, answer
            deadline = time.monotonic() + RELEASED_WITHIN
            while _open_connections(node) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _open_connections(node) == 0, "the answered connection still holds its slot"
        # The host's one slot is free: a good association gets in.
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        try:
            assert assoc.is_established
            assert int(assoc.send_c_echo().Status) == 0x0000
        finally:
            assoc.release()
