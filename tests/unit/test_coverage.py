"""Body part from anatomical coverage, on phantoms whose regions and lengths are known."""

from __future__ import annotations

import numpy as np
import pytest

from node.classify.canonical import CanonicalVolume
from node.classify.coverage import body_part_from_segments, measure_coverage
from tests.phantoms import body_phantom


@pytest.mark.parametrize(
    ("segments", "expected", "from_to"),
    [
        ([("abdomen", 40), ("chest", 240), ("neck", 30)], "Chest", ("abdomen", "neck")),
        ([("neck", 100), ("head", 90)], "Head", ("neck", "head")),
        ([("chest", 60), ("neck", 180), ("head", 140)], "Head and neck", ("chest", "head")),
        ([("pelvis", 160), ("abdomen", 200), ("chest", 30)], "Abdomen-pelvis", ("pelvis", "chest")),
        (
            [("pelvis", 140), ("abdomen", 220), ("chest", 260), ("neck", 40)],
            "Chest-abdomen-pelvis",
            ("pelvis", "neck"),
        ),
        ([("pelvis", 60), ("abdomen", 200), ("chest", 120)], "Abdomen", ("pelvis", "chest")),
        ([("pelvis", 180), ("abdomen", 30)], "Pelvis", ("pelvis", "abdomen")),
    ],
)
def test_the_coverage_table_on_phantoms(
    segments: list[tuple[str, float]], expected: str, from_to: tuple[str, str]
) -> None:
    coverage = measure_coverage(body_phantom(segments))
    assert coverage.anatomical
    assert coverage.label == expected, (coverage.segments_mm, coverage.reason)
    assert (coverage.covers_from, coverage.covers_to) == from_to
    assert coverage.probabilities[expected] > 0.5


def test_landmarks_are_where_the_regions_meet() -> None:
    coverage = measure_coverage(
        body_phantom([("pelvis", 150), ("abdomen", 200), ("chest", 250), ("neck", 50)])
    )
    names = [name for name, _ in coverage.landmarks]
    assert names == ["iliac crest", "diaphragm", "lung apex"]
    z = dict(coverage.landmarks)
    assert z["iliac crest"] == pytest.approx(145, abs=10)
    assert z["diaphragm"] == pytest.approx(350, abs=10)
    assert z["lung apex"] == pytest.approx(595, abs=10)


def test_random_bytes_show_no_anatomy() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(-1024, 3000, size=(40, 128, 128)).astype(np.float32)
    coverage = measure_coverage(CanonicalVolume(noise, (5.0, 2.0, 2.0), "axial"))
    assert not coverage.anatomical and coverage.label is None
    assert coverage.reason.startswith("no anatomy")


def test_an_empty_scan_shows_no_anatomy() -> None:
    empty = np.full((30, 128, 128), -1000.0, dtype=np.float32)
    assert not measure_coverage(CanonicalVolume(empty, (5.0, 2.0, 2.0), "axial")).anatomical


def test_legs_are_outside_the_table_and_come_out_flat() -> None:
    probabilities, _ = body_part_from_segments(
        {"legs": 300.0, "pelvis": 20.0, "abdomen": 0.0, "chest": 0.0, "neck": 0.0, "head": 0.0}, set()
    )
    assert max(probabilities.values()) < 0.5  # low confidence, never a confident wrong class


def test_a_field_of_view_that_cuts_the_body_is_not_placed() -> None:
    """A crop around the mediastinum: the cross-sections are the crop's, not the body's, so the coverage
    gives no opinion (instead of "Neck" from a small area) and says why."""
    whole = body_phantom([("abdomen", 40), ("chest", 200)])
    crop = CanonicalVolume(whole.voxels[:, 50:150, 40:160].copy(), whole.spacing, "axial")
    coverage = measure_coverage(crop)
    assert coverage.anatomical and coverage.probabilities == {} and coverage.label is None
    assert "field of view cuts the body" in coverage.reason


def test_a_water_phantom_shows_no_anatomy() -> None:
    """A cylinder of water in air (a CT QA phantom): a body outline, but one density, no fat, bone or lung."""
    yy, xx = np.mgrid[0:128, 0:128]
    plane = np.where((yy - 64) ** 2 + (xx - 64) ** 2 <= 50**2, 0.0, -1000.0).astype(np.float32)
    coverage = measure_coverage(CanonicalVolume(np.repeat(plane[None], 30, axis=0), (5.0, 2.0, 2.0), "axial"))
    assert not coverage.anatomical and "phantom" in coverage.reason
