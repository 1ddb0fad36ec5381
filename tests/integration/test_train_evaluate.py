"""`dicom-node train` (with resume), then `dicom-node evaluate`, on four real CT series with a tiny network.

The series are the small ones of ../shared/data/ct: a 28-slice tilted head (DICOM), an 18-slice slab with
no body part label (DICOM), an abdomen-pelvis and a chest CTA crop (NIfTI). A 32^3 grid and width 8 keep it
to seconds per epoch on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from node.classify.package import load_package
from node.cli import main
from tests.peers import CT_DATA_DIR, unpack_ct

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--grid", "32", "--width", "8", "--samples-per-epoch", "8", "--batch-size", "4", "--quiet"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nifti = CT_DATA_DIR / "nifti"
    if not (nifti / "totalseg_abdomen_pelvis_3mm.nii.gz").is_file():
        pytest.skip(f"CT test data {CT_DATA_DIR} is absent (see the data README)")
    head = unpack_ct("qa_ge_head_tilt")
    slab = unpack_ct("kits00072_arterial_slab")
    folder = tmp_path_factory.mktemp("manifest")
    path = folder / "manifest.csv"
    path.write_text(
        "id,path,format,body_part,axis,contrast,patient,crops\n"
        f"head,{head},dicom,Head,axial,no,P4,\n"
        f"slab,{slab},dicom,,axial,yes,P6,\n"
        f"abdpelvis,{nifti / 'totalseg_abdomen_pelvis_3mm.nii.gz'},nifti,Abdomen-pelvis,axial,no,P7,"
        "Abdomen:0.5-1.0;Pelvis:0.0-0.55\n"
        f"chest,{nifti / 'totalseg_chest_cta_crop_b.nii.gz'},nifti,Chest,axial,yes,P8,\n"
        f"mr,{nifti / 'totalseg_mr_not_ct.nii.gz'},nifti,,,,P9,\n"
    )
    return path


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_train_resume_evaluate(manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    common = ["train", "--manifest", str(manifest), "--out", str(out), "--val-patients", "P7", *TINY]
    # First run: 1 of 2 epochs, then stop (as if interrupted after the epoch's checkpoint).
    assert main([*common, "--epochs", "2", "--stop-after", "1"]) == 0
    first = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert first["epoch"] == 1 and len(first["history"]) == 1
    assert "skipped mr" in capsys.readouterr().out
    # Resume: continues at epoch 2, with the first epoch's history kept.
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    second = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert second["epoch"] == 2
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    assert (out / "checkpoints" / "best.pt").is_file()
    assert _is_png(out / "training_curves.png")

    package = load_package(out / "package")
    assert package.spec.grid == (32, 32, 32)
    training = package.metadata["node"]["training"]
    assert training["val_patients"] == ["P7"] and training["epochs"] == 2
    assert training["data"]["per_class"]["body_part"]["Head"]["series"] == 1
    package.load_network("cpu")

    evaluation = tmp_path / "eval"
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(out / "package"),
                "--manifest",
                str(manifest),
                "--out",
                str(evaluation),
                "--views",
                "augmented",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "all three" in printed and "NOT independent" in printed
    metrics = json.loads((evaluation / "metrics.json").read_text())
    body = metrics["original"]["tasks"]["body_part"]["accuracy"]
    assert body["n"] == 3  # the slab has no body part label; the MR was skipped
    assert len(body["ci95"]) == 2 and body["ci_method"] == "wilson"
    assert metrics["original"]["tasks"]["contrast"]["accuracy"]["n"] == 4
    assert metrics["original"]["all_three_correct"]["n"] == 3
    assert metrics["derived"]["n_views"] > 0
    for task in ("body_part", "axis", "contrast"):
        assert _is_png(evaluation / f"confusion_{task}.png")
    assert _is_png(evaluation / "training_curves.png")
    rows = (evaluation / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("series,view,independent,patient")
    assert len(rows) == 1 + metrics["original"]["n_views"] + metrics["derived"]["n_views"]
    # Every source scored on its own and fused; the final answer's calibration.
    sources = json.loads((evaluation / "sources.json").read_text())["original"]
    assert set(sources["sources"]) == {"prior", "network", "blood", "coverage", "final"}
    contrast = sources["sources"]["blood"]["tasks"]["contrast"]
    assert contrast["accuracy"]["n"] == 4 and contrast["answered"]["n"] == 4
    assert sources["calibration"]["all_tasks"]["n"] == 3 + 4 + 4  # body part, axis, contrast answers
    assert "prior" in printed and "coverage" in printed and "ECE" in printed
    assert _is_png(evaluation / "reliability.png")


def test_crossval_scores_every_source_on_held_out_patients(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    assert main(["crossval", "--manifest", str(manifest), "--out", str(out), "--epochs", "1", *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["patients"] == ["P4", "P6", "P7", "P8"]
    sources = metrics["sources"]["original"]["sources"]
    # Each held-out series was scored by the network of the fold that did not see its patient.
    assert sources["final"]["tasks"]["contrast"]["accuracy"]["n"] == 4
    for patient in ("P4", "P6", "P7", "P8"):
        assert (out / "folds" / patient / "sources.json").is_file()
    # --resume reuses the finished folds and reports the same figures.
    assert (
        main(["crossval", "--manifest", str(manifest), "--out", str(out), "--epochs", "1", "--resume", *TINY])
        == 0
    )
    again = json.loads((out / "metrics.json").read_text())
    assert again["sources"]["original"]["sources"] == sources


def test_resume_refuses_other_settings(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["train", "--manifest", str(manifest), "--out", str(out), "--val-fraction", "0", *TINY]
    assert main([*common, "--epochs", "1"]) == 0
    assert main([*common, "--epochs", "2", "--resume", "--lr", "0.01"]) == 2  # TrainingError -> exit 2
