"""Augmentations keep the geometry right; crop recipes relabel; manifests are parsed with precise errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from node.training.augment import (
    AugmentConfig,
    CropRecipe,
    View,
    apply_crop,
    crop_z,
    derived_views,
    flip_left_right,
    parse_crops,
    reformat,
    resample_thickness,
    sample_view,
)
from node.training.dataset import ManifestError, nifti_to_lps, read_manifest

AXIAL_ROW = (1.0, 0.0, 0.0)
AXIAL_COLUMN = (0.0, 1.0, 0.0)


def _axial(shape: tuple[int, int, int] = (40, 12, 14), spacing=(2.0, 0.5, 0.7)) -> View:
    return View.from_cosines(np.zeros(shape, np.float32), spacing, AXIAL_ROW, AXIAL_COLUMN)


def _position(view: View, index: tuple[int, ...]) -> np.ndarray:
    """Patient position of a voxel relative to voxel (0, 0, 0) of the same view."""
    return np.asarray(sum(i * s * d for i, s, d in zip(index, view.spacing, view.directions, strict=True)))


def _find(voxels: np.ndarray, value: float) -> tuple[int, ...]:
    hits = np.argwhere(voxels == value)
    assert len(hits) == 1
    return tuple(int(v) for v in hits[0])


def _with_markers(view: View) -> tuple[View, tuple[int, int, int], tuple[int, int, int]]:
    voxels = view.voxels.copy()
    a, b = (3, 4, 5), (30, 1, 10)
    voxels[a] = 1000.0
    voxels[b] = 2000.0
    return View(voxels, view.spacing, view.directions), a, b


@pytest.mark.parametrize(
    ("target", "normal_axis", "row", "column"),
    [
        ("coronal", 1, (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
        ("sagittal", 0, (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    ],
)
def test_reformat_orientation_and_markers(target, normal_axis, row, column) -> None:
    view, a, b = _with_markers(_axial())
    out = reformat(view, target)
    assert out.imaging_axis == target
    assert abs(out.normal[normal_axis]) == pytest.approx(1.0)
    np.testing.assert_allclose(out.row_cosine, row, atol=1e-9)
    np.testing.assert_allclose(out.column_cosine, column, atol=1e-9)  # head at the top of the image
    # Slices ascend along the normal, as node.volume sorts them.
    assert float(np.dot(out.directions[0], out.normal)) > 0
    # The two markers keep their patient positions relative to each other.
    before = _position(view, b) - _position(view, a)
    after = _position(out, _find(out.voxels, 2000.0)) - _position(out, _find(out.voxels, 1000.0))
    np.testing.assert_allclose(after, before, atol=1e-9)
    # Spacing follows the axes: the old slice spacing is now the row spacing (rows run along z).
    assert out.spacing[1] == pytest.approx(2.0)
    assert sorted(out.spacing) == sorted(view.spacing)


def test_reformat_of_reversed_axial_stack_keeps_anatomy() -> None:
    # Slices stored feet-last (normal -z): a coronal reformat must still put the head at the top.
    view = View.from_cosines(np.zeros((40, 12, 14), np.float32), (2.0, 0.5, 0.7), AXIAL_ROW, (0.0, -1.0, 0.0))
    voxels = view.voxels.copy()
    voxels[39, 6, 7] = 5.0  # last slice: most inferior, since the normal points to the feet
    out = reformat(View(voxels, view.spacing, view.directions), "coronal")
    _, row, _ = _find(out.voxels, 5.0)
    assert row == out.voxels.shape[1] - 1  # bottom row = feet


def _z_ramp(view: View) -> View:
    """Voxel value = patient z (mm) x 10: lets a test see the head-feet order of any output."""
    axis = int(np.argmax(np.abs(view.directions[:, 2])))
    sign = np.sign(view.directions[axis][2])
    n = view.voxels.shape[axis]
    ramp = sign * np.arange(n, dtype=np.float32) * view.spacing[axis] * 10
    shape = [1, 1, 1]
    shape[axis] = n
    return View(np.broadcast_to(ramp.reshape(shape), view.voxels.shape).copy(), view.spacing, view.directions)


def test_crop_fractions_run_from_the_feet() -> None:
    up = _z_ramp(_axial())
    lower = crop_z(up, 0.0, 0.5)
    assert lower.voxels.shape[0] == 20
    assert lower.voxels.max() < up.voxels.max() / 2 + 1
    # Same anatomy stored the other way round (normal -z): fractions still count from the feet.
    down = _z_ramp(
        View.from_cosines(np.zeros((40, 12, 14), np.float32), (2.0, 0.5, 0.7), AXIAL_ROW, (0, -1, 0))
    )
    lower_down = crop_z(down, 0.0, 0.5)
    assert lower_down.voxels.max() <= down.voxels.min() + (down.voxels.max() - down.voxels.min()) / 2 + 1


def test_crop_recipe_relabels_body_part_only() -> None:
    view = _axial((100, 12, 14), (3.0, 0.7, 0.7))
    labels = {"body_part": "Abdomen-pelvis", "axis": "axial", "contrast": "yes"}
    cropped, new = apply_crop(view, labels, CropRecipe("Pelvis", 0.0, 0.45))
    assert new == {"body_part": "Pelvis", "axis": "axial", "contrast": "yes"}
    assert cropped.voxels.shape[0] == 45
    assert labels["body_part"] == "Abdomen-pelvis"  # the input is not changed


def test_derived_views_labels() -> None:
    view = _axial((100, 12, 14), (3.0, 0.7, 0.7))
    labels = {"body_part": "Abdomen-pelvis", "axis": "axial", "contrast": "no"}
    views = derived_views(view, labels, parse_crops("Abdomen:0.45-1.0;Pelvis:0.0-0.5"))
    names = {name: lab for name, _, lab in views}
    assert names["coronal"]["axis"] == "coronal" and names["coronal"]["body_part"] == "Abdomen-pelvis"
    assert names["sagittal"]["axis"] == "sagittal"
    assert names["crop Abdomen:0.45-1"]["body_part"] == "Abdomen"
    assert names["crop Pelvis:0-0.5"]["body_part"] == "Pelvis"
    # A short slab (18 slices x 2.5 mm) is neither reformatted nor cropped.
    assert derived_views(_axial((18, 12, 14), (2.5, 0.7, 0.7)), labels, parse_crops("Pelvis:0-0.5")) == []


def test_sampled_views_never_flip_head_and_feet() -> None:
    config = AugmentConfig(p_crop=0.5, p_reformat=0.8, p_thickness=0.5, p_flip_lr=0.5, noise_sigma_hu=(0, 0))
    view = _z_ramp(_axial((100, 16, 18), (3.0, 0.7, 0.7)))
    labels = {"body_part": "Abdomen-pelvis", "axis": "axial", "contrast": "no"}
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(150):
        voxels, out, _ = sample_view(view, labels, parse_crops("Pelvis:0.0-0.5"), rng, config)
        seen.add((out["axis"], out["body_part"]))
        if out["axis"] == "axial":
            profile = voxels[:, 0, 0]  # slices ascend towards the head
        else:
            profile = -voxels[0, :, 0]  # rows descend towards the feet
        assert np.all(np.diff(profile) > 0), out
    assert {a for a, _ in seen} == {"axial", "coronal", "sagittal"}
    assert {b for _, b in seen} == {"Abdomen-pelvis", "Pelvis"}


def test_left_right_flip_mirrors_x_only() -> None:
    view = _axial()
    voxels = view.voxels.copy()
    voxels[3, 4, 0] = 1.0
    flipped = flip_left_right(View(voxels, view.spacing, view.directions))
    assert _find(flipped.voxels, 1.0) == (3, 4, 13)
    np.testing.assert_array_equal(flipped.directions, view.directions)


def test_thickness_resampling() -> None:
    view = _z_ramp(_axial((41, 4, 4), (1.0, 1.0, 1.0)))
    thick = resample_thickness(view, 3, "mean")
    assert thick.voxels.shape[0] == 13 and thick.spacing[0] == 3.0
    assert thick.voxels[0, 0, 0] == pytest.approx(10.0)  # mean of 0, 10, 20
    sparse = resample_thickness(view, 2, "subsample")
    assert sparse.voxels.shape[0] == 21 and sparse.spacing[0] == 2.0


def test_nifti_ras_to_lps() -> None:
    data = np.zeros((6, 5, 4), np.float32)  # (i, j, k)
    data[0, 0, 0] = 7.0  # the voxel nearest to the patient's left, back and feet
    affine = np.diag([0.8, 0.9, 2.5, 1.0])  # RAS+, i towards the patient's right, j anterior, k head
    voxels, spacing, row, column = nifti_to_lps(data, affine)
    assert voxels.shape == (4, 5, 6)
    assert spacing == pytest.approx((2.5, 0.9, 0.8))
    np.testing.assert_allclose(row, (1, 0, 0))  # columns run to the patient's left, as DICOM stores axials
    np.testing.assert_allclose(column, (0, 1, 0))  # rows run to the back
    # i = 0 is the left-most column (RAS x smallest = most left): the last column; j = 0 the most
    # posterior: the last row; k = 0 the most inferior: the first slice.
    assert _find(voxels, 7.0) == (0, 4, 5)


# -------------------------------------------------------------------------------------------- manifest

HEADER = "id,path,format,body_part,axis,contrast,patient,crops\n"


def _manifest(tmp_path: Path, body: str) -> Path:
    (tmp_path / "s1").mkdir()
    path = tmp_path / "m.csv"
    path.write_text(HEADER + body)
    return path


def test_manifest_parses_labels_paths_and_crops(tmp_path: Path) -> None:
    path = _manifest(
        tmp_path,
        "a,s1,dicom,Abdomen-pelvis,axial,,P1,Abdomen:0.45-1.0;Pelvis:0.0-0.5\nmr,s1,dicom,,,,P9,\n",
    )
    manifest = read_manifest(path)
    (entry,) = manifest.entries
    assert entry.path == (tmp_path / "s1").resolve()
    assert entry.labels == {"body_part": "Abdomen-pelvis", "axis": "axial", "contrast": None}
    assert entry.label_index("contrast") == -1
    assert [str(c) for c in entry.crops] == ["Abdomen:0.45-1", "Pelvis:0-0.5"]
    assert manifest.skipped == [("mr", "no labels (body_part, axis and contrast all empty)")]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a,s1,dicom,Thorax,axial,no,P1,", "row 2 (a): column 'body_part': unknown class 'Thorax'"),
        ("a,s1,dicom,Chest,oblique,no,P1,", "row 2 (a): column 'axis': unknown class 'oblique'"),
        ("a,s1,dicom,Chest,axial,no,P1,Pelvis:0.0-0.1", "row 2 (a): column 'crops'"),
        ("a,s1,dicom,Chest,axial,no,P1,Belly:0.0-0.5", "unknown body part 'Belly'"),
        ("a,missing,dicom,Chest,axial,no,P1,", "column 'path'"),
        ("a,s1,png,Chest,axial,no,P1,", "column 'format'"),
    ],
)
def test_manifest_errors_name_file_row_and_column(tmp_path: Path, row: str, message: str) -> None:
    path = _manifest(tmp_path, row + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_manifest_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,path,format,body_part,axis\n")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(path)


def test_shared_manifest_reads_as_is() -> None:
    """Every row of the shared manifest reads as it is (whatever rows are added later): each one is an
    entry whose file exists, or the MR, which has no labels and is skipped."""
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct" / "manifest.csv"
    if not shared.is_file():
        pytest.skip(f"{shared} is absent (see the data README)")
    with shared.open(newline="", encoding="utf-8") as f:
        row_ids = [row["id"] for row in csv.DictReader(f)]
    manifest = read_manifest(shared)
    assert [i for i, _ in manifest.skipped] == ["totalseg_mr_not_ct"]
    assert sorted(e.id for e in manifest.entries) == sorted(set(row_ids) - {"totalseg_mr_not_ct"})
    missing = [str(e.path) for e in manifest.entries if not e.path.exists()]
    assert not missing, f"manifest rows whose files are absent: {missing}"
    unlabelled = [e.id for e in manifest.entries if all(v is None for v in e.labels.values())]
    assert not unlabelled
