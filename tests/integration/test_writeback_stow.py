"""Write-back over STOW-RS: a real CT series through a running node (canned classification) to Orthanc's
DICOMweb plugin as derived, annotated copies; Orthanc's REST API shows Body Part Examined and the derived
series, the stored files carry the private block and the original pixel bytes."""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from pydicom import dcmread

from node.writeback import private
from node.writeback.derived import derived_series_uid
from tests.interop.e2e import events
from tests.nodeutil import make_settings, running_node, store, wait_for
from tests.peers import ct_files, run_orthanc
from tests.writebackutil import CannedAnalyser, sample_results


def test_derived_copies_over_stow_rs_to_orthanc(tmp_path: Path) -> None:
    private.register()
    sources = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in ct_files("qa_ge_head_tilt"))}
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        rules = {
            "version": 1,
            "destinations": {
                "web": {
                    "kind": "dicomweb", "url": orthanc.dicomweb_root, "batch_size": 10,
                    "writeback": {"mode": "attributes", "body_part": "overwrite", "derived_copy": True},
                }
            },
            "rules": [{"name": "all", "send_to": ["web"]}],
        }
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
        settings = make_settings(tmp_path, rules_path=str(tmp_path / "rules.yaml"))
        with running_node(settings, analyser=CannedAnalyser(sample_results())) as node:
            assert store(node.port, list(sources.values())) == [0] * len(sources)
            wait_for(lambda: events(node, "delivery.done"), timeout=60, what="the delivery")
            [row] = events(node, "delivery.writeback")
        rest = orthanc.rest
        tags = [rest.get_json(f"/instances/{i}/simplified-tags") for i in rest.instances()]
        stored = [dcmread(io.BytesIO(b)) for b in rest.files_by_sop_instance_uid().values()]

    original_series = str(next(iter(sources.values())).SeriesInstanceUID)
    expected_series = derived_series_uid(original_series, "ct-starter@0.2.0")
    assert len(tags) == len(sources)
    assert {t["BodyPartExamined"] for t in tags} == {"ABDOMEN"}  # type: ignore[index]
    assert {t["SeriesInstanceUID"] for t in tags} == {expected_series}  # type: ignore[index]
    for ds in stored:
        source = sources[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert ds.PixelData == source.PixelData and source.BodyPartExamined == "HEAD"
        assert private.read_block(ds)["BodyPartLabel"] == "Abdomen"
    assert row.details["actions"] == {"WRITTEN": len(sources)}
    assert row.details["replaced_values"] == {"HEAD": len(sources)}
