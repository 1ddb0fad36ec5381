"""A running node delivering over STOW-RS to a scripted peer that fails some instances: per-instance
outcomes in the audit rows, only the failed instances re-sent, a dead letter once only permanent
refusals of the destination's kind are left (0x0122: a refusal of the instance itself quarantines it
instead: tests/integration/test_quarantine_node.py)."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.models import JobState, SentInstance
from tests.interop.e2e import events, jobs_in, write_rules
from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for
from tests.stowpeer import StowAnswer, StowRequest, stow_peer


def test_partial_failure_retries_only_the_failed_then_dead_letters_the_refused(tmp_path: Path) -> None:
    series = generate_uid()
    datasets = [synthetic_ct(series_uid=series, number=i + 1) for i in range(6)]
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    busy, refused = set(uids[1:3]), uids[4]
    seen: set[str] = set()

    def answer(request: StowRequest) -> StowAnswer:
        # 0xA700 the first time a "busy" instance comes, 0x0122 for the refused one, always.
        failed = {uid: 0xA700 for uid in request.sop_instance_uids if uid in busy and uid not in seen}
        failed[refused] = 0x0122
        seen.update(request.sop_instance_uids)
        return StowAnswer.store_response(request, failed=failed)

    with stow_peer(answer) as peer:
        rules = write_rules(tmp_path / "rules.yaml", {"web": {"kind": "dicomweb", "url": peer.url}})
        settings = make_settings(
            tmp_path,
            rules_path=str(rules),
            forward={"max_attempts": 5, "backoff_initial_seconds": 0.1, "backoff_max_seconds": 0.2},
        )
        with running_node(settings) as node:
            assert store(node.port, datasets) == [0] * 6
            wait_for(lambda: events(node, "delivery.dead_letter"), timeout=60, what="the dead letter")
            attempts = events(node, "delivery.attempt")
            [dead] = events(node, "delivery.dead_letter")
            [job] = jobs_in(node, "deliver")
            with node.sessions() as session:
                query = select(SentInstance.instance_id).where(SentInstance.job_id == job.id)
                sent = set(session.scalars(query))

    # What the peer received: all six, then only the three that failed (not the acknowledged ones).
    assert [sorted(r.sop_instance_uids) for r in peer.requests] == [
        sorted(uids),
        sorted([*busy, refused]),
    ]
    assert len(sent) == 5
    assert job.state == JobState.FAILED and job.attempts == 2
    first, second = attempts
    assert first.details["sent"] == 3 and first.details["failed"] == 3
    assert first.details["statuses"] == ["0x0000", "0x0122", "0xA700"]
    assert sorted(first.details["failures"]) == sorted([*busy, refused])  # keyed by SOP Instance UID
    reasons = sorted(first.details["failures"].values())
    assert reasons == [
        "HTTP 202 Accepted, FailureReason 0x0122 (SOP class not supported)",
        "HTTP 202 Accepted, FailureReason 0xA700 (out of resources)",
        "HTTP 202 Accepted, FailureReason 0xA700 (out of resources)",
    ]
    assert second.details["sent"] == 2 and second.details["failed"] == 1
    assert "dead letter (not retryable)" in dead.message
    assert f"SOP Instance {refused}: HTTP 202 Accepted, FailureReason 0x0122 (SOP class not supported)" in (
        dead.message
    )
