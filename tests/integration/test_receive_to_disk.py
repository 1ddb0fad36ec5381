"""Large instances are written to the spool as they arrive (receive.spill_to_disk_bytes,
node/receive/incoming.py): stored byte for byte, and whatever ends the instance early or refuses it
(validation, size limit, disk floor, an abort, a duplicate) leaves no temporary file behind and the
association goes on."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from node.receive.spool import Spool
from tests.integration.test_receive_fast_path import audit, instances, node_with, send_store, spooled_data_set
from tests.nodeutil import make_settings, running_node, synthetic_ct
from tests.rawpeer import (
    A_ABORT,
    CT_IMAGE_STORAGE,
    RawPeer,
    c_store_rq,
    data_set_bytes,
    established,
    p_data_tf,
    pdu,
)

SPILL = 4096  # bytes: a 64 x 64 slice (8 KiB of pixels) goes to disk, an 8 x 8 one stays in memory


def spill_node(tmp_path: Path, **receive: Any) -> Any:
    return node_with(tmp_path, True, spill_to_disk_bytes=SPILL, **receive)


def leftovers(node: Any) -> list[Path]:
    return list(node.spool.tmp_dir.iterdir())


def test_spilled_instance_is_stored_byte_for_byte(tmp_path: Path) -> None:
    large, small = synthetic_ct(rows=64), synthetic_ct(rows=8)
    assert len(data_set_bytes(large)) > SPILL > len(data_set_bytes(small))
    with spill_node(tmp_path) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            send_store(peer, 1, large, pdu_size=1000)
            assert peer.answer(5).status() == 0x0000
            send_store(peer, 2, small)
            assert peer.answer(5).status() == 0x0000
        rows = {row.sop_instance_uid: row for row in instances(node)}
        row = rows[large.SOPInstanceUID]
        assert spooled_data_set(node, row) == data_set_bytes(large)
        path = node.spool.absolute(row.path)
        assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert dcmread(path).PixelData == large.PixelData
        assert spooled_data_set(node, rows[small.SOPInstanceUID]) == data_set_bytes(small)
        assert leftovers(node) == []


def test_spilled_duplicate_is_acknowledged_and_not_kept(tmp_path: Path) -> None:
    ds = synthetic_ct(rows=64)
    with spill_node(tmp_path) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            for message_id in (1, 2):
                send_store(peer, message_id, ds, pdu_size=3000)
                assert peer.answer(5).status() == 0x0000
        assert len(instances(node)) == 1
        assert len(audit(node, "instance.duplicate")) == 1
        assert leftovers(node) == []


def test_spilled_instance_refused_by_validation_leaves_nothing(tmp_path: Path) -> None:
    bad = synthetic_ct(rows=64)
    bad.Rows = 65  # pixel data no longer rows x columns x bits: 0xC230
    good = synthetic_ct(rows=64)
    with spill_node(tmp_path) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            send_store(peer, 1, bad, pdu_size=2000)
            answer = peer.answer(5)
            assert answer.status() == 0xC230, answer.command().get(0x0902)
            send_store(peer, 2, good, pdu_size=2000)
            assert peer.answer(5).status() == 0x0000
        assert [r.sop_instance_uid for r in instances(node)] == [good.SOPInstanceUID]
        (rejected,) = audit(node, "instance.rejected")
        assert rejected.details["status"] == 0xC230
        assert leftovers(node) == []


@pytest.mark.parametrize("limit", ["max_instance_bytes", "min_free_disk_bytes"])
def test_spilled_instance_past_a_limit_gets_a700_and_the_file_goes(
    tmp_path: Path, limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = synthetic_ct(rows=128)  # 32 KiB of pixels
    receive = {"max_instance_bytes": 20_000} if limit == "max_instance_bytes" else {}
    free = {"bytes": 10 * 2**30}
    monkeypatch.setattr(Spool, "free_bytes", lambda self: free["bytes"])
    with spill_node(tmp_path, **receive) as node:
        if limit == "min_free_disk_bytes":
            # Enough for an instance in memory, too little once the spill would write: refused then.
            free["bytes"] = node.settings.receive.min_free_disk_bytes + SPILL * 2
        with RawPeer(node.port) as peer:
            established(peer)
            send_store(peer, 1, big, pdu_size=4000)
            answer = peer.answer(5)
            assert answer.status() == 0xA700
            assert limit.encode() in answer.command()[0x0902]
            small = synthetic_ct(rows=8)
            send_store(peer, 2, small)
            assert peer.answer(5).status() == 0x0000
        assert [r.sop_instance_uid for r in instances(node)] == [small.SOPInstanceUID]
        (rejected,) = audit(node, "instance.rejected")
        assert rejected.details["size"] == len(data_set_bytes(big))
        assert leftovers(node) == []


def test_abort_while_a_spilled_instance_arrives_leaves_nothing(tmp_path: Path) -> None:
    ds = synthetic_ct(rows=64)
    body = data_set_bytes(ds)
    with spill_node(tmp_path) as node:
        with RawPeer(node.port) as peer:
            established(peer)
            peer.send(p_data_tf([(1, 0x03, c_store_rq(1, CT_IMAGE_STORAGE, ds.SOPInstanceUID))]))
            peer.send(p_data_tf([(1, 0x00, body[: SPILL + 1000])]))
            peer.send(pdu(A_ABORT, b"\0\0\0\0"))
            assert peer.closed_by_node(5)
        assert instances(node) == []
        assert leftovers(node) == []


def test_large_stow_rs_part_is_staged_where_it_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STOW-RS part past spill_to_disk_bytes is made durable in its staging file and renamed into the
    spool (never read into memory whole); a damaged one beside it is refused and its file removed."""
    import urllib.request

    from tests.webutil import BOUNDARY, multipart_body, part10, serve, stow_app

    large, damaged = synthetic_ct(rows=64), synthetic_ct(rows=64)
    damaged.Rows = 65
    adopted: list[int] = []
    adopt = Spool.adopt

    def counting(self: Spool, path: Path) -> Any:
        staged = adopt(self, path)
        adopted.append(staged.size)
        return staged

    monkeypatch.setattr(Spool, "adopt", counting)
    settings = make_settings(tmp_path, receive={"spill_to_disk_bytes": SPILL}, web={"auth": {"kind": "none"}})
    with running_node(settings) as node, serve(stow_app(node)) as url:
        request = urllib.request.Request(
            f"{url}/studies",
            data=multipart_body([part10(large), part10(damaged)]),
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
        )
        try:
            status = urllib.request.urlopen(request, timeout=10).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == 202  # one stored, one failed
        (row,) = instances(node)
        assert row.sop_instance_uid == large.SOPInstanceUID
        path = node.spool.absolute(row.path)
        assert path.read_bytes() == part10(large)
        assert row.sha256 == hashlib.sha256(part10(large)).hexdigest()
        (rejected,) = audit(node, "instance.rejected")
        assert rejected.details["status"] == 0xC230
        assert leftovers(node) == []
        assert sorted(adopted) == sorted([len(part10(large)), len(part10(damaged))])
