"""`dicom-node rules check` and `dicom-node rules test` (the functions the CLI calls) on real CT headers."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pydicom
import pytest

from node.classify.labels import BODY_PARTS
from node.facts import series_facts
from node.rules import evaluate, load_rules
from node.rules.dryrun import check, cmd_rules_check, cmd_rules_test, dry_run, scan

REPO = Path(__file__).resolve().parents[2]
CT_DATA = REPO.parent / "shared" / "data" / "ct"
# Small series: an 18-slice arterial slab (ContrastBolusAgent APPLIED, description 'arterial') and a 28-slice
# head with gantry tilt (no description, 4 mm slices).
SERIES = ("kits00072_arterial_slab", "qa_ge_head_tilt")

RULES = """\
version: 1
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}
  research: {ae_title: RESEARCH, host: 127.0.0.1, port: 105}
rules:
  - name: contrast-to-research
    when:
      all:
        - {attribute: Modality, equals: CT}
        - {attribute: ContrastBolusAgent, exists: true}
    send_to: [research]
    on_match: continue
  - name: thin-ct-to-pacs
    when:
      all:
        - {attribute: Modality, equals: CT}
        - {attribute: SliceThickness, le: 3.0}
        - {attribute: series.instance_count, ge: 10}
    send_to: [pacs]
fallback: {discard: true}
"""


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both series unpacked into one temporary folder, plus a file that is not DICOM."""
    missing = [s for s in SERIES if not (CT_DATA / f"{s}.tar.xz").is_file()]
    if missing:
        pytest.skip(f"real CT data absent: {', '.join(str(CT_DATA / (s + '.tar.xz')) for s in missing)}")
    root = tmp_path_factory.mktemp("ct")
    for name in SERIES:
        with tarfile.open(CT_DATA / f"{name}.tar.xz") as archive:
            archive.extractall(root, filter="data")
    (root / "README.txt").write_text("not a DICOM file\n", encoding="utf-8")
    return root


@pytest.fixture()
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path


def _series_uid(folder: Path) -> str:
    first = sorted(folder.glob("*.dcm"))[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def test_scan_groups_by_series_and_picks_lowest_instance_number(ct_folder: Path) -> None:
    result = scan(ct_folder)
    assert [p.name for p, _ in result.skipped] == ["README.txt"]
    by_uid = {s.uid: s for s in result.series}
    slab = by_uid[_series_uid(ct_folder / "kits00072_arterial_slab")]
    head = by_uid[_series_uid(ct_folder / "qa_ge_head_tilt")]
    assert len(slab.instances) == 18 and len(head.instances) == 28
    numbers = [
        int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber)
        for f in (ct_folder / "qa_ge_head_tilt").glob("*.dcm")
    ]
    assert int(head.representative.InstanceNumber) == min(numbers)
    assert "PixelData" not in slab.representative


def test_dry_run_text(ct_folder: Path, rules_file: Path) -> None:
    report = dry_run(rules_file, ct_folder, json=False)
    slab_uid = _series_uid(ct_folder / "kits00072_arterial_slab")
    head_uid = _series_uid(ct_folder / "qa_ge_head_tilt")
    assert f"series {slab_uid}" in report and f"series {head_uid}" in report
    assert "README.txt: not a DICOM file" in report
    slab, head = (report.split(f"series {uid}")[1].split("\nseries ")[0] for uid in (slab_uid, head_uid))
    assert "18 instances" in slab and "description 'arterial'" in slab
    assert "rule contrast-to-research: MATCHED -> send_to research (continue)" in slab
    assert "[true ] ContrastBolusAgent exists true: actual 'APPLIED'; present" in slab
    assert "=> send to research (contrast-to-research), pacs (thin-ct-to-pacs)" in slab
    assert "28 instances" in head
    assert "rule thin-ct-to-pacs: no match" in head
    assert "[false] SliceThickness le 3.0: actual '4.0'; 4 not <= 3" in head
    assert "=> discarded (fallback)" in head
    assert report.rstrip().endswith("2 series, 1 files skipped")


def test_dry_run_json(ct_folder: Path, rules_file: Path) -> None:
    out = json.loads(dry_run(rules_file, ct_folder, json=True))
    assert out["rules_sha256"] == load_rules(rules_file).sha256
    assert out["skipped"] == [{"path": str(ct_folder / "README.txt"), "reason": "not a DICOM file"}]
    by_description = {s["description"]: s for s in out["series"]}
    slab = by_description["arterial"]
    assert slab["instance_count"] == 18 and slab["modality"] == "CT"
    assert slab["decision"]["destinations"] == {
        "research": ["contrast-to-research"],
        "pacs": ["thin-ct-to-pacs"],
    }
    head = next(s for s in out["series"] if s["instance_count"] == 28)
    assert head["decision"]["discarded"] and head["decision"]["fallback_used"]


def test_a_single_file_is_one_series_of_one(ct_folder: Path, rules_file: Path) -> None:
    one = sorted((ct_folder / "kits00072_arterial_slab").glob("*.dcm"))[0]
    out = json.loads(dry_run(rules_file, one, json=True))
    assert [s["instance_count"] for s in out["series"]] == [1]
    # One slice is below the instance-count threshold: only the contrast rule matches.
    assert out["series"][0]["decision"]["destinations"] == {"research": ["contrast-to-research"]}


def test_series_facts_leave_pixels_out(ct_folder: Path) -> None:
    path = sorted((ct_folder / "kits00072_arterial_slab").glob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    assert "PixelData" in ds
    facts = series_facts(ds, 18, calling_ae="MODALITY", generation=2).with_extra({"classifiable": True})
    assert "PixelData" not in facts.attributes
    assert facts.attributes.Modality == "CT"
    assert facts.attributes.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert (facts.series_uid, facts.instance_count, facts.calling_ae, facts.generation) == (
        str(ds.SeriesInstanceUID),
        18,
        "MODALITY",
        2,
    )
    decision = evaluate(load_rules(REPO / "rules" / "example.yaml"), facts)
    assert "pacs" in decision.destinations


def test_cmd_rules_test_exit_codes(
    ct_folder: Path, rules_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cmd_rules_test(rules_file, ct_folder, as_json=False) == 0
    captured = capsys.readouterr()
    assert "2 series" in captured.out and captured.err == ""

    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("send_to: [pacs]", "send_to: [pcas]"), encoding="utf-8")
    assert cmd_rules_test(bad, ct_folder, as_json=True) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        str(bad) in captured.err and "rule 'thin-ct-to-pacs'" in captured.err and "send_to[0]" in captured.err
    )

    assert cmd_rules_test(rules_file, tmp_path / "absent", as_json=False) == 2
    assert "no such file or folder" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x", encoding="utf-8")
    assert cmd_rules_test(rules_file, empty, as_json=False) == 2
    assert "no DICOM series found" in capsys.readouterr().err


def test_cmd_rules_check(tmp_path: Path, rules_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_rules_check(rules_file) == 0
    out = capsys.readouterr().out
    assert "OK: 2 destinations, 2 rules, fallback discard" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        RULES.replace("{attribute: Modality, equals: CT}", "{attribute: Modalty, equals: CT}", 1),
        encoding="utf-8",
    )
    assert cmd_rules_check(bad) == 1
    err = capsys.readouterr().err
    assert f"{bad}:9: rule 'contrast-to-research': field 'when.all[0].attribute'" in err
    assert "did you mean 'Modality'" in err

    # A folder: every *.yaml in it; one bad file makes the whole check fail.
    ok, message = check(tmp_path)
    assert not ok and "bad.yaml" in message and "rules.yaml: OK" in message
    shutil.copy(REPO / "rules" / "example.yaml", tmp_path / "example.yaml")
    bad.unlink()
    ok, message = check(tmp_path)
    assert ok, message


def test_node_command_line(ct_folder: Path, rules_file: Path, tmp_path: Path) -> None:
    """The same through the `dicom-node` command (python -m node), as an administrator runs it."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "node", "rules", "test", "--rules", str(rules_file), str(ct_folder), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    series = json.loads(done.stdout)["series"]
    assert sorted(s["instance_count"] for s in series) == [18, 28]
    # With the default settings the dry run classifies each series with the shipped starter model.
    for entry in series:
        facts = entry["analysis"]["facts"]
        assert facts["classifiable"] is True
        assert facts["prediction.axis"] == "axial" and facts["prediction.axis_source"] == "geometry"
        assert facts["classification.model"].startswith("ct-starter@")
        assert facts["image.body_part"] in BODY_PARTS
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("le: 3.0", "le: thin"), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "node", "rules", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 1
    assert f"{bad}:17: rule 'thin-ct-to-pacs': field 'when.all[1].le': expected a number" in done.stderr


def test_dry_run_shows_predictions_and_routes_on_them(ct_folder: Path, tmp_path: Path) -> None:
    from node.classify.analyser import ClassifyingAnalyser
    from node.classify.engine import ClassifierEngine
    from node.classify.package import load_package
    from tests.classifyutil import tiny_package

    engine = ClassifierEngine(load_package(tiny_package(tmp_path / "model")), device="cpu")
    rules = tmp_path / "prediction.yaml"
    rules.write_text(
        RULES.replace(
            "        - {attribute: ContrastBolusAgent, exists: true}",
            "        - {attribute: prediction.axis, equals: axial}\n"
            "        - {attribute: prior.contrast, equals: 'yes'}",
        ),
        encoding="utf-8",
    )
    report = dry_run(rules, ct_folder, analyser=ClassifyingAnalyser(engine))
    assert report.count("classifiable = True") == 2
    assert report.count("prediction.axis = 'axial'") == 2
    assert "prior.axis_oblique = True" in report  # the tilted head
    assert "timings_ms: assemble" in report
    slab = dry_run(
        rules, ct_folder / "kits00072_arterial_slab", json=True, analyser=ClassifyingAnalyser(engine)
    )
    entry = json.loads(slab)["series"][0]
    assert entry["analysis"]["facts"]["prior.contrast"] == "yes"
    assert entry["decision"]["destinations"]["research"] == ["contrast-to-research"]


def test_rules_test_takes_the_calling_and_called_ae(
    ct_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Routing by which AE title a modality sent to (series.called_ae) can be dry-run as it would run."""
    from node.cli import main as cli_main

    rules = tmp_path / "by-ae.yaml"
    rules.write_text(
        """version: 1
destinations:
  research: {kind: dimse, ae_title: RESEARCH, host: 127.0.0.1, port: 4243}
  pacs: {kind: dimse, ae_title: PACS, host: 127.0.0.1, port: 4242}
rules:
  - name: research-ae
    when:
      all:
        - {attribute: series.called_ae, equals: NODE_RESEARCH}
        - {attribute: series.calling_ae, equals: CT1}
    send_to: [research]
fallback: {send_to: [pacs]}
""",
        encoding="utf-8",
    )
    slab = str(ct_folder / "kits00072_arterial_slab")
    base = ["rules", "test", "--no-classify", "--json", "--rules", str(rules), slab]
    assert cli_main([*base, "--calling-ae", "CT1", "--called-ae", "NODE_RESEARCH"]) == 0
    (series,) = json.loads(capsys.readouterr().out)["series"]
    assert series["decision"]["destinations"] == {"research": ["research-ae"]}
    assert cli_main([*base, "--calling-ae", "CT1"]) == 0  # called AE defaults to receive.ae_title (NODE)
    (series,) = json.loads(capsys.readouterr().out)["series"]
    assert series["decision"]["destinations"] == {"pacs": ["fallback"]}
