"""Write-back copies (node.writeback): the body-part policies, the private block read back, derived UIDs,
pixel bytes and the spooled original untouched, the per-job folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from node.deliver.base import InstanceFile
from node.deliver.destinations import WriteBack
from node.uids import is_valid_uid
from node.writeback import bodypart, private
from node.writeback.copies import outgoing_folder, prepare_copies
from node.writeback.derived import derived_instance_uid, derived_series_uid
from tests.peers import make_series
from tests.writebackutil import disputed, not_classifiable, sample_results

ATTRIBUTES = WriteBack(mode="attributes")


def with_body_part(value: str | None) -> Dataset:
    ds = Dataset()
    if value is not None:
        ds.BodyPartExamined = value
    return ds


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- Body Part Examined policies


@pytest.mark.parametrize(
    ("policy", "existing", "action", "after"),
    [
        ("if_empty", None, "WRITTEN", "ABDOMEN"),
        ("if_empty", "", "WRITTEN", "ABDOMEN"),
        ("if_empty", "CHEST", "KEPT", "CHEST"),
        ("if_empty", "ABDOMEN", "KEPT", "ABDOMEN"),
        ("overwrite", "CHEST", "WRITTEN", "ABDOMEN"),
        ("overwrite", None, "WRITTEN", "ABDOMEN"),
    ],
)
def test_body_part_policy(policy: str, existing: str | None, action: str, after: str) -> None:
    settings = WriteBack(mode="attributes", body_part=policy)  # type: ignore[arg-type]
    answer = bodypart.answer_for(sample_results(), settings)
    ds = with_body_part(existing)
    assert bodypart.apply(ds, answer, settings) == action
    assert ds.BodyPartExamined == after


@pytest.mark.parametrize("doubt", ["low_confidence", "disputed"])
def test_doubtful_body_part_is_written_only_with_include_doubtful(doubt: str) -> None:
    results = sample_results(low_confidence=True) if doubt == "low_confidence" else disputed(sample_results())
    strict = WriteBack(mode="attributes", body_part="overwrite")
    answer = bodypart.answer_for(results, strict)
    ds = with_body_part("CHEST")
    assert bodypart.apply(ds, answer, strict) == "DOUBTFUL"
    assert ds.BodyPartExamined == "CHEST"
    assert answer.reason == ("low confidence" if doubt == "low_confidence" else "disputed") + ": not written"

    lenient = WriteBack(mode="attributes", body_part="overwrite", include_doubtful=True)
    ds = with_body_part("CHEST")
    assert bodypart.apply(ds, bodypart.answer_for(results, lenient), lenient) == "WRITTEN"
    assert ds.BodyPartExamined == "ABDOMEN"


def test_not_classifiable_leaves_body_part_alone() -> None:
    answer = bodypart.answer_for(not_classifiable(), WriteBack(mode="attributes", body_part="overwrite"))
    ds = with_body_part(None)
    assert bodypart.apply(ds, answer, ATTRIBUTES) == "NOT_CLASSIFIABLE"
    assert "BodyPartExamined" not in ds


# ---- the copies


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_copy_carries_the_private_block_and_keeps_pixels_and_original(tmp_path: Path, syntax: str) -> None:
    originals = make_series(tmp_path / "spool", 3, transfer_syntax=syntax)
    before = {f.instance_id: sha256(f.path) for f in originals}
    copies = prepare_copies(tmp_path, 7, originals, WriteBack(mode="attributes"), sample_results())
    assert copies.folder == outgoing_folder(tmp_path, 7) and not copies.failed
    assert [c.instance_id for c in copies.files] == [f.instance_id for f in originals]
    for original, made in zip(originals, copies.files, strict=True):
        assert made.path.parent == copies.folder and made.sop_instance_uid == original.sop_instance_uid
        assert made.transfer_syntax_uid == original.transfer_syntax_uid
        source, out = dcmread(original.path), dcmread(made.path)
        assert out.file_meta.TransferSyntaxUID == syntax
        assert out.PixelData == source.PixelData  # the bytes as stored: native or encapsulated
        assert "BodyPartExamined" not in source and out.BodyPartExamined == "ABDOMEN"
        assert out.SOPInstanceUID == source.SOPInstanceUID
        assert out.SeriesInstanceUID == source.SeriesInstanceUID
        block = private.read_block(out)
        assert block["BodyPartLabel"] == "Abdomen" and float(block["BodyPartConfidence"]) == 0.9411
        assert block["BodyPartExaminedAction"] == "WRITTEN"
        # The private tags carry their VRs even when read from Implicit VR (our registered dictionary).
        tag = out.private_block(private.PRIVATE_GROUP, private.PRIVATE_CREATOR).get_tag(0x11)
        assert out[tag].VR == "DS" and out[tag].name == "[BodyPartConfidence]"
    assert {f.instance_id: sha256(f.path) for f in originals} == before
    copies.cleanup()
    assert not copies.folder.exists()


def test_private_block_round_trip_has_every_value(tmp_path: Path) -> None:
    originals = make_series(tmp_path / "spool", 1)
    copies = prepare_copies(tmp_path, 1, originals, ATTRIBUTES, disputed(sample_results()))
    block = private.read_block(dcmread(copies.files[0].path))
    expected_text = {
        "NodeBlockVersion": "1", "ModelName": "ct-starter", "ModelVersion": "0.2.0", "Classifiable": "YES",
        "BodyPartExaminedAction": "DOUBTFUL", "AnyDisagreement": "YES", "AnyLowConfidence": "NO",
        "BodyPartLabel": "Abdomen", "BodyPartSource": "prior", "BodyPartLowConfidence": "NO",
        "BodyPartDisagreement": "YES", "BodyPartDisagreementWith": "image", "BodyPartPriorLabel": "Abdomen",
        "BodyPartPriorSource": "SeriesDescription", "BodyPartImageLabel": "Chest",
        "BodyPartDefinedTerm": "ABDOMEN",
        "AxisLabel": "axial", "AxisSource": "geometry", "AxisDisagreement": "NO",
        "AxisPriorSource": "ImageOrientationPatient",
        "ContrastLabel": "yes", "ContrastSource": "blood", "ContrastPriorLabel": "unknown",
        "CoverageAnatomical": "YES", "CoverageFrom": "pelvis", "CoverageTo": "chest",
        "CoverageBodyPart": "Abdomen", "BloodPoolFound": "YES", "BloodPoolStructure": "aorta-like tube",
        "BloodPoolWhere": "aorta-like tube, 16 mm, median 278 HU over 198 mm",
        "ResultsSummary": "body_part Abdomen 0.94 (mostly prior), axis axial 1.00 (mostly geometry)",
    }
    assert {k: block[k] for k in expected_text} == expected_text
    numbers = {
        "BodyPartConfidence": 0.9411, "BodyPartPriorConfidence": 0.5, "BodyPartImageConfidence": 0.3391,
        "AxisConfidence": 1.0, "ContrastConfidence": 0.9808, "ContrastImageConfidence": 0.5329,
        "CoverageBodyPartConfidence": 0.6212, "BloodPoolHU": 277.8, "BloodContrastProbability": 1.0,
    }
    assert {k: float(block[k]) for k in numbers} == numbers
    assert list(block["CoverageLandmarkNames"]) == ["iliac crest", "diaphragm"]
    assert [float(v) for v in block["CoverageLandmarkPositions"]] == [72.0, 282.0]
    assert [float(v) for v in block["BloodPoolRange"]] == [198.0, 396.0]
    assert '"model":"ct-starter@0.2.0"' in block["ResultsJSON"]
    assert copies.report.details()["actions"] == {"DOUBTFUL": 1}
    assert copies.report.details()["body_part"]["disputed"] is True


def test_not_classifiable_block_has_only_what_is_meaningful(tmp_path: Path) -> None:
    originals = make_series(tmp_path / "spool", 1)
    copies = prepare_copies(tmp_path, 1, originals, ATTRIBUTES, not_classifiable())
    out = dcmread(copies.files[0].path)
    block = private.read_block(out)
    assert block["Classifiable"] == "NO" and block["NotClassifiableCode"] == "single_slice"
    assert block["BodyPartExaminedAction"] == "NOT_CLASSIFIABLE" and block["BodyPartPriorLabel"] == "Abdomen"
    assert not {"BodyPartLabel", "AxisLabel", "CoverageFrom", "BloodPoolFound", "ResultsJSON"} & set(block)
    assert "BodyPartExamined" not in out


def test_an_earlier_block_of_ours_is_replaced_not_mixed(tmp_path: Path) -> None:
    originals = make_series(tmp_path / "spool", 1)
    first = prepare_copies(tmp_path, 1, originals, ATTRIBUTES, sample_results())
    again = InstanceFile(**{**first.files[0].__dict__})
    second = prepare_copies(tmp_path, 2, [again], ATTRIBUTES, not_classifiable())
    out = dcmread(second.files[0].path)
    assert private.read_block(out)["Classifiable"] == "NO" and "BodyPartLabel" not in private.read_block(out)
    creators = [e for e in out if e.tag.group == private.PRIVATE_GROUP and e.tag.element < 0x100]
    assert [e.value for e in creators] == [private.PRIVATE_CREATOR]


def test_derived_copy_has_deterministic_uids_and_references_the_original(tmp_path: Path) -> None:
    originals = make_series(tmp_path / "spool", 2)
    derived = WriteBack(mode="attributes", derived_copy=True)
    first = prepare_copies(tmp_path, 1, originals, derived, sample_results())
    uids = [c.sop_instance_uid for c in first.files]
    series = {str(dcmread(c.path).SeriesInstanceUID) for c in first.files}
    again = prepare_copies(tmp_path, 2, originals, derived, sample_results())
    assert [c.sop_instance_uid for c in again.files] == uids  # same original + model -> same UIDs
    assert series == {first.report.derived_series_uid}
    original_series = str(dcmread(originals[0].path).SeriesInstanceUID)
    assert first.report.derived_series_uid == derived_series_uid(original_series, "ct-starter@0.2.0")
    assert derived_series_uid(original_series, "ct-starter@0.3.0") != first.report.derived_series_uid
    assert derived_instance_uid(originals[0].sop_instance_uid, "ct-starter@0.3.0") != uids[0]
    for original, made in zip(originals, first.files, strict=True):
        out, source = dcmread(made.path), dcmread(original.path)
        assert is_valid_uid(made.sop_instance_uid) and made.sop_instance_uid.startswith("2.25.")
        assert made.sop_instance_uid != original.sop_instance_uid
        assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID == made.sop_instance_uid
        assert out.StudyInstanceUID == source.StudyInstanceUID
        ref = out.SourceImageSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            source.SOPClassUID, source.SOPInstanceUID)
        assert out.ReferencedSeriesSequence[0].SeriesInstanceUID == original_series
        assert out.ImageType[0] == "DERIVED" and out.SeriesDescription.endswith("(classified)")
        assert out.PixelData == source.PixelData


def test_big_endian_input_keeps_its_encoding_and_pixel_bytes(tmp_path: Path) -> None:
    originals = make_series(tmp_path / "spool", 1)
    ds = dcmread(originals[0].path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    big = tmp_path / "big.dcm"
    # Re-encoded big endian (PixelData is written as the same bytes: what matters is that they stay).
    dcmwrite(big, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
    first = originals[0]
    item = InstanceFile(1, big, first.sop_class_uid, first.sop_instance_uid, ExplicitVRBigEndian)
    copies = prepare_copies(tmp_path, 3, [item], ATTRIBUTES, sample_results())
    out = dcmread(copies.files[0].path)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRBigEndian and not out.is_little_endian
    assert out.PixelData == dcmread(big).PixelData
    assert out.BodyPartExamined == "ABDOMEN" and private.read_block(out)["BodyPartLabel"] == "Abdomen"


def test_leftovers_are_removed_and_a_bad_file_is_named(tmp_path: Path) -> None:
    originals = make_series(tmp_path / "spool", 2)
    stale = outgoing_folder(tmp_path, 5) / "999.dcm"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a crash")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not DICOM at all")
    bad = InstanceFile(77, broken, originals[0].sop_class_uid, "1.2.3", ExplicitVRLittleEndian)
    copies = prepare_copies(tmp_path, 5, [originals[0], bad, originals[1]], ATTRIBUTES, sample_results())
    assert not stale.exists()
    assert [c.instance_id for c in copies.files] == [originals[0].instance_id, originals[1].instance_id]
    assert list(copies.failed) == [77] and "broken.dcm" in copies.failed[77]
    assert copies.report.details()["failed"] == 1


def test_a_copy_that_cannot_be_written_is_a_transient_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    originals = make_series(tmp_path / "spool", 1)

    def disk_full(self: Dataset, *args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Dataset, "save_as", disk_full)
    copies = prepare_copies(tmp_path, 9, originals, ATTRIBUTES, sample_results())
    assert copies.files == [] and copies.report.transient_failure is True
    assert "No space left on device" in copies.failed[originals[0].instance_id]
