"""Volume assembly on the real CT series in ../shared/data/ct (skipped when the data is absent)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from node.volume import Volume, assemble_series
from tests.peers import ct_files


def assemble(name: str, shuffle: bool = True) -> tuple[Volume, list[Path]]:
    files = ct_files(name)
    if shuffle:  # the spool gives no order; neither should the result depend on one
        files = files[:]
        random.Random(name).shuffle(files)
    result = assemble_series(files)
    assert isinstance(result, Volume), f"{name}: {result}"
    json.dumps(result.report)
    return result, files


def normal_projections(files: list[Path]) -> list[float]:
    """Every file's ImagePositionPatient projected on its slice normal, ascending."""
    out = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        out.append(float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    return sorted(out)


def hu_sanity(voxels: np.ndarray) -> tuple[float, float]:
    """(peak of the air histogram between -1200 and -800, median of everything denser than -500 HU)."""
    air = voxels[(voxels > -1200) & (voxels < -800)]
    counts, edges = np.histogram(air, bins=40, range=(-1200, -800))
    peak = float(edges[counts.argmax()] + 5)
    body = float(np.median(voxels[voxels > -500]))
    return peak, body


def check_ascending_along_normal(vol: Volume, files: list[Path]) -> None:
    """The volume's slices are the files' positions in ascending order along the normal: compare the
    first and last slice's pixels with the files at the smallest and largest projection."""
    iop = np.array([*vol.row_cosine, *vol.column_cosine])
    normal = np.cross(iop[:3], iop[3:])
    by_projection = sorted(
        files,
        key=lambda p: float(
            np.dot([float(v) for v in dcmread(p, stop_before_pixels=True).ImagePositionPatient], normal)
        ),
    )
    for index, path in ((0, by_projection[0]), (-1, by_projection[-1])):
        ds = dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        f = vol.report["downsample_factor"]
        rows, cols = vol.voxels.shape[1:]
        expected = hu[: rows * f, : cols * f].reshape(rows, f, cols, f).mean(axis=(1, 3))
        padding = ds.get("PixelPaddingValue")
        if padding is not None:  # padded pixels become air: compare only blocks without padding
            raw = ds.pixel_array[: rows * f, : cols * f].reshape(rows, f, cols, f)
            pad = int(padding) - 65536 if raw.dtype == np.int16 and int(padding) > 32767 else int(padding)
            clean = ~np.any(raw == pad, axis=(1, 3))
        else:
            clean = np.ones((rows, cols), dtype=bool)
        np.testing.assert_allclose(vol.voxels[index][clean], expected[clean], atol=0.01)


def test_ge_head_with_gantry_tilt_and_uneven_spacing() -> None:
    vol, files = assemble("qa_ge_head_tilt")
    report = vol.report
    assert report["instances_total"] == 28 and report["instances_used"] == 28 and report["slices"] == 28
    assert report["excluded"] == {}
    assert report["tilt_degrees"] == pytest.approx(18.5, abs=0.1)  # GantryDetectorTilt is +18.5
    # spacing along the normal: 1.08, 4.0 and 7.0 mm between slices (positions step 1.14/4.22/7.38 in z)
    assert report["slice_spacing"]["min"] == pytest.approx(1.081, abs=0.01)
    assert report["slice_spacing"]["median"] == pytest.approx(4.0, abs=0.01)
    assert report["slice_spacing"]["max"] == pytest.approx(7.0, abs=0.01)
    assert len(report["gaps"]) == 13
    assert all(g["spacing_mm"] == pytest.approx(7.0, abs=0.01) for g in report["gaps"])
    assert [g["index"] for g in report["gaps"]] == list(range(14, 27))
    assert vol.voxels.shape == (28, 256, 256) and report["downsample_factor"] == 2
    assert vol.spacing == pytest.approx((4.0, 0.9765624, 0.9765624), abs=0.01)
    steps = np.diff(normal_projections(files))
    assert vol.spacing[0] == pytest.approx(float(np.median(steps)), abs=1e-3)
    air, body = hu_sanity(vol.voxels)
    assert -1050 < air < -950 and -50 < body < 150
    check_ascending_along_normal(vol, files)


@pytest.mark.parametrize(
    ("name", "slices", "pixel_spacing", "slice_spacing"),
    [
        ("itkelastix_chest", 141, 0.9765625, 2.0),
        ("cptacgbm_c3n01192_head", 160, 0.474609, 1.25),
        ("lidc0001_full", 133, 0.703125, 2.5),
    ],
)
def test_real_axial_series(name: str, slices: int, pixel_spacing: float, slice_spacing: float) -> None:
    vol, files = assemble(name)
    report = vol.report
    assert report["instances_total"] == slices and report["slices"] == slices
    assert report["excluded"] == {} and report["gaps"] == []
    assert report["tilt_degrees"] == pytest.approx(0.0, abs=0.01)
    assert report["source_shape"] == [slices, 512, 512]
    assert vol.voxels.shape == (slices, 256, 256) and vol.voxels.dtype == np.float32
    assert vol.spacing == pytest.approx((slice_spacing, 2 * pixel_spacing, 2 * pixel_spacing), abs=1e-4)
    assert report["orientation"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    air, body = hu_sanity(vol.voxels)
    assert -1050 < air < -950, f"air peak {air}"
    assert -150 < body < 150, f"median of voxels above -500 HU: {body}"
    check_ascending_along_normal(vol, files)
