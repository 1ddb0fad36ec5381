"""A real CT series through a running node with a classifier to Orthanc over DIMSE, with an SR: Orthanc's
REST API shows the SR in the same study; processing the same series again (a second node, fresh
database: re-processing from scratch) gives the same SR UIDs, and Orthanc still has one SR series."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import yaml

from node.report import report_uids
from tests.classifyutil import tiny_package
from tests.interop.e2e import events
from tests.nodeutil import make_settings, running_node, store, wait_for
from tests.peers import ct_files, run_orthanc
from tests.srcheck import check_sr

pytestmark = pytest.mark.interop

SERIES = "kits00072_arterial_slab"  # 18 real slices


def rules_file(path: Path, orthanc_port: int) -> Path:
    rules = {
        "version": 1,
        "destinations": {"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port}},
        # The destination itself does not ask for an SR: the rule does (deliver: override).
        "rules": [
            {
                "name": "ct",
                "when": {"attribute": "Modality", "equals": "CT"},
                "send_to": ["pacs"],
                "deliver": {"structured_report": True},
            }
        ],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def test_sr_reaches_orthanc_in_the_same_study_and_reprocessing_replaces_it(tmp_path: Path) -> None:
    package = tiny_package(tmp_path / "model")
    files = ct_files(SERIES)
    datasets = [pydicom.dcmread(f) for f in files]
    series_uid, study_uid = str(datasets[0].SeriesInstanceUID), str(datasets[0].StudyInstanceUID)
    expected = report_uids(series_uid, "tiny-test@0.0.1", 1)
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        for run in ("first", "second"):
            settings = make_settings(
                tmp_path / run,
                rules_path=str(rules_file(tmp_path / f"{run}.yaml", orthanc.dicom_port)),
                classify={"enabled": True, "model_dir": str(package), "device": "cpu"},
            )
            with running_node(settings) as node:
                assert store(node.port, datasets) == [0] * len(datasets)
                wait_for(lambda: events(node, "delivery.done"), timeout=120, what="delivery done")
                [report] = events(node, "delivery.report")
            assert report.details["outcome"] == "sent", report.message
            assert report.sop_instance_uid == expected.sop_instance_uid
        studies = orthanc.rest.get_json("/studies?expand")
        assert isinstance(studies, list) and len(studies) == 1
        [study] = studies
        assert study["MainDicomTags"]["StudyInstanceUID"] == study_uid
        series = [orthanc.rest.get_json(f"/series/{s}") for s in study["Series"]]
        modalities = sorted(s["MainDicomTags"]["Modality"] for s in series)
        assert modalities == ["CT", "SR"]  # one SR series after two runs
        [sr_series] = [s for s in series if s["MainDicomTags"]["Modality"] == "SR"]
        assert sr_series["MainDicomTags"]["SeriesInstanceUID"] == expected.series_instance_uid
        assert sr_series["MainDicomTags"]["SeriesDescription"] == "Node classification"
        [sr_id] = sr_series["Instances"]
        sr_bytes = orthanc.rest.instance_file(sr_id)
    path = tmp_path / "from-orthanc.dcm"
    path.write_bytes(sr_bytes)
    text = check_sr(path)
    assert "Imaging Measurement Report" in text and "tiny-test" in text
    sr = pydicom.dcmread(path)
    assert sr.SOPInstanceUID == expected.sop_instance_uid and sr.StudyInstanceUID == study_uid
    referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert len(referenced.ReferencedSOPSequence) == len(files)
