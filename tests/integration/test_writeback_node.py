"""Write-back through a running node: a real CT series (qa_ge_head_tilt, 28 GE slices with Body Part
Examined HEAD, removed here from every other instance) is classified (tiny random-weight package) and
delivered as annotated copies to dcmtk's storescp (destination setting: if_empty, doubtful answers
included) and to Orthanc over DIMSE (a rule's `deliver:` override: overwrite, a derived copy). The
received files carry Body Part Examined and the private block, pixel data as in the original, and the
spooled originals are unchanged. And copies of real CT files (Explicit and Implicit VR) validate with
dciodvfy as well as their originals."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from sqlalchemy import select

from node.classify.labels import BODY_PART_TERMS
from node.db.models import Instance
from node.deliver.destinations import WriteBack
from node.writeback import private
from node.writeback.copies import OUTGOING_DIR, prepare_copies
from node.writeback.derived import derived_series_uid
from tests.classifyutil import tiny_package
from tests.interop.e2e import events
from tests.nodeutil import make_settings, running_node, store, wait_for
from tests.peers import ct_files, instance_files, require_binary, run_orthanc, run_storescp
from tests.writebackutil import sample_results

SERIES = "qa_ge_head_tilt"


def rules(path: Path, storescp_port: int, orthanc_port: int) -> Path:
    doc: dict[str, Any] = {
        "version": 1,
        "destinations": {
            "pacs": {
                "ae_title": "STORESCP", "host": "127.0.0.1", "port": storescp_port,
                "writeback": {"mode": "attributes", "body_part": "if_empty", "include_doubtful": True},
            },
            "orthanc": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port,
                        "structured_report": True},
        },
        "rules": [
            {"name": "annotated-to-pacs", "when": {"attribute": "Modality", "equals": "CT"},
             "send_to": ["pacs"], "on_match": "continue"},
            {"name": "derived-to-orthanc", "when": {"attribute": "Modality", "equals": "CT"},
             "send_to": ["orthanc"],
             "deliver": {"writeback": {"mode": "attributes", "body_part": "overwrite",
                                       "include_doubtful": True, "derived_copy": True}}},
        ],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_package(tmp_path_factory.mktemp("model") / "tiny")


def test_annotated_copies_reach_storescp_and_orthanc(tmp_path: Path, package: Path) -> None:
    private.register()
    sources = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in ct_files(SERIES))}
    # Every other instance comes without Body Part Examined: if_empty fills only those.
    emptied = set(list(sources)[::2])
    for uid in emptied:
        del sources[uid].BodyPartExamined
    with (
        run_storescp(tmp_path / "storescp") as scp,
        run_orthanc(tmp_path / "orthanc", dicomweb=False) as orthanc,
    ):
        settings = make_settings(
            tmp_path,
            rules_path=str(rules(tmp_path / "rules.yaml", scp.port, orthanc.dicom_port)),
            classify={"enabled": True, "model_dir": str(package), "device": "cpu"},
        )
        with running_node(settings) as node:
            assert store(node.port, list(sources.values())) == [0] * len(sources)
            wait_for(lambda: len(events(node, "delivery.done")) == 2, timeout=120, what="two deliveries")
            analysed = events(node, "series.analysed")[0].details
            writebacks = {e.destination: e for e in events(node, "delivery.writeback")}
            with node.sessions() as session:
                spooled = [(node.spool.absolute(r.path), r.sha256) for r in session.scalars(select(Instance))]
            leftovers = list((node.spool.root / OUTGOING_DIR).glob("*/*"))
        received = [dcmread(p) for p in scp.files()]
        everything = [dcmread(io.BytesIO(b)) for b in orthanc.rest.files_by_sop_instance_uid().values()]
        rest = orthanc.rest
        all_tags = [rest.get_json(f"/instances/{i}/simplified-tags") for i in rest.instances()]
        orthanc_tags = [t for t in all_tags if t["Modality"] == "CT"]  # type: ignore[index]
    in_orthanc = [ds for ds in everything if ds.Modality == "CT"]
    reports = [ds for ds in everything if ds.Modality == "SR"]

    assert analysed is not None and analysed["classifiable"] is True
    label = analysed["final"]["body_part"]["label"]
    term = BODY_PART_TERMS[label]
    # The originals in the spool are what was received, byte for byte; no copy is left behind.
    assert len(spooled) == len(sources) and all(
        hashlib.sha256(path.read_bytes()).hexdigest() == digest for path, digest in spooled
    )
    assert leftovers == []

    # storescp: same UIDs, Body Part Examined filled where empty, our private block, pixels unchanged.
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(sources)
    for ds in received:
        uid = str(ds.SOPInstanceUID)
        source = sources[uid]
        block = private.read_block(ds)
        if uid in emptied:
            assert "BodyPartExamined" not in source
            assert ds.BodyPartExamined == term and block["BodyPartExaminedAction"] == "WRITTEN"
        else:
            assert source.BodyPartExamined == ds.BodyPartExamined == "HEAD"
            assert block["BodyPartExaminedAction"] == "KEPT"
        assert ds.SeriesInstanceUID == source.SeriesInstanceUID
        assert ds.PixelData == source.PixelData
        assert block["BodyPartLabel"] == label
        assert block["ModelName"] == "tiny-test" and block["ModelVersion"] == "0.0.1"
        confidence = analysed["final"]["body_part"]["confidence"]
        assert float(block["BodyPartConfidence"]) == pytest.approx(confidence)
        assert block["AxisLabel"] == analysed["final"]["axis"]["label"]
    pacs_row = writebacks["pacs"].details
    assert pacs_row["copies"] == len(sources) and pacs_row["body_part"]["term"] == term
    assert pacs_row["actions"] == {"WRITTEN": len(emptied), "KEPT": len(sources) - len(emptied)}
    assert pacs_row["derived_series_uid"] is None

    # Orthanc: a derived series (deterministic UID), the originals referenced, Body Part Examined shown.
    original_series = str(next(iter(sources.values())).SeriesInstanceUID)
    expected_series = derived_series_uid(original_series, "tiny-test@0.0.1")
    assert len(in_orthanc) == len(sources)
    assert {t["SeriesInstanceUID"] for t in orthanc_tags} == {expected_series}  # type: ignore[index]
    assert {t["BodyPartExamined"] for t in orthanc_tags} == {term}  # type: ignore[index]
    for ds in in_orthanc:
        source_uid = str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert source_uid in sources and str(ds.SOPInstanceUID) != source_uid
        assert ds.PixelData == sources[source_uid].PixelData
        assert ds.ImageType[0] == "DERIVED"
        assert private.read_block(ds)["BodyPartLabel"] == label
    assert writebacks["orthanc"].details["derived_series_uid"] == expected_series
    # The SR sent after the derived copies references them (the UIDs Orthanc has), in the same study.
    assert len(reports) == 1
    evidence = reports[0].CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == in_orthanc[0].StudyInstanceUID
    referenced_series = evidence.ReferencedSeriesSequence
    assert [s.SeriesInstanceUID for s in referenced_series] == [expected_series]
    assert sorted(r.ReferencedSOPInstanceUID for r in referenced_series[0].ReferencedSOPSequence) == sorted(
        str(ds.SOPInstanceUID) for ds in in_orthanc
    )


@pytest.mark.parametrize("name", ["qa_ge_head_tilt", "cptacgbm_c3n01192_head"])  # Explicit / Implicit VR LE
@pytest.mark.parametrize("derived_copy", [False, True], ids=["same-uids", "derived"])
def test_real_ct_copies_validate_as_well_as_the_originals(
    tmp_path: Path, name: str, derived_copy: bool
) -> None:
    """dciodvfy reports no error on a copy that it does not report on the original."""
    dciodvfy = require_binary("dciodvfy")
    private.register()
    originals = instance_files(ct_files(name)[:2])
    settings = WriteBack(mode="attributes", body_part="overwrite", derived_copy=derived_copy)
    copies = prepare_copies(tmp_path, 1, originals, settings, sample_results())

    def errors(path: Path) -> set[str]:
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        return {line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")}

    for original, made in zip(originals, copies.files, strict=True):
        source, copy = dcmread(original.path), dcmread(made.path)
        assert copy.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert copy.PixelData == source.PixelData
        assert copy.BodyPartExamined == "ABDOMEN" and private.read_block(copy)["ContrastLabel"] == "yes"
        assert errors(made.path) <= errors(original.path)
