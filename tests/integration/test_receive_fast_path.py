"""The C-STORE receive fast path (node/receive/wire.py) against a scripted raw-socket peer: data sets in
many PDUs and in the command's PDU, PDUs that end a data set early, the size limit, requests it must
leave to pynetdicom. Each case also runs with receive.fast_path off where the answer must be the same,
so the two receive paths cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from node.db.models import AuditEvent, Instance
from node.receive import scp as scp_module
from tests.nodeutil import make_settings, running_node, synthetic_ct
from tests.rawpeer import (
    A_ABORT,
    A_RELEASE_RP,
    CT_IMAGE_STORAGE,
    RawPeer,
    c_echo_rq,
    c_store_rq,
    data_set_bytes,
    established,
    p_data_tf,
    pdu,
    release_rq,
)

ABORT_INVALID_PARAMETER = (2, 6)


@pytest.fixture
def through_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SOP Instance UIDs that reached pynetdicom's C-STORE handler (the slow path)."""
    seen: list[str] = []
    original = scp_module.handle_store

    def counting(event: Any, *args: Any) -> Any:
        seen.append(str(event.request.AffectedSOPInstanceUID))
        return original(event, *args)

    monkeypatch.setattr(scp_module, "handle_store", counting)
    return seen


@pytest.fixture(params=[True, False], ids=["fast_path", "pynetdicom"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def node_with(tmp_path: Path, fast_path: bool, **receive: Any) -> Any:
    return running_node(make_settings(tmp_path, receive={"fast_path": fast_path, **receive}))


def instances(node: Any) -> list[Instance]:
    with node.sessions() as session:
        return list(session.scalars(select(Instance).order_by(Instance.id)))


def audit(node: Any, name: str) -> list[AuditEvent]:
    with node.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == name)))


def fragments(data: bytes, size: int) -> Iterator[tuple[bytes, bool]]:
    """`data` in pieces of `size`, each with "is it the last one"."""
    for start in range(0, len(data), size):
        yield data[start : start + size], start + size >= len(data)


def send_store(peer: RawPeer, message_id: int, ds: Any, pdu_size: int | None = None) -> None:
    """A C-STORE-RQ: the command in its own PDU, then the data set in PDUs of `pdu_size` (one if None)."""
    body = data_set_bytes(ds)
    peer.send(p_data_tf([(1, 0x03, c_store_rq(message_id, CT_IMAGE_STORAGE, ds.SOPInstanceUID))]))
    for piece, last in fragments(body, pdu_size or len(body)):
        peer.send(p_data_tf([(1, 0x02 if last else 0x00, piece)]))


def spooled_data_set(node: Any, row: Instance) -> bytes:
    """The stored file's bytes after its File Meta Information."""
    raw = (node.spool.absolute(row.path)).read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    return raw[meta_end:]


def test_data_set_in_many_pdus_is_stored_byte_for_byte(
    tmp_path: Path, fast_path: bool, through_pynetdicom: list[str]
) -> None:
    ds = synthetic_ct(rows=64)
    with node_with(tmp_path, fast_path) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            send_store(peer, 1, ds, pdu_size=1000)
            answer = peer.answer(5)
            assert answer.status() == 0x0000
            assert int.from_bytes(answer.command()[0x0120], "little") == 1
            assert answer.command()[0x1000].rstrip(b"\0").decode() == ds.SOPInstanceUID
        (row,) = instances(node)
        assert spooled_data_set(node, row) == data_set_bytes(ds)
        stored = dcmread(node.spool.absolute(row.path))
        assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert stored.PixelData == ds.PixelData
    assert through_pynetdicom == ([] if fast_path else [ds.SOPInstanceUID])


def test_data_set_in_the_commands_pdu_and_echo_between_stores(tmp_path: Path, fast_path: bool) -> None:
    first, second = synthetic_ct(), synthetic_ct()
    with node_with(tmp_path, fast_path) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            command = c_store_rq(1, CT_IMAGE_STORAGE, first.SOPInstanceUID)
            peer.send(p_data_tf([(1, 0x03, command), (1, 0x02, data_set_bytes(first))]))
            assert peer.answer(5).status() == 0x0000
            peer.send(p_data_tf([(3, 0x03, c_echo_rq(2))]))
            assert peer.answer(5).status() == 0x0000
            send_store(peer, 3, second)
            assert peer.answer(5).status() == 0x0000
        assert {r.sop_instance_uid for r in instances(node)} == {first.SOPInstanceUID, second.SOPInstanceUID}


def test_command_split_over_two_pdus_is_left_to_pynetdicom_and_stored(
    tmp_path: Path, through_pynetdicom: list[str]
) -> None:
    ds = synthetic_ct()
    command = c_store_rq(1, CT_IMAGE_STORAGE, ds.SOPInstanceUID)
    with node_with(tmp_path, True) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            peer.send(p_data_tf([(1, 0x01, command[:20])]))
            peer.send(p_data_tf([(1, 0x03, command[20:]), (1, 0x02, data_set_bytes(ds))]))
            assert peer.answer(5).status() == 0x0000
            # The fast path takes the next request again.
            nxt = synthetic_ct()
            send_store(peer, 2, nxt)
            assert peer.answer(5).status() == 0x0000
        assert len(instances(node)) == 2
    assert through_pynetdicom == [ds.SOPInstanceUID]


@pytest.mark.parametrize("ending", ["abort", "release"])
def test_pdu_ending_a_data_set_early_stores_nothing(tmp_path: Path, fast_path: bool, ending: str) -> None:
    ds = synthetic_ct(rows=64)
    body = data_set_bytes(ds)
    with node_with(tmp_path, fast_path) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            peer.send(p_data_tf([(1, 0x03, c_store_rq(1, CT_IMAGE_STORAGE, ds.SOPInstanceUID))]))
            peer.send(p_data_tf([(1, 0x00, body[:1000])]))
            if ending == "abort":
                peer.send(pdu(A_ABORT, b"\0\0\0\0"))
                assert peer.closed_by_node(5)
            else:
                peer.send(release_rq())
                answer = peer.answer(5)
                # pynetdicom answers A-RELEASE-RQ in data transfer with A-RELEASE-RP.
                assert answer.pdu_type == A_RELEASE_RP or answer.kind == "closed", answer
        assert instances(node) == []
        # The node still serves: the same instance, whole, on a new association.
        with RawPeer(node.port) as peer:
            established(peer)
            send_store(peer, 1, ds)
            assert peer.answer(5).status() == 0x0000
        assert len(instances(node)) == 1


@pytest.mark.parametrize(
    "intruder",
    [(1, 0x03, "1 (command)"), (3, 0x00, "3 (data)")],
    ids=["command_inside_data_set", "other_context"],
)
def test_foreign_pdv_inside_a_data_set_is_aborted(tmp_path: Path, intruder: tuple[int, int, str]) -> None:
    context_id, control, named = intruder
    ds = synthetic_ct(rows=64)
    body = data_set_bytes(ds)
    with node_with(tmp_path, True) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            peer.send(p_data_tf([(1, 0x03, c_store_rq(1, CT_IMAGE_STORAGE, ds.SOPInstanceUID))]))
            peer.send(p_data_tf([(1, 0x00, body[:1000])]))
            peer.send(p_data_tf([(context_id, control, c_echo_rq(2))]))
            answer = peer.answer(5)
            assert answer.pdu_type == A_ABORT and answer.abort == ABORT_INVALID_PARAMETER, answer
            assert peer.closed_by_node(5)
        assert instances(node) == []
        (aborted,) = audit(node, "association.aborted")
        expected = f"PDV on presentation context {named} inside the data set of a C-STORE on context 1"
        assert aborted.message == expected


def test_instance_over_the_size_limit_gets_a700_and_the_association_goes_on(
    tmp_path: Path, fast_path: bool
) -> None:
    big, small = synthetic_ct(rows=128), synthetic_ct(rows=8)
    limit = 20_000
    assert len(data_set_bytes(big)) > limit > len(data_set_bytes(small)) + 400
    with node_with(tmp_path, fast_path, max_instance_bytes=limit) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            send_store(peer, 1, big, pdu_size=4000)
            answer = peer.answer(5)
            assert answer.status() == 0xA700
            assert b"max_instance_bytes" in answer.command()[0x0902]
            send_store(peer, 2, small)
            assert peer.answer(5).status() == 0x0000
        assert [r.sop_instance_uid for r in instances(node)] == [small.SOPInstanceUID]
        (rejected,) = audit(node, "instance.rejected")
        assert rejected.details["status"] == 0xA700 and rejected.calling_ae == "RAWPEER"


def test_both_paths_store_identical_files(tmp_path: Path) -> None:
    ds = synthetic_ct(rows=32)
    stored: dict[bool, bytes] = {}
    for fast in (True, False):
        with node_with(tmp_path / str(fast), fast) as node:
            with RawPeer(node.port) as peer:
                established(peer)
                send_store(peer, 1, ds, pdu_size=700)
                assert peer.answer(5).status() == 0x0000
            (row,) = instances(node)
            stored[fast] = (node.spool.absolute(row.path)).read_bytes()
    assert stored[True] == stored[False]


def test_ended_associations_are_freed(tmp_path: Path) -> None:
    """The fast path's receiver refers to its association; it must not keep it (and its buffers) alive
    after the association ends (it did while kept in a WeakKeyDictionary: 30 associations, 30 kept)."""
    import gc
    import time

    from pynetdicom.association import Association

    from tests.nodeutil import scu

    def live_acceptors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, Association) and o.is_acceptor)

    with node_with(tmp_path, True) as node:
        for _ in range(20):
            assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
            assert int(assoc.send_c_store(synthetic_ct()).Status) == 0x0000
            assoc.release()
        deadline = time.monotonic() + 10
        while live_acceptors() and time.monotonic() < deadline:
            time.sleep(0.2)  # the last association's threads end just after its release
        assert live_acceptors() == 0
