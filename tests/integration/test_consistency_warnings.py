"""Consistency warnings over real associations, on SQLite and PostgreSQL: the same SOP Instance UID in two
series, one series under two studies. Stored as today, flagged: audit row, series count, metric, and the
`consistency.*` facts a rule routes on."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.models import AuditEvent, Instance, Job, JobState, Series
from tests.nodeutil import make_settings, recording_sink, running_node, store, synthetic_ct, wait_for


def _rules(path: Path, port: int) -> Path:
    """Only flagged series go to the QA sink; the rest is discarded."""
    rules = {
        "version": 1,
        "destinations": {"qa": {"kind": "dimse", "ae_title": "SINK", "host": "127.0.0.1", "port": port}},
        "rules": [
            {
                "name": "flagged-to-qa",
                "when": {
                    "any": [
                        {"attribute": "consistency.sop_in_other_series", "equals": True},
                        {"attribute": "consistency.series_in_other_study", "equals": True},
                    ]
                },
                "send_to": ["qa"],
            }
        ],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _warnings(node, event: str) -> list[AuditEvent]:
    with node.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.id)
        return list(session.scalars(query))


def test_sop_in_two_series_and_series_in_two_studies_are_stored_and_flagged(
    tmp_path: Path, db_url: str
) -> None:
    received: list[str] = []
    sink, port = recording_sink(received)
    settings = make_settings(
        tmp_path, rules_path=str(_rules(tmp_path / "rules.yaml", port)), database_url=db_url
    )
    study = generate_uid()
    clean, shares_sop, two_studies = generate_uid(), generate_uid(), generate_uid()
    first = synthetic_ct(clean, study_uid=study, number=1)
    again = synthetic_ct(shares_sop, study_uid=study, number=1)
    again.SOPInstanceUID = first.SOPInstanceUID
    again.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    other_study = generate_uid()
    try:
        with running_node(settings) as node:
            assert store(node.port, [first, synthetic_ct(clean, study_uid=study, number=2)]) == [0, 0]
            assert store(node.port, [again]) == [0]
            assert store(
                node.port,
                [
                    synthetic_ct(two_studies, study_uid=study, number=1),
                    synthetic_ct(two_studies, study_uid=other_study, number=2),
                ],
            ) == [0, 0]

            # Stored as today: the shared SOP Instance UID is in both series.
            with node.sessions() as session:
                rows = session.execute(
                    select(Series.series_uid, Series.sop_uid_conflicts, Series.study_uid_conflicts)
                ).all()
                shared = session.scalars(
                    select(Instance.id).where(Instance.sop_instance_uid == first.SOPInstanceUID)
                ).all()
            assert len(shared) == 2
            assert {r.series_uid: (r.sop_uid_conflicts, r.study_uid_conflicts) for r in rows} == {
                clean: (0, 0),
                shares_sop: (1, 0),
                two_studies: (0, 1),
            }
            (sop_warning,) = _warnings(node, "consistency.sop_in_other_series")
            assert (sop_warning.series_uid, sop_warning.sop_instance_uid) == (
                shares_sop,
                first.SOPInstanceUID,
            )
            assert sop_warning.details == {"other_series_uid": clean, "other_study_uid": study}
            assert sop_warning.calling_ae == "TESTSCU"
            (study_warning,) = _warnings(node, "consistency.series_in_other_study")
            assert study_warning.series_uid == two_studies
            assert study_warning.details == {"study_uid": other_study, "series_study_uid": study}
            metrics = node.metrics.exposition().decode()
            assert 'dicom_node_consistency_warnings_total{kind="sop_in_other_series"} 1.0' in metrics
            assert 'dicom_node_consistency_warnings_total{kind="series_in_other_study"} 1.0' in metrics

            # The rules see the facts: the two flagged series go to QA, the clean one is discarded.
            def routed() -> list[Job] | None:
                with node.sessions() as session:
                    route = session.scalars(select(Job).where(Job.kind == "route")).all()
                    if len(route) < 3 or any(j.state != JobState.DONE for j in route):
                        return None
                    deliveries = session.scalars(select(Job).where(Job.kind == "deliver")).all()
                    if any(j.state != JobState.DONE for j in deliveries):
                        return None
                    return list(deliveries)

            deliveries = wait_for(routed, timeout=60, what="three route jobs and their deliveries")
            with node.sessions() as session:
                delivered = set(
                    session.scalars(
                        select(Series.series_uid).where(Series.id.in_([j.series_id for j in deliveries]))
                    )
                )
            assert delivered == {shares_sop, two_studies}
        assert len(received) == 3  # one instance of shares_sop, two of two_studies
    finally:
        sink.shutdown()
