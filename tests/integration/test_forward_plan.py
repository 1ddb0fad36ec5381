"""Pure parts of the DIMSE forwarder (context planning, status texts) and the pynetdicom seam."""

from __future__ import annotations

import inspect
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, build_context, evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association

from node.deliver.base import InstanceFile, is_delivered, status_is_retryable
from node.deliver.destinations import DimseDestination
from node.deliver.dimse import describe_status, offered_syntaxes, plan_associations
from node.pynetdicom_tuning import guard_responses, quiet_logging
from tests.peers import in_process_scp

DEST = DimseDestination(name="d", ae_title="PEER", host="127.0.0.1", port=104)


def f(i: int, sop_class: str = CTImageStorage, ts: str = ImplicitVRLittleEndian) -> InstanceFile:
    return InstanceFile(i, Path(f"/x/{i}"), sop_class, f"1.2.3.{i}", ts)


def test_offer_is_stored_then_uncompressed_without_duplicates() -> None:
    assert offered_syntaxes(DEST, [JPEG2000Lossless, ImplicitVRLittleEndian]) == [
        JPEG2000Lossless, ImplicitVRLittleEndian, ExplicitVRLittleEndian
    ]


def test_offer_is_the_destination_list_when_configured() -> None:
    dest = DEST.model_copy(update={"transfer_syntaxes": [ImplicitVRLittleEndian]})
    assert offered_syntaxes(dest, [JPEG2000Lossless]) == [ImplicitVRLittleEndian]


def test_plan_one_context_per_class_and_syntax() -> None:
    files = [f(0), f(1, ts=JPEG2000Lossless), f(2, sop_class="1.2.840.10008.5.1.4.1.1.4")]
    (plan,) = plan_associations(DEST, files)
    assert plan.syntaxes == {
        CTImageStorage: [ImplicitVRLittleEndian, JPEG2000Lossless, ExplicitVRLittleEndian],
        "1.2.840.10008.5.1.4.1.1.4": [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
    }
    assert plan.context_count == 5 == len(plan.contexts())
    assert [x.instance_id for x in plan.files] == [0, 1, 2]


def test_plan_splits_at_the_context_limit() -> None:
    files = [f(i, sop_class=f"1.2.3.4.{i}") for i in range(100)]
    plans = plan_associations(DEST, files, max_contexts=128)
    assert [p.context_count for p in plans] == [128, 72]
    assert sum(len(p.files) for p in plans) == 100
    assert all(p.context_count <= 128 for p in plans)


def test_statuses() -> None:
    assert is_delivered(0) and is_delivered(0xB000) and is_delivered(0xB006) and is_delivered(0xB007)
    assert not is_delivered(0xA700) and not is_delivered(0xC000) and not is_delivered(0x0122)
    assert status_is_retryable(0xA700) and status_is_retryable(0xA7FF)
    assert not status_is_retryable(0xC000) and not status_is_retryable(0x0122)
    assert describe_status(0xA702) == "0xA702 (out of resources)"
    assert describe_status(0x0122) == "0x0122 (SOP class not supported)"


def test_reactor_still_polls_the_way_guard_responses_expects() -> None:
    """guard_responses relies on these pynetdicom internals; if they move, revisit it."""
    reactor = inspect.getsource(Association._run_reactor)
    assert "self.dimse.get_msg(block=False)" in reactor
    assert "self.dimse.get_msg(block=True)" in inspect.getsource(Association.send_c_store)


def test_quiet_logging_and_guard_responses() -> None:
    with in_process_scp() as scp:
        ae = AE("NODE")
        assoc = ae.associate("127.0.0.1", scp.port, contexts=[build_context(CTImageStorage)],
                             ae_title=scp.ae_title)
        try:
            assert assoc.is_established
            sent_handlers = [h for h, _ in assoc.get_handlers(evt.EVT_DIMSE_SENT)]
            assert standard_dimse_sent_handler in sent_handlers, "pynetdicom binds it by default"
            quiet_logging(assoc)
            assert standard_dimse_sent_handler not in [h for h, _ in assoc.get_handlers(evt.EVT_DIMSE_SENT)]
            guard_responses(assoc)
            assoc.dimse.msg_queue.put((1, "marker"))
            assert assoc.dimse.get_msg(block=False) == (None, None)
            assert assoc.dimse.get_msg(block=True) == (1, "marker")
        finally:
            assoc.release()
