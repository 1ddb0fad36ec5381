"""DimseSender against an in-process pynetdicom SCP on a free loopback port."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import StoragePresentationContexts
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from node.config import ForwardSettings
from node.deliver.base import InstanceFile
from node.deliver.destinations import DimseDestination
from node.deliver.dimse import DimseSender
from node.deliver.wire import dataset_offset
from node.pynetdicom_tuning import install
from tests.peers import free_port, in_process_scp, make_series

FAST = ForwardSettings(dimse_timeout=1.0, acse_timeout=2.0, network_timeout=5.0, stall_retries=2)


@pytest.fixture(autouse=True)
def tuned_pynetdicom() -> None:
    """DimseSender relies on node.pynetdicom_tuning.install() (NodeService.start calls it)."""
    install()


@pytest.fixture(params=[True, False], ids=["fast-path", "send_c_store"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    """Every test runs with the C-STORE fast path (node.deliver.wire) and with pynetdicom's send_c_store."""
    return bool(request.param)


@pytest.fixture
def sender(fast_path: bool) -> DimseSender:
    return DimseSender(FAST, "NODE", fast_path=fast_path)


def destination(port: int, ae_title: str = "TESTSCP", **kw: object) -> DimseDestination:
    return DimseDestination(name="pacs", ae_title=ae_title, host="127.0.0.1", port=port, **kw)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, f: InstanceFile, status: int) -> None:
        self.calls.append((f.instance_id, status))

    @property
    def ids(self) -> list[int]:
        return [i for i, _ in self.calls]


def pixel_bytes(path: Path) -> bytes:
    return bytes(dcmread(path).PixelData)


def test_all_delivered_as_stored(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 5)
    rec = Recorder()
    with in_process_scp() as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert outcome.ok, outcome.error
    assert outcome.sent == [f.instance_id for f in files] == rec.ids
    assert outcome.statuses == {f.instance_id: 0 for f in files}
    assert outcome.failed == {}
    assert outcome.associations == 1
    assert scp.uids() == [f.sop_instance_uid for f in files]
    for f, got in zip(files, scp.received, strict=True):
        assert got.transfer_syntax == ExplicitVRLittleEndian
        assert bytes(got.dataset.PixelData) == pixel_bytes(f.path)
    assert outcome.duration_seconds > 0


def test_empty_batch_opens_no_association(tmp_path: Path, sender: DimseSender) -> None:
    outcome = sender.send(destination(free_port()), [], Recorder())
    assert outcome.ok and outcome.associations == 0 and outcome.sent == []


def test_warning_counts_as_delivered(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 3)
    rec = Recorder()
    with in_process_scp(status_for=lambda uid: 0xB000) as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert outcome.ok, outcome.error
    assert rec.calls == [(f.instance_id, 0xB000) for f in files]


def test_partial_failure_records_status_and_sends_the_rest(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 5)
    bad = files[2]
    rec = Recorder()
    with in_process_scp(status_for=lambda uid: 0xA700 if uid == bad.sop_instance_uid else 0) as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert not outcome.ok
    assert rec.ids == [f.instance_id for f in files if f is not bad] == outcome.sent
    assert outcome.statuses[bad.instance_id] == 0xA700
    assert list(outcome.failed) == [bad.instance_id]
    assert "0xA700" in outcome.failed[bad.instance_id]
    assert outcome.retryable, "out of resources may pass on a later attempt"
    assert outcome.error is not None
    for part in ("'pacs'", "TESTSCP", f"127.0.0.1:{scp.port}", "1 of 5", bad.sop_instance_uid, "0xA700"):
        assert part in outcome.error


def test_cannot_understand_quarantines_every_refused_instance(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 2)
    with in_process_scp(status_for=lambda uid: 0xC000) as scp:
        outcome = sender.send(destination(scp.port), files, Recorder())
    assert outcome.sent == [] and outcome.failed == {} and outcome.ok
    assert outcome.statuses == {f.instance_id: 0xC000 for f in files}
    assert outcome.quarantined == {f.instance_id: "status 0xC000 (cannot understand)" for f in files}


@pytest.mark.parametrize("status", [0xC000, 0xC211, 0xA900, 0x0117])
def test_refusal_of_one_instance_quarantines_it_and_sends_the_rest(
    tmp_path: Path, sender: DimseSender, status: int
) -> None:
    files = make_series(tmp_path / "s", 5)
    bad = files[1]
    rec = Recorder()
    with in_process_scp(status_for=lambda uid: status if uid == bad.sop_instance_uid else 0) as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert outcome.ok, outcome.error
    assert rec.ids == outcome.sent == [f.instance_id for f in files if f is not bad]
    assert list(outcome.quarantined) == [bad.instance_id] and outcome.failed == {}
    assert f"0x{status:04X}" in outcome.quarantined[bad.instance_id]
    assert outcome.statuses[bad.instance_id] == status
    assert outcome.associations == 1


def test_refusal_of_every_instance_alike_still_fails_the_attempt(tmp_path: Path, sender: DimseSender) -> None:
    """0x0124 (not authorised) is about the destination's view of us, not the instance: no quarantine."""
    files = make_series(tmp_path / "s", 2)
    with in_process_scp(status_for=lambda uid: 0x0124) as scp:
        outcome = sender.send(destination(scp.port), files, Recorder())
    assert outcome.quarantined == {} and set(outcome.failed) == {f.instance_id for f in files}
    assert not outcome.ok and not outcome.retryable


def _corrupt(path: Path, how: str) -> None:
    """Damage a spooled file on disk, after it was received."""
    data = path.read_bytes()
    offset = dataset_offset(path)
    assert offset is not None
    if how == "head":  # preamble, DICM and File Meta overwritten
        path.write_bytes(b"\xff" * 200 + data[200:])
    elif how == "truncated":  # nothing left after the File Meta
        path.write_bytes(data[:offset])
    else:  # the first data set elements overwritten: only the peer can tell
        path.write_bytes(data[:offset] + b"\xff" * 64 + data[offset + 64 :])


@pytest.mark.parametrize("how", ["head", "truncated", "body"])
def test_corrupted_spool_file_is_quarantined_and_the_rest_sent(
    tmp_path: Path, sender: DimseSender, how: str
) -> None:
    files = make_series(tmp_path / "s", 4)
    bad = files[2]
    _corrupt(bad.path, how)
    rec = Recorder()
    with in_process_scp() as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert outcome.ok, outcome.error
    assert rec.ids == [f.instance_id for f in files if f is not bad]
    assert list(outcome.quarantined) == [bad.instance_id]
    reason = outcome.quarantined[bad.instance_id]
    if how == "body":
        # Sent as stored (the node does not parse what it forwards); the peer cannot decode it.
        assert outcome.statuses[bad.instance_id] >= 0xC000 and "cannot understand" in reason
    else:
        # Caught by the node before anything of it went out: the peer never saw it.
        assert str(bad.path) in reason and bad.instance_id not in outcome.statuses
        assert bad.sop_instance_uid not in scp.uids()
    assert outcome.associations == 1


def test_association_rejected(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 2)
    rec = Recorder()
    with in_process_scp(require_calling_aet=["SOMEONE"]) as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert not outcome.ok and rec.calls == [] and scp.received == []
    assert outcome.error is not None
    assert "association rejected" in outcome.error
    assert "Rejected Permanent" in outcome.error
    assert "Calling AE title not recognised" in outcome.error
    assert "calling AE NODE" in outcome.error
    assert f"TESTSCP@127.0.0.1:{scp.port}" in outcome.error
    assert not outcome.retryable
    assert outcome.associations == 1


def test_calling_ae_title_of_destination_is_used(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 1)
    with in_process_scp(require_calling_aet=["ROUTER"]) as scp:
        outcome = sender.send(
            destination(scp.port, calling_ae_title="ROUTER"), files, Recorder()
        )
    assert outcome.ok, outcome.error


def test_connection_refused(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 2)
    port = free_port()
    rec = Recorder()
    outcome = sender.send(destination(port), files, rec)
    assert not outcome.ok and rec.calls == [] and outcome.sent == []
    assert outcome.error is not None
    assert "cannot connect" in outcome.error and "refused" in outcome.error.lower()
    assert f"'pacs' (TESTSCP@127.0.0.1:{port})" in outcome.error
    assert outcome.retryable


def test_sop_class_refused_by_peer(tmp_path: Path, sender: DimseSender) -> None:
    """The peer supports CT only: the MR instance fails without a status, the CT one is delivered."""
    files = make_series(tmp_path / "s", 2, sop_classes=[CTImageStorage, MRImageStorage])
    rec = Recorder()
    with in_process_scp() as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert rec.ids == [files[0].instance_id]
    assert list(outcome.failed) == [files[1].instance_id]
    assert "no presentation context" in outcome.failed[files[1].instance_id]
    assert files[1].instance_id not in outcome.statuses
    assert not outcome.retryable


def test_stored_explicit_sent_implicit_when_only_implicit_accepted(
    tmp_path: Path, sender: DimseSender
) -> None:
    files = make_series(tmp_path / "s", 3)
    with in_process_scp(transfer_syntaxes=[ImplicitVRLittleEndian]) as scp:
        outcome = sender.send(destination(scp.port), files, Recorder())
    assert outcome.ok, outcome.error
    for f, got in zip(files, scp.received, strict=True):
        assert got.transfer_syntax == ImplicitVRLittleEndian
        assert bytes(got.dataset.PixelData) == pixel_bytes(f.path)


def test_compressed_sent_as_stored_when_accepted(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 3, transfer_syntax=RLELossless)
    with in_process_scp(transfer_syntaxes=[RLELossless, ExplicitVRLittleEndian]) as scp:
        outcome = sender.send(destination(scp.port), files, Recorder())
    assert outcome.ok, outcome.error
    for f, got in zip(files, scp.received, strict=True):
        assert got.transfer_syntax == RLELossless
        assert bytes(got.dataset.PixelData) == pixel_bytes(f.path)


@pytest.mark.parametrize("accepted", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_compressed_decompressed_when_only_uncompressed_accepted(
    tmp_path: Path, accepted: str, sender: DimseSender
) -> None:
    files = make_series(tmp_path / "s", 3, transfer_syntax=RLELossless)
    with in_process_scp(transfer_syntaxes=[accepted]) as scp:
        outcome = sender.send(destination(scp.port), files, Recorder())
    assert outcome.ok, outcome.error
    for f, got in zip(files, scp.received, strict=True):
        assert got.transfer_syntax == accepted
        assert got.sop_instance_uid == f.sop_instance_uid, "decompressing keeps the SOP Instance UID"
        np.testing.assert_array_equal(got.dataset.pixel_array, dcmread(f.path).pixel_array)


def test_destination_transfer_syntaxes_restrict_the_offer(tmp_path: Path, sender: DimseSender) -> None:
    """Stored RLE, the peer would take RLE, but the destination is configured for Explicit only."""
    files = make_series(tmp_path / "s", 2, transfer_syntax=RLELossless)
    with in_process_scp(transfer_syntaxes=[RLELossless, ExplicitVRLittleEndian]) as scp:
        dest = destination(scp.port, transfer_syntaxes=[ExplicitVRLittleEndian])
        outcome = sender.send(dest, files, Recorder())
    assert outcome.ok, outcome.error
    assert [r.transfer_syntax for r in scp.received] == [ExplicitVRLittleEndian] * 2


def test_no_usable_syntax_fails_instance_not_retryable(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 1, transfer_syntax=ExplicitVRLittleEndian)
    with in_process_scp(transfer_syntaxes=[RLELossless]) as scp:
        dest = destination(scp.port, transfer_syntaxes=[RLELossless])
        outcome = sender.send(dest, files, Recorder())
    assert not outcome.ok and not outcome.retryable
    assert "peer accepted only RLE Lossless" in outcome.failed[files[0].instance_id]


def test_many_sop_classes_are_split_over_associations(tmp_path: Path, sender: DimseSender) -> None:
    """70 SOP classes x 2 syntaxes (stored Explicit, Implicit) = 140 contexts > 128: two associations."""
    storage = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    sop_classes = [uid for uid in storage if uid_to_service_class(uid) is StorageServiceClass][:70]
    assert len(sop_classes) == 70
    files = make_series(tmp_path / "s", 70, sop_classes=sop_classes)
    rec = Recorder()
    with in_process_scp(sop_classes=sop_classes) as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert outcome.ok, outcome.error
    assert outcome.associations == 2 == scp.associations
    assert sorted(rec.ids) == sorted(f.instance_id for f in files)


def test_unreadable_file_quarantines_that_instance_only(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 3)
    files[1].path.unlink()
    rec = Recorder()
    with in_process_scp() as scp:
        outcome = sender.send(destination(scp.port), files, rec)
    assert rec.ids == [files[0].instance_id, files[2].instance_id]
    assert list(outcome.quarantined) == [files[1].instance_id] and outcome.failed == {}
    assert str(files[1].path) in outcome.quarantined[files[1].instance_id]
    assert outcome.ok, outcome.error


def test_on_sent_error_propagates(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 2)

    def boom(f: InstanceFile, status: int) -> None:
        raise RuntimeError("database is gone")

    with in_process_scp() as scp, pytest.raises(RuntimeError, match="database is gone"):
        sender.send(destination(scp.port), files, boom)


class Staller:
    """Holds the C-STORE of one instance unanswered (`times` times) until released."""

    def __init__(self, uid: str, times: int) -> None:
        self.uid = uid
        self.left = times
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, uid: str) -> None:
        with self.lock:
            stall = uid == self.uid and self.left > 0
            if stall:
                self.left -= 1
        if stall:
            self.release.wait(timeout=30)


def test_stall_reconnects_and_finishes(tmp_path: Path, sender: DimseSender) -> None:
    files = make_series(tmp_path / "s", 6)
    staller = Staller(files[3].sop_instance_uid, times=1)
    rec = Recorder()
    try:
        with in_process_scp(before_answer=staller) as scp:
            started = time.monotonic()
            outcome = sender.send(destination(scp.port), files, rec)
            elapsed = time.monotonic() - started
    finally:
        staller.release.set()
    assert outcome.ok, outcome.error
    assert outcome.associations == 2
    assert sorted(rec.ids) == sorted(f.instance_id for f in files)
    assert elapsed < 3 * FAST.dimse_timeout + 2


def test_stall_beyond_retries_fails_retryable(tmp_path: Path, fast_path: bool) -> None:
    settings = FAST.model_copy(update={"stall_retries": 1})
    files = make_series(tmp_path / "s", 4)
    staller = Staller(files[1].sop_instance_uid, times=10)
    rec = Recorder()
    try:
        with in_process_scp(before_answer=staller) as scp:
            outcome = DimseSender(settings, "NODE", fast_path=fast_path).send(
                destination(scp.port), files, rec
            )
    finally:
        staller.release.set()
    assert not outcome.ok and outcome.retryable
    assert rec.ids == [files[0].instance_id]
    assert outcome.associations == 2
    assert outcome.error is not None
    assert "no C-STORE response within dimse_timeout 1 s" in outcome.error
    assert files[1].sop_instance_uid in outcome.error
    assert "1 of 4 instances sent" in outcome.error


@pytest.mark.parametrize("max_pdu", [4096, 16384, 0])
def test_fragmentation_at_the_peer_maximum_pdu(tmp_path: Path, sender: DimseSender, max_pdu: int) -> None:
    """64x64 images (8 KiB of pixels) cross several PDUs at 4 KiB; none at an unlimited maximum."""
    files = make_series(tmp_path / "s", 3, size=64)
    with in_process_scp(maximum_pdu_size=max_pdu) as scp:
        outcome = sender.send(destination(scp.port), files, Recorder())
    assert outcome.ok, outcome.error
    for f, got in zip(files, scp.received, strict=True):
        assert bytes(got.dataset.PixelData) == pixel_bytes(f.path)
        assert got.dataset.SOPInstanceUID == f.sop_instance_uid


def test_file_meta_without_group_length_goes_through_pynetdicom(tmp_path: Path, sender: DimseSender) -> None:
    """A Part 10 file whose File Meta lacks (0002,0000) cannot be skipped by length: sent the slow way."""
    files = make_series(tmp_path / "s", 2)
    raw = files[0].path.read_bytes()
    assert raw[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    files[0].path.write_bytes(raw[:132] + raw[144:])  # drop the group length element
    with in_process_scp() as scp:
        outcome = sender.send(destination(scp.port), files, Recorder())
    assert outcome.ok, outcome.error
    assert bytes(scp.received[0].dataset.PixelData) == pixel_bytes(files[0].path)
