"""The node's HTTP side on a running node: /health/live, /health/ready (200 and 503 naming the failing
check), /metrics counters moving during a real transfer and a real forward, the web port's errors, and
a clean stop with the web side on. Every request is made with curl."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.analysis import AnalysisResult
from node.app import NodeService
from node.errors import ListenError
from tests.interop.e2e import all_delivered, write_rules
from tests.nodeutil import make_settings, running_node, scu, store, synthetic_ct, wait_for
from tests.peers import in_process_scp
from tests.webutil import curl, get_json, scrape, value

SYNTAX = str(ExplicitVRLittleEndian)


def base_url(node: NodeService) -> str:
    assert node.web_port is not None
    return f"http://127.0.0.1:{node.web_port}"


def test_metrics_move_during_a_transfer_and_a_forward(tmp_path: Path) -> None:
    with in_process_scp() as sink:
        rules = write_rules(
            tmp_path / "rules.yaml", {"sink": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": sink.port}}
        )
        settings = make_settings(
            tmp_path,
            rules_path=str(rules),
            web={"enabled": True},
            receive={"max_instance_bytes": 4000},
            health={"interval_seconds": 0.2},
        )
        with running_node(settings) as node:
            url = base_url(node)
            wait_for(lambda: curl(url + "/health/live")[0] == 200, what="/health/live 200")
            status, ready = get_json(url + "/health/ready")
            assert status == 200 and ready["ready"] and ready["not_ready"] == [], ready
            assert set(ready["checks"]) == {"database", "spool", "model", "dicom", "workers"}

            before = scrape(url)
            series_uid = generate_uid()
            # Three small instances are stored; one of 64x64 pixels (8 KiB) is over max_instance_bytes.
            statuses = store(
                node.port,
                [synthetic_ct(series_uid, number=n) for n in (1, 2, 3)]
                + [synthetic_ct(series_uid, number=4, rows=64)],
            )
            assert statuses == [0, 0, 0, 0xA700]
            wait_for(lambda: all_delivered(node, 1), what="the series delivered to the sink")
            assert len(sink.received) == 3
            after = scrape(url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    received = {"source": "dimse", "calling_ae": "TESTSCU", "transfer_syntax": SYNTAX}
    assert moved("dicom_node_instances_received_total", **received) == 3
    assert moved("dicom_node_received_bytes_total", source="dimse", calling_ae="TESTSCU") > 3 * 16 * 16 * 2
    assert moved("dicom_node_instance_outcomes_total", outcome="stored") == 3
    assert moved("dicom_node_instances_refused_total", source="dimse", status="0xA700") == 1
    assert moved("dicom_node_series_completed_total", trigger="quiet_time") == 1
    assert moved("dicom_node_deliveries_total", destination="sink", outcome="done") == 1
    assert moved("dicom_node_instances_sent_total", destination="sink") == 3
    assert moved("dicom_node_delivery_seconds_count", destination="sink") == 1
    # Classification is disabled in this node: no analysis is timed or counted.
    assert moved("dicom_node_classification_seconds_count") == 0
    # The queue gauges are read from the database at scrape time: nothing is left queued.
    assert value(after, "dicom_node_jobs", kind="deliver", state="queued") == 0
    assert value(after, "dicom_node_jobs", kind="deliver", state="failed") == 0
    assert value(after, "dicom_node_database_up") == 1


def test_open_associations_and_rejections_are_counted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, web={"enabled": True})
    with running_node(settings) as node:
        url = base_url(node)
        assert value(scrape(url), "dicom_node_associations_open") == 0
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE")
        assert assoc.is_established
        try:
            assert value(scrape(url), "dicom_node_associations_open") == 1
        finally:
            assoc.release()
        wait_for(lambda: value(scrape(url), "dicom_node_associations_open") == 0, what="association closed")
        wrong = scu().associate("127.0.0.1", node.port, ae_title="NOT_THE_NODE")
        assert wrong.is_rejected
        assert value(scrape(url), "dicom_node_associations_rejected_total", reason="called_ae") == 1


def test_ready_is_503_naming_the_spool_while_it_cannot_take_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, web={"enabled": True}, health={"interval_seconds": 0.2})
    with running_node(settings) as node:
        url = base_url(node)
        wait_for(lambda: curl(url + "/health/ready")[0] == 200, what="ready")
        staging = node.spool.tmp_dir
        shutil.rmtree(staging)
        staging.write_text("not a directory")  # as a broken mount would: no file can be created there
        try:
            status, body = get_json(url + "/health/ready")
            assert status == 503 and body["ready"] is False
            assert body["not_ready"] == ["spool"]
            assert "spool not writable" in body["checks"]["spool"]["detail"]
            assert body["checks"]["database"]["ok"] is True
            assert curl(url + "/health/live")[0] == 200  # the process is alive: a restart would not help
        finally:
            staging.unlink()
            staging.mkdir()
        assert get_json(url + "/health/ready")[0] == 200


def test_ready_is_503_when_the_disk_is_below_the_free_space_floor(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, web={"enabled": True}, health={"spool_min_free_bytes": 10**18})
    with running_node(settings) as node:
        status, body = get_json(base_url(node) + "/health/ready")
        assert status == 503 and body["not_ready"] == ["spool"]
        assert "health.spool_min_free_bytes" in body["checks"]["spool"]["detail"]


def test_web_port_in_use_is_the_same_one_line_error_as_the_dicom_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = NodeService(make_settings(tmp_path, web={"enabled": True, "port": port}))
        try:
            with pytest.raises(ListenError) as caught:
                node.start()
        finally:
            node.stop(drain_seconds=5)
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"


def test_node_stops_cleanly_with_the_web_side_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, web={"enabled": True})
    with running_node(settings) as node:
        url = base_url(node)
        assert curl(url + "/health/live")[0] == 200
        port = node.web_port
    assert node.stopped.is_set()
    assert node.web is not None and not any(t.name == "web" for t in threading.enumerate())
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens on the web port any more


class _StubAnalyser:
    """Answers as the classifier does (facts of node.results' shape), without a model."""

    def analyse(self, series_uid: str, header: object, files: object) -> AnalysisResult:
        facts = {
            "classifiable": True,
            "prediction.body_part": "Chest",
            "prediction.body_part_source": "image",
            "disagreement.body_part": True,
            "prediction.axis": "axial",
            "prediction.axis_source": "geometry",
            "prediction.contrast": "no",
            "prediction.contrast_source": "blood",
        }
        return AnalysisResult(facts=facts, audit={"analyser": "stub"}, summary="stub")


def test_classification_results_and_disagreements_are_counted_per_series(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, web={"enabled": True})
    with running_node(settings, analyser=_StubAnalyser()) as node:
        url = base_url(node)
        for _ in range(2):
            series_uid = generate_uid()
            assert store(node.port, [synthetic_ct(series_uid)]) == [0]
        wait_for(
            lambda: value(scrape(url), "dicom_node_classification_seconds_count") == 2,
            what="two series analysed",
        )
        after = scrape(url)
    results = "dicom_node_classification_results_total"
    assert value(after, results, task="body_part", label="Chest", source="image") == 2
    assert value(after, results, task="axis", label="axial", source="geometry") == 2
    assert value(after, results, task="contrast", label="no", source="blood") == 2
    assert value(after, "dicom_node_classification_disagreements_total", task="body_part") == 2
    assert value(after, "dicom_node_classification_disagreements_total", task="axis") == 0


def test_dicom_node_run_with_the_web_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            yaml.safe_dump(
                {
                    "data_dir": str(tmp_path / "data"),
                    "receive": {"host": "127.0.0.1", "port": 0},
                    "classify": {"enabled": False},
                    "web": {"host": "127.0.0.1", "port": port},
                }
            )
        )
        done = subprocess.run(
            [sys.executable, "-m", "node", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; "
        f"change web.host / web.port in {config}, or set web.enabled: false"
    ]


def test_retries_and_a_dead_letter_are_counted_and_the_queue_gauge_shows_it(tmp_path: Path) -> None:
    with in_process_scp(status_for=lambda uid: 0xA700) as refusing:  # out of resources: retryable
        rules = write_rules(
            tmp_path / "rules.yaml",
            {"full": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": refusing.port}},
        )
        settings = make_settings(tmp_path, rules_path=str(rules), web={"enabled": True})  # 3 attempts
        with running_node(settings) as node:
            url = base_url(node)
            assert store(node.port, [synthetic_ct()]) == [0]
            wait_for(
                lambda: value(scrape(url), "dicom_node_jobs", kind="deliver", state="failed") == 1,
                what="the delivery dead-lettered",
            )
            after = scrape(url)
    assert value(after, "dicom_node_deliveries_total", destination="full", outcome="retry") == 2
    assert value(after, "dicom_node_deliveries_total", destination="full", outcome="dead_letter") == 1
    assert value(after, "dicom_node_deliveries_total", destination="full", outcome="done") == 0
    assert value(after, "dicom_node_dead_letters_total", kind="deliver") == 1
    assert value(after, "dicom_node_delivery_seconds_count", destination="full") == 3
    assert value(after, "dicom_node_instances_sent_total", destination="full") == 0
