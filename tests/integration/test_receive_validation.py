"""Corrupt data is refused, not acknowledged (issue 11): the exact broken data sets of the issue sent over a
real association (tests/rawpeer.py: a C-STORE-RQ and the data set bytes as they are) and one over
STOW-RS, each answered with its status and an ErrorComment naming the element, audited, nothing spooled,
the association going on; real CT series, native and compressed, still stored."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import pytest
import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, JPEG2000Lossless, JPEGLSLossless, RLELossless
from pynetdicom import AE
from sqlalchemy import select

from node.app import NodeService
from node.db.models import AuditEvent, Instance, Series
from node.pynetdicom_tuning import CONN_OPEN_HANDLERS
from tests.corrupt import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    JPEG_LOSSLESS,
    corrupt_vr,
    encode,
    last_element_claims,
    pixels_short,
)
from tests.nodeutil import make_settings, running_node, store, synthetic_ct
from tests.peers import ct_files
from tests.rawpeer import CT_IMAGE_STORAGE, VERIFICATION, RawPeer, c_store_rq, p_data_tf
from tests.webutil import STOW_CONTENT_TYPE, multipart_body, part10, serve, stow_app

# The raw peer's presentation contexts: CT on three transfer syntaxes, and Verification.
CONTEXTS = {EXPLICIT_VR_LE: 1, IMPLICIT_VR_LE: 5, JPEG_LOSSLESS: 7}
ERROR_COMMENT = 0x0902


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    settings = make_settings(tmp_path_factory.mktemp("validation"), web={"auth": {"kind": "none"}})
    with running_node(settings) as service:
        yield service


def send(node: NodeService, data_set: bytes, sop_uid: str, syntax: str = EXPLICIT_VR_LE) -> tuple[int, str]:
    """C-STORE `data_set` (bytes as they are) on the context of `syntax`; then a good instance on the same
    association, which must be stored (the node goes on). Returns the first status and ErrorComment."""
    contexts = [(cid, CT_IMAGE_STORAGE, [ts]) for ts, cid in CONTEXTS.items()]
    contexts.append((3, VERIFICATION, [IMPLICIT_VR_LE]))
    with RawPeer(node.port) as peer:
        answer = peer.associate(contexts=contexts)
        assert answer.is_accept and sorted(answer.accepted_contexts()) == [1, 3, 5, 7], answer
        context = CONTEXTS[syntax]
        peer.send(p_data_tf([(context, 0x03, c_store_rq(1, CT_IMAGE_STORAGE, sop_uid))]))
        peer.send(p_data_tf([(context, 0x02, data_set)]))
        first = peer.answer(10)
        status, comment = first.status(), first.command().get(ERROR_COMMENT, b"").decode().rstrip(" \0")
        good = synthetic_ct()
        peer.send(p_data_tf([(1, 0x03, c_store_rq(2, CT_IMAGE_STORAGE, good.SOPInstanceUID))]))
        peer.send(p_data_tf([(1, 0x02, encode(good, EXPLICIT_VR_LE))]))
        assert peer.answer(10).status() == 0x0000
    return status, comment


def rejection(node: NodeService, sop_uid: str) -> AuditEvent:
    """The one instance.rejected row of `sop_uid` (or of an undecodable data set, which has none)."""
    with node.sessions() as session:
        rows = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.event == "instance.rejected").order_by(AuditEvent.id)
            )
        )
    mine = [r for r in rows if r.sop_instance_uid == sop_uid]
    return mine[-1] if mine else rows[-1]


def stored(node: NodeService, sop_uid: str) -> bool:
    on_disk = any(node.spool.instances_dir.rglob(f"{sop_uid}*.dcm"))
    with node.sessions() as session:
        row = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_uid))
    return on_disk or row is not None


def _instance_number(ds: Dataset, text: bytes) -> bytes:
    """Explicit VR bytes of `ds` with Instance Number's value replaced by `text` (any bytes)."""
    ds.InstanceNumber = 987
    body = encode(ds, EXPLICIT_VR_LE)
    head = struct.pack("<HH", 0x0020, 0x0013) + b"IS"
    old = head + struct.pack("<H", 4) + b"987 "
    return body.replace(old, head + struct.pack("<H", len(text)) + text)


def _case(name: str) -> tuple[bytes, Dataset, str]:
    ds = synthetic_ct(rows=64)  # 8192 bytes of pixel data
    if name == "pixel data 1000 bytes short":
        return encode(pixels_short(ds, 1000), EXPLICIT_VR_LE), ds, EXPLICIT_VR_LE
    if name == "last element claims 2 GiB":
        return last_element_claims(ds), ds, EXPLICIT_VR_LE
    if name == "explicit VR bytes on implicit VR":
        return encode(ds, EXPLICIT_VR_LE), ds, IMPLICIT_VR_LE
    if name == "native pixel data on JPEG Lossless":
        return encode(ds, EXPLICIT_VR_LE), ds, JPEG_LOSSLESS
    if name == "corrupted VR byte (Modality)":
        return corrupt_vr(encode(ds, EXPLICIT_VR_LE), 0x00080060, b"XS"), ds, EXPLICIT_VR_LE
    if name == "corrupted VR byte (Instance Number)":
        return corrupt_vr(encode(ds, EXPLICIT_VR_LE), 0x00200013, b"\x00S"), ds, EXPLICIT_VR_LE
    if name == "garbage":
        return b"\xde\xad\xbe\xef" * 64 + b"\xff" * 34, ds, EXPLICIT_VR_LE
    if name == "40-character Modality":
        ds.Modality = "C" * 40
        return encode(ds, EXPLICIT_VR_LE), ds, EXPLICIT_VR_LE
    if name == "Modality with two values":
        ds.Modality = ["CT", "MR"]
        return encode(ds, EXPLICIT_VR_LE), ds, EXPLICIT_VR_LE
    if name == "Instance Number beyond 32 bits":
        return _instance_number(ds, b"99999999999 "), ds, EXPLICIT_VR_LE
    raise AssertionError(name)


CASES = [
    ("pixel data 1000 bytes short", 0xC230, "(7FE0,0010) Pixel Data 7192 bytes, expected 8192"),
    ("last element claims 2 GiB", 0xC210, "(7FE0,0010) Pixel Data claims 2147483648 bytes, 100 left"),
    ("explicit VR bytes on implicit VR", 0xC210, "(0008,0008) Image Type: VR 'CS' where Implicit VR"),
    ("native pixel data on JPEG Lossless", 0xC230, "(7FE0,0010) Pixel Data is native on encapsulated"),
    ("corrupted VR byte (Modality)", 0xC210, "(0008,0060) Modality has an unknown VR 'XS'"),
    ("corrupted VR byte (Instance Number)", 0xC210, "(0020,0013) Instance Number has an unknown VR"),
    ("garbage", 0xC210, "(ADDE,EFBE) has an unknown VR 0xDEAD"),
    ("40-character Modality", 0xC240, "(0008,0060) Modality value longer than 16 (CS): 40 bytes"),
    ("Modality with two values", 0xC240, "Modality has 2 values, one expected"),
    ("Instance Number beyond 32 bits", 0xC240, "InstanceNumber 99999999999 is outside the 32-bit range"),
]


@pytest.mark.parametrize(("name", "status", "comment"), CASES, ids=[c[0] for c in CASES])
def test_issue_11_cases_are_refused_with_a_precise_status(
    node: NodeService, name: str, status: int, comment: str
) -> None:
    data_set, ds, syntax = _case(name)
    got_status, got_comment = send(node, data_set, ds.SOPInstanceUID, syntax)
    assert (hex(got_status), got_comment[: len(comment)]) == (hex(status), comment[:64])
    row = rejection(node, ds.SOPInstanceUID)
    assert row.details is not None and row.details["status"] == status
    assert row.message.startswith(comment) and row.calling_ae == "RAWPEER"
    assert not stored(node, ds.SOPInstanceUID)


def test_sop_instance_differing_from_the_request_is_a900(node: NodeService) -> None:
    ds = synthetic_ct()
    status, comment = send(node, encode(ds, EXPLICIT_VR_LE), "1.2.3.4.5")
    assert status == 0xA900 and comment.startswith("SOPInstanceUID ")
    message = rejection(node, ds.SOPInstanceUID).message
    assert message.startswith(f"SOPInstanceUID {ds.SOPInstanceUID} differs")
    assert not stored(node, ds.SOPInstanceUID)


def test_a_stow_rs_instance_with_short_pixel_data_fails_with_c230(node: NodeService) -> None:
    good, bad = synthetic_ct(rows=64), synthetic_ct(rows=64)
    body = multipart_body([part10(good), part10(pixels_short(bad, 1000))])
    with serve(stow_app(node)) as url:
        answer = requests.post(
            f"{url}/studies", data=body, headers={"Content-Type": STOW_CONTENT_TYPE}, timeout=30
        )
    assert answer.status_code == 202, answer.text
    failed = json.loads(answer.content)["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failed] == [0xC230]
    assert [f["00081155"]["Value"][0] for f in failed] == [bad.SOPInstanceUID]
    row = rejection(node, bad.SOPInstanceUID)
    assert row.message == "(7FE0,0010) Pixel Data 7192 bytes, expected 8192" and row.peer.startswith("http:")
    assert stored(node, good.SOPInstanceUID) and not stored(node, bad.SOPInstanceUID)


# -- real CT is still stored ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qa_ge_head_tilt", "kits00072_arterial_slab"])
def test_real_ct_series_are_stored(node: NodeService, name: str) -> None:
    datasets = [dcmread(path) for path in ct_files(name)]
    assert set(store(node.port, datasets)) == {0x0000}
    with node.sessions() as session:
        series = session.scalar(select(Series).where(Series.series_uid == datasets[0].SeriesInstanceUID))
        assert series is not None and series.instance_count == len(datasets)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_real_ct_compressed_is_stored(node: NodeService, syntax: str) -> None:
    datasets = []
    for path in ct_files("qa_ge_head_tilt")[:2]:
        ds = dcmread(path)
        # New SOP Instance UIDs: other tests on this node stored the originals from another calling AE
        # (a replacement from another sender is refused, docs/receiving.md).
        ds.compress(syntax, generate_instance_uid=True)
        datasets.append(ds)
    ae = AE(ae_title="COMPRESSED")
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS)
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()
    assert statuses == [0x0000, 0x0000]
    assert all(stored(node, ds.SOPInstanceUID) for ds in datasets)


def test_a_40_character_modality_gets_the_same_answer_on_sqlite_and_postgresql(tmp_path, db_url: str) -> None:
    """Checked by VR before the database sees it: PostgreSQL's VARCHAR(16) would fail (0xA700) where
    SQLite would store it."""
    ds = synthetic_ct()
    ds.Modality = "C" * 40
    with running_node(make_settings(tmp_path, database_url=db_url)) as service:
        assert store(service.port, [ds]) == [0xC240]
        assert rejection(service, ds.SOPInstanceUID).message.startswith("(0008,0060) Modality value longer")
        assert store(service.port, [synthetic_ct()]) == [0x0000]


def test_an_unexpected_error_is_a700_with_an_audit_row_not_an_escape(
    node: NodeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: whatever raises while an instance is handled ends as a status and an audit row
    (before, such an exception reached pynetdicom: 0xC211, a traceback, no row)."""
    import node.receive.ingest as ingest_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(ingest_module, "check_instance", broken)
    ds = synthetic_ct()
    assert store(node.port, [ds]) == [0xA700]
    row = rejection(node, ds.SOPInstanceUID)
    assert row.message == "internal error: RuntimeError" and row.details["status"] == 0xA700
    assert not stored(node, ds.SOPInstanceUID)
    monkeypatch.undo()
    assert store(node.port, [synthetic_ct()]) == [0x0000]


def test_a_deflated_instance_is_inflated_checked_and_stored(node: NodeService) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    good, short = synthetic_ct(rows=64), pixels_short(synthetic_ct(rows=64), 1000)
    ae = AE(ae_title="DEFLATE")
    ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS)
    assert assoc.is_established
    try:
        statuses = []
        for ds in (good, short):
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            statuses.append(int(assoc.send_c_store(ds).Status))
    finally:
        assoc.release()
    assert statuses == [0x0000, 0xC230]
    assert stored(node, good.SOPInstanceUID) and not stored(node, short.SOPInstanceUID)


def test_refuse_undecodable_gives_the_validators_reason_and_audits(node: NodeService) -> None:
    """What a transport calls when its own decoding failed (node/receive/scp.py handle_store)."""
    from node.receive.ingest import Received
    from tests.corrupt import part10 as file_of

    ds = synthetic_ct(rows=64)
    short = file_of(encode(pixels_short(ds, 1000), EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds)
    item = Received(short, Dataset(), EXPLICIT_VR_LE, "RAWPEER", "127.0.0.1:1")
    rejected = node.ingest.refuse_undecodable(item, ValueError("pydicom's"))
    assert (rejected.status, rejected.reason) == (0xC230, "(7FE0,0010) Pixel Data 7192 bytes, expected 8192")
    assert rejection(node, "").details["status"] == 0xC230  # no valid UID to name: the last row
    valid = Received(
        file_of(encode(ds, EXPLICIT_VR_LE), EXPLICIT_VR_LE, ds), Dataset(), EXPLICIT_VR_LE, None, "p"
    )
    rejected = node.ingest.refuse_undecodable(valid, ValueError("pydicom's"))
    assert (rejected.status, rejected.reason) == (0xC210, "cannot decode data set: ValueError")
