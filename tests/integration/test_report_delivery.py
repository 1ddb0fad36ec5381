"""The Structured Report step inside a running node (tiny random-weight package, pynetdicom on loopback):
after the instances, the SR goes to the destinations whose plan asks for it; a refused SR is a failed
attempt that the retry fixes (sending only the SR again); a series that is not classifiable gets no SR
and an audit row that says why. Every SR the peer received is checked with dsrdump and dciodvfy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydicom.uid import CTImageStorage, EnhancedSRStorage, generate_uid
from sqlalchemy import select

from node.app import NodeService
from node.db.models import Instance, SentInstance
from node.report import report_uids
from tests.classifyutil import tiny_package
from tests.integration.test_classify_node import ct_with_geometry
from tests.interop.e2e import events
from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for
from tests.peers import in_process_scp
from tests.srcheck import check_sr


def rules_file(path: Path, port: int) -> Path:
    rules = {
        "version": 1,
        "destinations": {
            "archive": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": port, "structured_report": True}
        },
        "rules": [
            {"name": "all-ct", "when": {"attribute": "Modality", "equals": "CT"}, "send_to": ["archive"]}
        ],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_package(tmp_path_factory.mktemp("model") / "tiny")


def test_report_follows_the_series_and_a_refused_report_is_retried(tmp_path: Path, package: Path) -> None:
    study, volume_uid, flat_uid = generate_uid(), generate_uid(), generate_uid()
    volume = [ct_with_geometry(volume_uid, study, n) for n in range(1, 13)]
    flat = [synthetic_ct(flat_uid, study, number=1)]  # one slice: not classifiable
    refused: list[str] = []

    def status_for(uid: str) -> int:
        if uid.startswith("2.25.") and not refused:  # the first SR: out of resources, try later
            refused.append(uid)
            return 0xA700
        return 0x0000

    with in_process_scp(sop_classes=(CTImageStorage, EnhancedSRStorage), status_for=status_for) as scp:
        settings = make_settings(
            tmp_path,
            rules_path=str(rules_file(tmp_path / "rules.yaml", scp.port)),
            classify={"enabled": True, "model_dir": str(package), "device": "cpu"},
        )
        with running_node(settings) as node:
            assert store(node.port, volume + flat) == [0] * 13
            wait_for(lambda: len(events(node, "delivery.done")) == 2, timeout=60, what="two deliveries done")
            reports = events(node, "delivery.report")
            retries = events(node, "delivery.retry")
            with node.sessions() as session:
                sent_ids = list(session.scalars(select(SentInstance.instance_id)))
        received = {r.sop_instance_uid: r for r in scp.received}

    expected = report_uids(volume_uid, "tiny-test@0.0.1", 1)
    assert refused == [expected.sop_instance_uid]
    by_outcome = {(e.series_uid, e.details["outcome"]) for e in reports}
    assert by_outcome == {(volume_uid, "failed"), (volume_uid, "sent"), (flat_uid, "skipped")}
    failed = next(e for e in reports if e.details["outcome"] == "failed")
    assert "0xA700" in failed.message and expected.sop_instance_uid in failed.message
    assert failed.details["series_instance_uid"] == expected.series_instance_uid
    assert [e.series_uid for e in retries] == [volume_uid]
    skipped = next(e for e in reports if e.details["outcome"] == "skipped")
    assert skipped.message.startswith("no structured report: not classifiable")
    # The retry sent the SR alone: each CT instance arrived once, the SR twice (refused, then accepted).
    uids = [r.sop_instance_uid for r in scp.received]
    assert sorted(uids.count(ds.SOPInstanceUID) for ds in volume) == [1] * 12
    assert uids.count(expected.sop_instance_uid) == 2
    assert -1 not in sent_ids and len(sent_ids) == 13
    sr = received[expected.sop_instance_uid].dataset
    assert sr.SeriesInstanceUID == expected.series_instance_uid and sr.StudyInstanceUID == study
    path = tmp_path / "received-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    check_sr(path)


def test_a_peer_without_sr_support_dead_letters_the_delivery_and_says_why(
    tmp_path: Path, package: Path
) -> None:
    study, series_uid = generate_uid(), generate_uid()
    volume = [ct_with_geometry(series_uid, study, n) for n in range(1, 9)]
    with in_process_scp(sop_classes=(CTImageStorage,)) as scp:  # no SR storage context
        settings = make_settings(
            tmp_path,
            rules_path=str(rules_file(tmp_path / "rules.yaml", scp.port)),
            classify={"enabled": True, "model_dir": str(package), "device": "cpu"},
        )
        with running_node(settings) as node:
            assert store(node.port, volume) == [0] * 8
            wait_for(lambda: events(node, "delivery.dead_letter"), timeout=60, what="a dead letter")
            [report] = events(node, "delivery.report")
            [dead] = events(node, "delivery.dead_letter")
            assert events(node, "delivery.done") == []
    # The instances were delivered (once); the SR could not be, and both audit rows say so.
    assert sorted(scp.uids()) == sorted(str(ds.SOPInstanceUID) for ds in volume)
    assert report.details["outcome"] == "failed" and report.details["retryable"] is False
    assert "Enhanced SR" in report.message
    assert "structured report" in dead.message and "not retryable" in dead.message


def test_a_report_that_cannot_be_built_fails_the_delivery_with_the_reason(
    tmp_path: Path, package: Path
) -> None:
    """The spooled header the SR copies patient and study from disappears (retention racing the
    delivery) while the last instance is being sent: the SR step fails, not retryable, and says why."""
    study, series_uid = generate_uid(), generate_uid()
    volume = [ct_with_geometry(series_uid, study, n) for n in range(1, 9)]
    last = str(volume[-1].SOPInstanceUID)
    nodes: list[NodeService] = []

    def before_answer(uid: str) -> None:
        if uid == last:  # the instances are all spooled and being delivered: remove the first one's file
            with nodes[0].sessions() as session:
                first = session.scalars(select(Instance).order_by(Instance.instance_number)).first()
                assert first is not None
                nodes[0].spool.absolute(first.path).unlink()

    with in_process_scp(sop_classes=(CTImageStorage, EnhancedSRStorage), before_answer=before_answer) as scp:
        settings = make_settings(
            tmp_path,
            rules_path=str(rules_file(tmp_path / "rules.yaml", scp.port)),
            classify={"enabled": True, "model_dir": str(package), "device": "cpu"},
        )
        with running_node(settings) as node:
            nodes.append(node)
            assert store(node.port, volume) == [0] * 8
            wait_for(lambda: events(node, "delivery.dead_letter"), timeout=60, what="a dead letter")
            [report] = events(node, "delivery.report")
            [dead] = events(node, "delivery.dead_letter")
    assert sorted(scp.uids()) == sorted(str(ds.SOPInstanceUID) for ds in volume)  # no SR arrived
    assert report.details["outcome"] == "failed" and report.details["retryable"] is False
    assert "could not be built" in report.message and "No such file" in report.message
    assert "could not be built" in dead.message


def test_report_of_a_partial_delivery_leaves_the_quarantined_instance_out(
    tmp_path: Path, package: Path
) -> None:
    """The first instance is refused (0xC000) and its spooled file is damaged: the SR takes its header
    from the next one and references only what the destination has; the delivery ends partial."""
    study, series_uid = generate_uid(), generate_uid()
    volume = [ct_with_geometry(series_uid, study, n) for n in range(1, 9)]
    refused = str(volume[0].SOPInstanceUID)
    nodes: list[NodeService] = []

    def before_answer(uid: str) -> None:
        if uid == refused:  # sent as stored already; damage it on disk before the SR is built
            with nodes[0].sessions() as session:
                row = session.scalars(select(Instance).where(Instance.sop_instance_uid == refused)).one()
                path = nodes[0].spool.absolute(row.path)
            path.write_bytes(b"\xff" * 200 + path.read_bytes()[200:])

    with in_process_scp(
        sop_classes=(CTImageStorage, EnhancedSRStorage),
        status_for=lambda uid: 0xC000 if uid == refused else 0x0000,
        before_answer=before_answer,
    ) as scp:
        settings = make_settings(
            tmp_path,
            rules_path=str(rules_file(tmp_path / "rules.yaml", scp.port)),
            classify={"enabled": True, "model_dir": str(package), "device": "cpu"},
        )
        with running_node(settings) as node:
            nodes.append(node)
            assert store(node.port, volume) == [0] * 8
            wait_for(lambda: events(node, "delivery.done"), timeout=60, what="the delivery to end")
            [report] = events(node, "delivery.report")
            [done] = events(node, "delivery.done")
    expected = report_uids(series_uid, "tiny-test@0.0.1", 1)
    assert report.details["outcome"] == "sent" and report.details["references"] == 7
    assert done.details["partial"] is True and done.details["quarantined_total"] == 1
    sr = next(r.dataset for r in scp.received if r.sop_instance_uid == expected.sop_instance_uid)
    referenced = {str(e.value) for e in sr.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
    assert referenced == {str(ds.SOPInstanceUID) for ds in volume[1:]}
    path = tmp_path / "received-sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    check_sr(path)
