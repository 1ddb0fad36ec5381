"""node.metrics: the counters move, each node has its own registry, label values stay bounded."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from node.deliver.base import SendOutcome
from node.metrics import OTHER, BoundedLabel, NodeMetrics


def samples(metrics: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_received_instances_count_by_source_ae_and_syntax_and_bytes_add_up() -> None:
    metrics = NodeMetrics()
    metrics.record_received("dimse", "CT1", "1.2.840.10008.1.2.1", 1000, "stored")
    metrics.record_received("dimse", "CT1", "1.2.840.10008.1.2.1", 500, "duplicate")
    metrics.record_received("stow", None, "1.2.840.10008.1.2.4.90", 70, "stored")
    got = samples(metrics)
    key = (("calling_ae", "CT1"), ("source", "dimse"), ("transfer_syntax", "1.2.840.10008.1.2.1"))
    assert got[("dicom_node_instances_received_total", key)] == 2
    assert got[("dicom_node_received_bytes_total", (("calling_ae", "CT1"), ("source", "dimse")))] == 1500
    assert got[("dicom_node_received_bytes_total", (("calling_ae", ""), ("source", "stow")))] == 70
    assert got[("dicom_node_instance_outcomes_total", (("outcome", "stored"),))] == 2
    assert got[("dicom_node_instance_outcomes_total", (("outcome", "duplicate"),))] == 1


def test_each_node_has_its_own_registry() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.record_refused("dimse", 0xA700)
    first.record_refused("dimse", 0xA700)
    key = ("dicom_node_instances_refused_total", (("source", "dimse"), ("status", "0xA700")))
    assert samples(first)[key] == 2
    assert key not in samples(second)


def test_deliveries_count_outcomes_latency_sent_instances_and_dead_letters() -> None:
    metrics = NodeMetrics()
    metrics.record_delivery("pacs", "retry", SendOutcome(sent=[1], error="boom", duration_seconds=0.3))
    metrics.record_delivery("pacs", "done", SendOutcome(sent=[2, 3], duration_seconds=0.7))
    metrics.record_delivery("qa", "dead_letter", None)
    metrics.record_dead_letter("route")
    got = samples(metrics)
    assert got[("dicom_node_deliveries_total", (("destination", "pacs"), ("outcome", "done")))] == 1
    assert got[("dicom_node_deliveries_total", (("destination", "pacs"), ("outcome", "retry")))] == 1
    assert got[("dicom_node_deliveries_total", (("destination", "qa"), ("outcome", "dead_letter")))] == 1
    assert got[("dicom_node_instances_sent_total", (("destination", "pacs"),))] == 3
    assert got[("dicom_node_delivery_seconds_count", (("destination", "pacs"),))] == 2
    assert abs(got[("dicom_node_delivery_seconds_sum", (("destination", "pacs"),))] - 1.0) < 1e-9
    assert ("dicom_node_delivery_seconds_count", (("destination", "qa"),)) not in got
    assert got[("dicom_node_dead_letters_total", (("kind", "deliver"),))] == 1
    assert got[("dicom_node_dead_letters_total", (("kind", "route"),))] == 1


FACTS = {
    "classifiable": True,
    "prediction.body_part": "Abdomen",
    "prediction.body_part_source": "prior",
    "disagreement.body_part": True,
    "prediction.axis": "axial",
    "prediction.axis_source": "geometry",
    "disagreement.axis": False,
    "prediction.contrast": "yes",
    "prediction.contrast_source": "blood",
    "disagreement.contrast": False,
}


def test_classification_results_by_task_class_and_source_and_disagreements() -> None:
    metrics = NodeMetrics()
    metrics.record_classification(FACTS, {"analyser": "classifier"}, 1.5)
    metrics.record_classification({"classifiable": False}, {"analyser": "classifier"}, 0.2)
    metrics.record_classification({}, {"analyser": "none"}, 0.0)  # classification disabled: not counted
    got = samples(metrics)
    result = "dicom_node_classification_results_total"
    assert got[(result, (("label", "Abdomen"), ("source", "prior"), ("task", "body_part")))] == 1
    assert got[(result, (("label", "yes"), ("source", "blood"), ("task", "contrast")))] == 1
    assert got[("dicom_node_classification_disagreements_total", (("task", "body_part"),))] == 1
    assert ("dicom_node_classification_disagreements_total", (("task", "axis"),)) not in got
    assert got[("dicom_node_classification_seconds_count", ())] == 2
    assert got[("dicom_node_series_not_classifiable_total", ())] == 1


def test_series_completed_and_associations_rejected_by_reason() -> None:
    metrics = NodeMetrics()
    metrics.record_series_completed("quiet_time")
    metrics.record_series_completed("expected_count")
    metrics.record_series_completed("quiet_time")
    metrics.record_association_rejected("calling_ae")
    got = samples(metrics)
    assert got[("dicom_node_series_completed_total", (("trigger", "quiet_time"),))] == 2
    assert got[("dicom_node_series_completed_total", (("trigger", "expected_count"),))] == 1
    assert got[("dicom_node_associations_rejected_total", (("reason", "calling_ae"),))] == 1


def test_open_associations_gauge_reads_its_source_at_scrape_time() -> None:
    metrics = NodeMetrics()
    open_now = [0]
    metrics.watch_associations(lambda: open_now[0])
    assert samples(metrics)[("dicom_node_associations_open", ())] == 0
    open_now[0] = 3
    assert samples(metrics)[("dicom_node_associations_open", ())] == 3


def test_label_values_are_bounded() -> None:
    bounded = BoundedLabel(limit=2)
    assert [bounded(v) for v in ("A", "B", "A", "C", "D", None)] == ["A", "B", "A", OTHER, OTHER, OTHER]
    metrics = NodeMetrics()
    for n in range(300):  # a sender inventing calling AE titles (no allow-list)
        metrics.record_received("dimse", f"AE{n}", "1.2.840.10008.1.2", 10, "stored")
    titles = {
        dict(labels)["calling_ae"]
        for (name, labels) in samples(metrics)
        if name == "dicom_node_instances_received_total"
    }
    assert len(titles) == 201 and OTHER in titles
