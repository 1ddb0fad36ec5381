"""The SCP against a scripted raw-socket peer (tests/rawpeer.py): oversized and malformed PDUs, peers that
never negotiate, malformed DIMSE requests. Each answer is the one docs/receiving.md gives, the node's
memory does not follow what a header claims, and the node keeps serving good peers.
"""

from __future__ import annotations

import gc
import struct
import time
from pathlib import Path

from sqlalchemy import select

from node.db.models import AuditEvent
from node.pynetdicom_tuning import NEGOTIATION_PDU_LIMIT
from tests.nodeutil import make_settings, running_node, scu, store, synthetic_ct, wait_for
from tests.rawpeer import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    P_DATA_TF,
    VERIFICATION,
    RawPeer,
    associate_rq,
    c_echo_rq,
    c_store_rq,
    command_set,
    data_set_bytes,
    established,
    p_data_tf,
    pdu,
)

MiB = 1024 * 1024
# RSS may move a little (threads, the audit row, allocator arenas); a claimed length must not show.
RSS_TOLERANCE = 64 * MiB
ABORT_INVALID_PARAMETER = (2, 6)
ABORT_UNRECOGNIZED_PDU = (2, 1)


def rss() -> int:
    """Resident set size of this process (the in-process node's), in bytes."""
    gc.collect()
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def events(node, name: str) -> list[AuditEvent]:
    with node.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id)
        return list(session.scalars(query))


def echo_ok(port: int, source: str | None = None) -> bool:
    ae = scu()
    assoc = ae.associate("127.0.0.1", port, ae_title="NODE", bind_address=(source or "127.0.0.1", 0))
    try:
        return bool(assoc.is_established) and int(assoc.send_c_echo().Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


# -- 1. what a PDU header claims is not allocated ----------------------------------------------------


def test_associate_rq_claiming_2_gib_is_aborted_without_allocating(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        before = rss()
        with RawPeer(node.port) as peer:
            peer.send(pdu(A_ASSOCIATE_RQ, b"\0" * 100, declared_length=2**31))
            answer = peer.answer(10)
            assert rss() - before < RSS_TOLERANCE
            assert answer.abort == ABORT_INVALID_PARAMETER, answer
            assert peer.closed_by_node(10)
        [aborted] = events(node, "association.aborted")
        assert "2147483648" in aborted.message and aborted.details["reason"] == 6
        assert echo_ok(node.port)


def test_p_data_claiming_4_gib_inside_an_association_is_aborted_without_allocating(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        before = rss()
        with RawPeer(node.port) as peer:
            established(peer)
            peer.send(pdu(P_DATA_TF, b"\0" * 64, declared_length=0xFFFFFFF0))
            answer = peer.answer(10)
            assert rss() - before < RSS_TOLERANCE
            assert answer.abort == ABORT_INVALID_PARAMETER, answer
            assert peer.closed_by_node(10)
        assert events(node, "association.aborted")[0].details["answer"] == "A-ABORT"
        assert store(node.port, [synthetic_ct()]) == [0]


def test_p_data_limit_is_the_advertised_maximum(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, receive={"max_pdu_bytes": 8192})
    with running_node(settings) as node:
        ds = synthetic_ct(rows=128)  # a 32 KiB data set: four PDUs at 8 KiB
        data = data_set_bytes(ds)
        with RawPeer(node.port) as peer:
            answer = peer.associate()
            assert answer.max_pdu_length() == 8192
            # A P-DATA-TF of exactly the advertised length (PS3.8: the PDU's variable field) is fine.
            peer.send(p_data_tf([(1, 0x03, c_store_rq(1, CT_IMAGE_STORAGE, ds.SOPInstanceUID))]))
            fragment = 8192 - 6
            chunks = [data[i : i + fragment] for i in range(0, len(data), fragment)]
            for n, chunk in enumerate(chunks):
                sent = p_data_tf([(1, 0x02 if n == len(chunks) - 1 else 0x00, chunk)])
                assert n == len(chunks) - 1 or len(sent) == 6 + 8192
                peer.send(sent)
            assert peer.answer(10).status() == 0x0000
            # One byte more is aborted.
            peer.send(pdu(P_DATA_TF, b"\0" * 8193))
            assert peer.answer(10).abort == ABORT_INVALID_PARAMETER


def test_release_and_abort_pdus_have_a_small_limit(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            peer.send(pdu(0x05, b"\0" * 4, declared_length=1_000_000))
            assert peer.answer(10).abort == ABORT_INVALID_PARAMETER
            assert peer.closed_by_node(10)


def test_associate_rq_with_128_contexts_fits_the_negotiation_limit(tmp_path: Path) -> None:
    contexts = [(2 * n + 1, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE] * 10) for n in range(128)]
    request = associate_rq("NODE", "RAWPEER", contexts)
    assert len(request) < NEGOTIATION_PDU_LIMIT // 2
    with running_node(make_settings(tmp_path)) as node, RawPeer(node.port) as peer:
        peer.send(request)
        assert peer.answer(10).is_accept


# -- 2. connections that never negotiate -------------------------------------------------------------


def test_garbage_from_one_host_does_not_lock_out_a_good_peer(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, receive={"negotiation_timeout": 2.0})
    with running_node(settings) as node:
        garbage = [RawPeer(node.port, source="127.0.0.2") for _ in range(20)]
        try:
            for peer in garbage:
                try:
                    peer.send(b"\x01\x00\x00")  # 3 bytes of a PDU header, then silence
                except OSError:
                    pass  # closed at once by the per-host limit
            started = time.monotonic()
            assert echo_ok(node.port)
            assert time.monotonic() - started < 5.0  # promptly, not after the garbage timed out
            # Every garbage connection is closed by the node within the negotiation timeout.
            assert all(peer.closed_by_node(2.0 + 5.0) for peer in garbage)
        finally:
            for peer in garbage:
                peer.close()
        assert echo_ok(node.port, source="127.0.0.2")  # the host is not banned, only limited


def test_connections_per_host_are_limited(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, receive={"max_associations_per_host": 2, "negotiation_timeout": 30})
    with running_node(settings) as node:
        first, second = RawPeer(node.port, source="127.0.0.2"), RawPeer(node.port, source="127.0.0.2")
        try:
            wait_for(lambda: node.scp.active_associations() == 2, what="two connections accepted")
            with RawPeer(node.port, source="127.0.0.2") as third:
                assert third.closed_by_node(5)
            assert first.answer(0.3).kind == "timeout"  # still open, waiting for its A-ASSOCIATE-RQ
            assert echo_ok(node.port)  # another host is not affected
            first.close()
            wait_for(lambda: node.scp.active_associations() == 1, what="the first connection gone")
            with RawPeer(node.port, source="127.0.0.2") as again:
                assert again.associate().is_accept
        finally:
            first.close()
            second.close()


def test_silent_connection_is_closed_after_the_negotiation_timeout(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path, receive={"negotiation_timeout": 1.0})) as node:
        with RawPeer(node.port) as peer:
            assert peer.closed_by_node(1.0 + 5.0)


def test_unknown_pdu_type_first_gets_abort_unrecognized_pdu(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        with RawPeer(node.port) as peer:
            peer.send(pdu(0x09, b"\0" * 3))
            assert peer.answer(5).abort == ABORT_UNRECOGNIZED_PDU
            assert peer.closed_by_node(5)
        [aborted] = events(node, "association.aborted")
        assert aborted.details == {"answer": "A-ABORT", "source": 2, "reason": 1}


def test_associate_rq_without_abstract_and_transfer_syntax_is_aborted(tmp_path: Path) -> None:
    malformed = [
        [(1, None, [])],  # no sub-items at all
        [(1, "", [""])],  # both sub-items present, empty
        [(1, CT_IMAGE_STORAGE, [])],  # no transfer syntax
        [(2, CT_IMAGE_STORAGE, [EXPLICIT_VR_LE])],  # even context ID
    ]
    with running_node(make_settings(tmp_path)) as node:
        for contexts in malformed:
            with RawPeer(node.port) as peer:
                peer.send(associate_rq("NODE", "RAWPEER", contexts))
                assert peer.answer(5).abort == ABORT_INVALID_PARAMETER, contexts
                assert peer.closed_by_node(5)
        messages = [e.message for e in events(node, "association.aborted")]
        assert messages == [
            "presentation context 1 has no abstract syntax",
            "presentation context 1 has no abstract syntax",
            "presentation context 1 has no transfer syntax",
            "A-ASSOCIATE-RQ with even presentation context ID 2",
        ]
        assert echo_ok(node.port)


def test_started_pdu_must_arrive_within_the_network_timeout(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path, receive={"network_timeout": 1.0})) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            peer.send(struct.pack(">BBL", P_DATA_TF, 0, 1000) + b"\0" * 10)  # 10 of 1000 bytes
            assert peer.answer(1.0 + 5.0).abort == (2, 0)
            assert peer.closed_by_node(5)


# -- 3. malformed DIMSE requests get an answer ---------------------------------------------------------


def test_c_store_without_affected_sop_instance_uid_gets_0117_and_the_association_goes_on(
    tmp_path: Path,
) -> None:
    with running_node(make_settings(tmp_path)) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            for message_id, uid in ((7, None), (8, "")):
                peer.send(p_data_tf([(1, 0x03, c_store_rq(message_id, CT_IMAGE_STORAGE, uid))]))
                peer.send(p_data_tf([(1, 0x02, data_set_bytes(synthetic_ct()))]))
                answer = peer.answer(5)
                assert answer.status() == 0x0117
                assert struct.unpack("<H", answer.command()[0x0120])[0] == message_id
                assert struct.unpack("<H", answer.command()[0x0100])[0] == 0x8001
            peer.send(p_data_tf([(3, 0x03, c_echo_rq(9))]))
            assert peer.answer(5).status() == 0x0000
            # Without Affected SOP Class UID: 0x0122, and still the association goes on.
            peer.send(p_data_tf([(1, 0x03, c_store_rq(10, None, "1.2.3.4"))]))
            peer.send(p_data_tf([(1, 0x02, data_set_bytes(synthetic_ct()))]))
            assert peer.answer(5).status() == 0x0122
            peer.send(p_data_tf([(3, 0x03, c_echo_rq(11))]))
            assert peer.answer(5).status() == 0x0000
        refused = events(node, "dimse.refused")
        assert [r.details["status"] for r in refused] == [0x0117, 0x0117, 0x0122]
        assert "Affected SOP Instance UID" in refused[0].message and refused[0].calling_ae == "RAWPEER"


def test_empty_sop_instance_uid_in_the_data_set_gets_cannot_understand(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        ds = synthetic_ct()
        uid = ds.SOPInstanceUID
        ds.SOPInstanceUID = ""
        with RawPeer(node.port) as peer:
            established(peer)
            peer.send(p_data_tf([(1, 0x03, c_store_rq(1, CT_IMAGE_STORAGE, uid))]))
            peer.send(p_data_tf([(1, 0x02, data_set_bytes(ds))]))
            status = peer.answer(5).status()
            assert 0xA900 <= status <= 0xCFFF, hex(status)
        assert events(node, "instance.rejected")


def test_unknown_command_field_gets_0211_and_the_association_goes_on(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            unknown = {0x0002: VERIFICATION, 0x0100: 0x0077, 0x0110: 5, 0x0800: 0x0101}
            peer.send(p_data_tf([(3, 0x03, command_set(unknown))]))
            answer = peer.answer(5)
            assert answer.status() == 0x0211
            assert struct.unpack("<H", answer.command()[0x0100])[0] == 0x8077
            # With a data set: the data set is skipped, the next request is served.
            peer.send(
                p_data_tf(
                    [(1, 0x03, command_set({**unknown, 0x0110: 6, 0x0800: 0x0000})), (1, 0x00, b"\0" * 100)]
                )
            )
            assert peer.answer(5).status() == 0x0211
            peer.send(p_data_tf([(1, 0x02, b"\0" * 100), (3, 0x03, c_echo_rq(7))]))
            assert peer.answer(5).status() == 0x0000
        assert [r.details["status"] for r in events(node, "dimse.refused")] == [0x0211, 0x0211]


def test_pdv_on_even_or_unaccepted_context_is_aborted(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        for context_id in (2, 5):
            with RawPeer(node.port) as peer:
                established(peer)
                peer.send(p_data_tf([(context_id, 0x03, c_echo_rq(1))]))
                answer = peer.answer(5)
                assert answer.pdu_type == A_ABORT and answer.abort == ABORT_INVALID_PARAMETER, answer
                assert peer.closed_by_node(5)
        messages = [e.message for e in events(node, "association.aborted")]
        assert messages == [
            "PDV on presentation context 2 (even)",
            "PDV on presentation context 5 (not accepted)",
        ]
        assert echo_ok(node.port)
