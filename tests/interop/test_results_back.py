"""Results back into DICOM, end to end (issue 9's first check), and STOW-RS in through the node's own server.

1. storescu sends a real CT series to a node that classifies it (the shipped starter model). Its rules
   send the series to one Orthanc over STOW-RS with basic auth, and to another Orthanc over DIMSE with
   the classification written back (Body Part Examined, the private block) and a Structured Report.
   Orthanc's REST API shows the SR in the same study and the annotated copy; pixel data is identical.
2. dicomweb-client uploads a series to the node's HTTP server (bearer token): it is stored, completed,
   classified and forwarded like a C-STORE, and /metrics counts it under source "stow".
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from node.classify.labels import BODY_PART_TERMS
from node.writeback.private import PRIVATE_CREATOR, PRIVATE_GROUP
from tests.classifyutil import tiny_package
from tests.interop.e2e import all_delivered, events, storescu, write_rules
from tests.nodeutil import make_settings, running_node, wait_for
from tests.peers import ct_files, in_process_scp, run_orthanc
from tests.srcheck import check_sr
from tests.webutil import scrape, value

pytestmark = pytest.mark.interop

USERS = {"node": "orthanc-stow-secret"}


def without_body_part(files: list[Path], folder: Path) -> list[Path]:
    """Copies of the series with Body Part Examined removed, so that the write-back has to fill it."""
    folder.mkdir()
    out = []
    for path in files:
        ds = dcmread(path)
        if "BodyPartExamined" in ds:
            del ds.BodyPartExamined
        target = folder / path.name
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return out


def private_value(ds: Dataset, element: int) -> object:
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    return block[element].value


def test_a_series_goes_out_over_stow_and_dimse_with_attributes_and_an_sr(tmp_path: Path) -> None:
    files = without_body_part(ct_files("qa_ge_head_tilt"), tmp_path / "series")
    originals = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in files}
    password = tmp_path / "orthanc-password"
    password.write_text(USERS["node"])
    with (
        run_orthanc(tmp_path / "web-pacs", users=USERS) as web_pacs,
        run_orthanc(tmp_path / "dimse-pacs", aet="DIMSEPACS") as dimse_pacs,
    ):
        rules = write_rules(
            tmp_path / "rules.yaml",
            {
                "web": {
                    "kind": "dicomweb",
                    "url": web_pacs.dicomweb_root,
                    "auth": {"kind": "basic", "username": "node", "password_file": str(password)},
                },
                "pacs": {
                    "ae_title": "DIMSEPACS",
                    "host": "127.0.0.1",
                    "port": dimse_pacs.dicom_port,
                    # Written whatever the confidence: this test is about the mechanism, not the model.
                    "writeback": {"mode": "attributes", "include_doubtful": True},
                    "structured_report": True,
                },
            },
        )
        settings = make_settings(
            tmp_path, rules_path=str(rules), classify={"enabled": True, "device": "cpu"}
        )
        with running_node(settings) as node:
            storescu(node.port, files)
            wait_for(lambda: all_delivered(node, 2), timeout=180, what="both deliveries")
            [decision] = events(node, "route.decision")
            [analysed] = events(node, "series.analysed")
            [report] = events(node, "delivery.report")
        final_body_part = analysed.details["final"]["body_part"]["label"]
        assert set(decision.details["destinations"]) == {"pacs", "web"}
        assert report.details["outcome"] == "sent", report.message

        # Over STOW-RS with auth: the stored bytes, every instance, pixel data identical.
        over_web = web_pacs.rest.files_by_sop_instance_uid()
        assert set(over_web) == set(originals)
        for uid, data in over_web.items():
            copy = dcmread(BytesIO(data))
            assert copy.PixelData == originals[uid].PixelData
            assert "BodyPartExamined" not in copy  # no write-back asked for this destination

        # Over DIMSE: annotated copies and the SR, in the same study.
        dimse_ids = dimse_pacs.rest.instances()
        over_dimse = {dimse_pacs.rest.sop_instance_uid(i): i for i in dimse_ids}
        sr_uid = report.details["sop_instance_uid"]
        assert set(over_dimse) == set(originals) | {sr_uid}
        studies = dimse_pacs.rest.get_json("/studies")
        assert isinstance(studies, list) and len(studies) == 1
        series = dimse_pacs.rest.get_json(f"/studies/{studies[0]}/series?expand")
        assert isinstance(series, list)
        assert sorted(s["MainDicomTags"]["Modality"] for s in series) == ["CT", "SR"]
        for uid, orthanc_id in over_dimse.items():
            if uid == sr_uid:
                continue
            tags = dimse_pacs.rest.get_json(f"/instances/{orthanc_id}/simplified-tags")
            assert isinstance(tags, dict)
            assert tags["BodyPartExamined"] == BODY_PART_TERMS[final_body_part]
            copy = dcmread(BytesIO(dimse_pacs.rest.instance_file(orthanc_id)))
            assert copy.PixelData == originals[uid].PixelData
            assert private_value(copy, 0x10) == final_body_part  # BodyPartLabel
            assert private_value(copy, 0x02) == "ct-starter"  # ModelName
        sr_path = tmp_path / "sr.dcm"
        sr_path.write_bytes(dimse_pacs.rest.instance_file(over_dimse[sr_uid]))
        assert "Imaging Measurement Report" in check_sr(sr_path)
        sr = dcmread(sr_path)
        assert sr.StudyInstanceUID == next(iter(originals.values())).StudyInstanceUID
        assert sr.VerificationFlag == "UNVERIFIED"


def test_a_stow_upload_to_the_node_is_classified_and_forwarded_like_a_c_store(tmp_path: Path) -> None:
    files = ct_files("kits00072_arterial_slab")
    datasets = [dcmread(f) for f in files]
    tokens = tmp_path / "tokens"
    tokens.write_text("node-stow-token\n")
    tokens.chmod(0o600)
    with in_process_scp(ae_title="SINK") as sink:
        rules = write_rules(
            tmp_path / "rules.yaml", {"sink": {"ae_title": "SINK", "host": "127.0.0.1", "port": sink.port}}
        )
        settings = make_settings(
            tmp_path,
            rules_path=str(rules),
            classify={"enabled": True, "model_dir": str(tiny_package(tmp_path / "model")), "device": "cpu"},
            web={"enabled": True, "auth": {"kind": "bearer", "tokens_file": str(tokens)}},
        )
        with running_node(settings) as node:
            base = f"http://127.0.0.1:{node.web_port}"
            before = scrape(base)
            session = requests.Session()
            session.headers["Authorization"] = "Bearer node-stow-token"
            client = DICOMwebClient(url=base, session=session)
            response = client.store_instances(datasets)
            assert len(response.ReferencedSOPSequence) == len(datasets)
            assert "FailedSOPSequence" not in response
            wait_for(lambda: all_delivered(node, 1), timeout=120, what="the forward of the STOW-RS upload")
            after = scrape(base)
            [analysed] = events(node, "series.analysed")
            unauthorised = requests.post(
                base + "/studies",
                data=b"",
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
                timeout=30,
            )
            refused = scrape(base)
    assert analysed.details["classifiable"] is True
    assert sorted(sink.uids()) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert received_over_stow(after) - received_over_stow(before) == len(datasets)
    assert value(after, "dicom_node_deliveries_total", destination="sink", outcome="done") >= 1
    assert unauthorised.status_code == 401 and "Bearer" in unauthorised.headers["WWW-Authenticate"]
    assert value(refused, "dicom_node_http_requests_refused_total", status="401") == 1


def received_over_stow(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    """Instances received with source "stow", over every calling AE and transfer syntax."""
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "dicom_node_instances_received_total" and ("source", "stow") in labels
    )
