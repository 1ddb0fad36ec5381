"""The issue's check, with real peers and the shipped starter model: every CT series of ../shared/data/ct
sent by dcmtk storescu gets a prediction, a prior, timings and the model version in the audit, and is
routed by a rule that uses a prediction; misleading tags are read as what they say and flagged."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml

from node.classify.package import STARTER_PACKAGE, load_package
from tests.interop.e2e import events, storescu
from tests.nodeutil import make_settings, running_node, wait_for
from tests.peers import DICOM_SERIES, ct_files, run_storescp

pytestmark = pytest.mark.interop

SERIES = DICOM_SERIES


def prediction_rules(path: Path, port: int, ae_title: str) -> Path:
    rules = {
        "version": 1,
        "destinations": {
            "archive": {"kind": "dimse", "ae_title": ae_title, "host": "127.0.0.1", "port": port}
        },
        "rules": [
            {
                "name": "doubtful-flagged",
                "when": {"attribute": "disagreement.any", "equals": True},
                "send_to": ["archive"],
                "on_match": "continue",
            },
            {
                "name": "classified-ct",
                "when": {
                    "all": [
                        {"attribute": "classifiable", "equals": True},
                        {"attribute": "prediction.axis", "equals": "axial"},
                        {"attribute": "prediction.body_part", "exists": True},
                    ]
                },
                "send_to": ["archive"],
            },
        ],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def test_every_shared_series_is_classified_audited_and_routed_on_a_prediction(tmp_path: Path) -> None:
    package = load_package(STARTER_PACKAGE)
    files = {name: ct_files(name) for name in SERIES}
    uids = {
        name: str(pydicom.dcmread(f[0], stop_before_pixels=True).SeriesInstanceUID)
        for name, f in files.items()
    }
    with run_storescp(tmp_path / "storescp") as scp:
        settings = make_settings(
            tmp_path,
            rules_path=str(prediction_rules(tmp_path / "rules.yaml", scp.port, scp.ae_title)),
            completion={"quiet_seconds": 1.0},
            classify={"enabled": True, "device": "cpu"},
        )
        with running_node(settings) as node:
            storescu(node.port, [f for group in files.values() for f in group])
            wait_for(lambda: len(events(node, "route.decision")) == len(SERIES), timeout=300, what="routing")
            analysed = {e.series_uid: e for e in events(node, "series.analysed")}
            decisions = {e.series_uid: e for e in events(node, "route.decision")}
            disagreements = {e.series_uid: e for e in events(node, "classification.disagreement")}

    for name, uid in uids.items():
        details = analysed[uid].details
        assert details is not None, name
        assert details["classifiable"] is True, (name, details.get("not_classifiable"))
        assert details["model"] == package.model_id
        assert details["image"]["model"] == package.model_id
        assert set(details["image"]["labels"]) == {"body_part", "axis", "contrast"}
        assert set(details["prior"]) >= {"body_part", "axis", "contrast"}
        assert {"assemble", "preprocess", "infer", "total"} <= set(details["timings_ms"])
        # Every real series has Image Orientation (Patient): the axis is geometry's, and axial.
        assert details["final"]["axis"]["source"] == "geometry", name
        assert details["final"]["axis"]["label"] == "axial", name
        assert "classified-ct" in decisions[uid].details["matched_rules"], name

    # BodyPartExamined says BREAST: the prior reads it as what it says (Chest) ...
    upper = analysed[uids["fltbreast001_petct_upper"]].details
    assert upper["prior"]["body_part"]["label"] == "Chest"
    assert "BREAST" in upper["prior"]["body_part"]["evidence"]
    # ... the anatomical coverage (lung apex to vertex) makes it Head and neck, and so does the final answer:
    # the disagreement is its own audit row and routes the series by the disagreement rule.
    upper_uid = uids["fltbreast001_petct_upper"]
    coverage = upper["measurements"]["coverage"]
    assert (coverage["label"], coverage["from"], coverage["to"]) == ("Head and neck", "chest", "head")
    assert upper["final"]["body_part"]["label"] == "Head and neck"
    expected = {"prior": "Chest", "with": "final", "final": "Head and neck"}
    assert upper["disagreement"] == {"body_part": expected}
    row = disagreements[upper_uid].details["body_part"]
    assert (row["prior"], row["final"], row["with"]) == ("Chest", "Head and neck", "final")
    assert "doubtful-flagged" in decisions[upper_uid].details["matched_rules"]
    # Every series whose tags and image agree is not flagged.
    for name, uid in uids.items():
        flagged = bool(analysed[uid].details["disagreement"])
        assert flagged == (uid in disagreements), name
        assert flagged == ("doubtful-flagged" in decisions[uid].details["matched_rules"]), name
