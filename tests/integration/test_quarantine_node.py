"""One bad instance never blocks its series: a running node delivering a series in which the destination
refuses one instance for what it is (0xC000) and one spooled file is damaged on disk after it was
received. The others arrive, the two are quarantined (audit rows, `deliveries list`), a retry for
another instance's out-of-resources answer does not send them again, and the delivery ends done and
partial, not dead-lettered.

Over DIMSE both ways of sending (node.deliver.wire's fast path and pynetdicom's send_c_store), and over
STOW-RS (tests/stowpeer.py answering a FailedSOPSequence item).
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.app import NodeService
from node.audit.query import render_series_story, series_story
from node.db.models import Instance, JobState, QuarantinedInstance
from node.deliver.wire import WireStore
from node.deliveries import list_deliveries, render_deliveries
from node.writeback import private
from tests.interop.e2e import events, jobs_in, write_rules
from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for
from tests.peers import in_process_scp
from tests.stowpeer import StowAnswer, StowRequest, stow_peer
from tests.writebackutil import CannedAnalyser, sample_results

FORWARD = {"max_attempts": 5, "backoff_initial_seconds": 0.1, "backoff_max_seconds": 0.2}


def corrupt_spooled(node: NodeService, sop_instance_uid: str) -> Path:
    """Overwrite the head (preamble, DICM, File Meta) of an instance's spooled file, as a disk would."""
    with node.sessions() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).one()
        path = node.spool.absolute(row.path)
    with open(path, "r+b") as f:
        f.write(b"\xff" * 200)
    return path


def check_partial(node: NodeService, refused: str, corrupted: str, path: Path, sent: int) -> None:
    """What an operator sees: the job done and partial, two instance.quarantined rows, the listing."""
    [job] = jobs_in(node, "deliver")
    assert job.state == JobState.DONE and job.attempts == 2
    assert events(node, "delivery.dead_letter") == []
    rows = {e.sop_instance_uid: e for e in events(node, "instance.quarantined")}
    assert sorted(rows) == sorted([refused, corrupted])
    for row in rows.values():
        assert row.job_id == job.id and row.destination == job.destination
        assert row.details is not None and row.details["attempt"] == 1
    assert rows[refused].details["status"] == "0xC000" and rows[refused].details["by"] == "destination"
    assert "0xC000 (cannot understand)" in rows[refused].message
    assert rows[corrupted].details["status"] is None and rows[corrupted].details["by"] == "node"
    assert str(path) in rows[corrupted].message and "not a DICOM Part 10 file" in rows[corrupted].message
    [done] = events(node, "delivery.done")
    assert done.details is not None
    assert done.details["partial"] is True and done.details["quarantined_total"] == 2
    assert done.details["sent_total"] == sent
    assert "delivered partially" in done.message
    first, second = events(node, "delivery.attempt")
    assert first.details is not None and second.details is not None
    assert first.details["quarantined"] == 2 and second.details["quarantined"] == 0
    with node.sessions() as session:
        query = select(QuarantinedInstance).where(QuarantinedInstance.job_id == job.id)
        stored = session.scalars(query).all()
        [listed] = list_deliveries(session)
        story = series_story(session, rows[refused].series_uid or "")
    assert {q.status for q in stored} == {0xC000, None}
    assert listed["partial"] is True and listed["quarantined_instances"] == 2
    assert listed["sent_instances"] == sent and listed["state"] == "done"
    assert "done (partial)" in render_deliveries([listed])
    [told] = [j for j in story["jobs"] if j["kind"] == "deliver"]
    assert told["partial"] is True and "done (2 quarantined)" in render_series_story(story, all_events=True)
    metrics = node.metrics.exposition().decode()
    assert f'dicom_node_deliveries_total{{destination="{job.destination}",outcome="partial"}} 1.0' in metrics
    assert f'dicom_node_instances_quarantined_total{{destination="{job.destination}"}} 2.0' in metrics


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "send_c_store"])
def test_dimse_delivery_quarantines_the_refused_and_the_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    if not fast_path:
        monkeypatch.setattr(WireStore, "usable", staticmethod(lambda: False))
    series = generate_uid()
    datasets = [synthetic_ct(series_uid=series, number=i + 1) for i in range(6)]
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    busy, refused, corrupted = uids[1], uids[3], uids[4]
    answered: Counter[str] = Counter()
    lock = threading.Lock()
    holder: list[NodeService] = []
    damaged: list[Path] = []

    def status_for(uid: str) -> int:
        with lock:
            answered[uid] += 1
            first = answered[uid] == 1
        if uid == refused:
            return 0xC000
        return 0xA700 if uid == busy and first else 0x0000

    def before_answer(uid: str) -> None:
        # Delivery goes in instance number order: while the peer holds the first, damage the fifth.
        if uid == uids[0] and not damaged:
            damaged.append(corrupt_spooled(holder[0], corrupted))

    with in_process_scp(status_for=status_for, before_answer=before_answer) as scp:
        rules = write_rules(tmp_path / "rules.yaml", {"pacs": {"ae_title": "TESTSCP", "host": "127.0.0.1",
                                                              "port": scp.port}})
        settings = make_settings(tmp_path, rules_path=str(rules), forward=FORWARD)
        with running_node(settings) as node:
            holder.append(node)
            assert store(node.port, datasets) == [0] * 6
            wait_for(lambda: events(node, "delivery.done"), timeout=60, what="the delivery to end")
            check_partial(node, refused, corrupted, damaged[0], sent=4)
        received = scp.uids()

    # The good ones arrived (busy twice: refused with 0xA700, then sent again); the refused one was
    # sent once and not again on the retry; the damaged one never left the node.
    assert Counter(received) == {uids[0]: 1, busy: 2, uids[2]: 1, refused: 1, uids[5]: 1}


def test_stow_delivery_quarantines_the_refused_and_the_unreadable(tmp_path: Path) -> None:
    series = generate_uid()
    datasets = [synthetic_ct(series_uid=series, number=i + 1) for i in range(6)]
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    busy, refused, corrupted = uids[1], uids[3], uids[5]
    seen: set[str] = set()
    holder: list[NodeService] = []
    damaged: list[Path] = []

    def answer(request: StowRequest) -> StowAnswer:
        if request.number == 1:  # the first request of two; the third one would carry the damaged file
            damaged.append(corrupt_spooled(holder[0], corrupted))
        failed = {uid: 0xA700 for uid in request.sop_instance_uids if uid == busy and uid not in seen}
        if refused in request.sop_instance_uids:
            failed[refused] = 0xC000
        seen.update(request.sop_instance_uids)
        return StowAnswer.store_response(request, failed=failed)

    with stow_peer(answer) as peer:
        rules = write_rules(tmp_path / "rules.yaml", {"web": {"kind": "dicomweb", "url": peer.url,
                                                             "batch_size": 2}})
        settings = make_settings(tmp_path, rules_path=str(rules), forward=FORWARD)
        with running_node(settings) as node:
            holder.append(node)
            assert store(node.port, datasets) == [0] * 6
            wait_for(lambda: events(node, "delivery.done"), timeout=60, what="the delivery to end")
            check_partial(node, refused, corrupted, damaged[0], sent=4)

    # Requests of two; the damaged file was left out of the third before it was built; the retry
    # carried only the instance that was out of resources, not the refused one.
    assert [r.sop_instance_uids for r in peer.requests] == [uids[0:2], uids[2:4], [uids[4]], [busy]]


def test_writeback_copy_of_an_unreadable_file_is_quarantined(tmp_path: Path) -> None:
    """With write-back the node makes a copy of each file before sending: a spooled file that cannot be
    read any more at the retry is quarantined there, not retried until the dead letter."""
    private.register()
    series = generate_uid()
    datasets = [synthetic_ct(series, number=n) for n in range(1, 5)]
    busy = str(datasets[2].SOPInstanceUID)
    holder: list[NodeService] = []
    damaged: list[Path] = []

    def status_for(uid: str) -> int:
        if uid == busy and not damaged:
            # Out of resources for it the first time; meanwhile its spooled file is damaged on disk.
            damaged.append(corrupt_spooled(holder[0], busy))
            return 0xA700
        return 0x0000

    with in_process_scp(status_for=status_for) as scp:
        rules = write_rules(tmp_path / "rules.yaml", {"pacs": {"ae_title": "TESTSCP", "host": "127.0.0.1",
                                                              "port": scp.port,
                                                              "writeback": {"mode": "attributes"}}})
        settings = make_settings(tmp_path, rules_path=str(rules), forward=FORWARD)
        with running_node(settings, analyser=CannedAnalyser(sample_results())) as node:
            holder.append(node)
            assert store(node.port, datasets) == [0] * 4
            wait_for(lambda: events(node, "delivery.done"), timeout=60, what="the delivery to end")
            [row] = events(node, "instance.quarantined")
            [done] = events(node, "delivery.done")
            [job] = jobs_in(node, "deliver")
        received = scp.uids()

    assert job.state == JobState.DONE and job.attempts == 2
    assert row.sop_instance_uid == busy and row.details is not None and row.details["by"] == "node"
    assert row.details["attempt"] == 2 and "write-back copy" in row.message
    assert done.details is not None and done.details["partial"] is True and done.details["sent_total"] == 3
    assert sorted(received) == sorted(str(ds.SOPInstanceUID) for ds in datasets)  # busy once: refused
    assert received.count(busy) == 1
