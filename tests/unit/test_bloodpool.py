"""The blood-pool contrast estimator on synthetic phantoms with known HU and geometry."""

from __future__ import annotations

import numpy as np
import pytest

from node.classify.bloodpool import contrast_probability, measure_blood
from tests.phantoms import Disc, spine_position, trunk_phantom


def test_unenhanced_aorta_is_not_contrast() -> None:
    result = measure_blood(trunk_phantom(aorta_hu=40.0))
    assert result.found, result.reason
    assert result.probability_yes is not None and result.probability_yes < 0.05
    assert abs(result.evidence["hu_median"] - 40.0) < 10
    assert result.evidence["structure"] == "aorta-like tube"
    assert 20 <= result.evidence["diameter_mm"] <= 28


def test_enhanced_aorta_is_contrast_with_its_evidence() -> None:
    result = measure_blood(trunk_phantom(aorta_hu=250.0))
    assert result.found and result.probability_yes is not None and result.probability_yes > 0.99
    ev = result.evidence
    assert abs(ev["hu_median"] - 250.0) < 10
    assert 30 <= ev["anterior_mm"] <= 45 and 10 <= ev["left_mm"] <= 25  # where the phantom put it
    assert ev["length_mm"] >= 150
    assert "aorta-like tube" in result.reason and "250 HU" in result.reason


@pytest.mark.parametrize(("hu", "expected"), [(30.0, 0.0), (60.0, 0.05), (95.0, 0.5), (130.0, 0.95)])
def test_contrast_probability_follows_the_physics_of_blood(hu: float, expected: float) -> None:
    assert contrast_probability(hu) == pytest.approx(expected, abs=0.03)


def test_oral_contrast_in_a_bowel_loop_does_not_make_it_contrast() -> None:
    """A pelvis with oral contrast in the bowel and none in the vessels is 'no'."""
    y, x = spine_position()
    bowel = (
        Disc(y - 120.0, x - 60.0, 15.0, 400.0),  # far anterior, right
        Disc(y - 100.0, x + 80.0, 12.0, 350.0, z0=10, z1=30),
    )
    result = measure_blood(trunk_phantom(aorta_hu=45.0, extra=bowel))
    assert result.found and result.probability_yes is not None and result.probability_yes < 0.05


def test_calcium_and_metal_are_not_blood() -> None:
    y, x = spine_position()
    specks = (Disc(y - 38.0, x + 18.0 + 11.0, 2.0, 1200.0), Disc(y - 80.0, x, 4.0, 3000.0))
    result = measure_blood(trunk_phantom(aorta_hu=40.0, extra=specks))
    assert result.found and result.probability_yes is not None and result.probability_yes < 0.05


def test_no_vessel_means_no_answer() -> None:
    result = measure_blood(trunk_phantom(aorta_hu=None))
    assert not result.found and result.probability_yes is None
    assert result.reason


def test_a_head_without_spine_has_no_blood_pool() -> None:
    yy, xx = np.mgrid[0:200, 0:200]
    head = ((yy - 100) ** 2 + (xx - 100) ** 2 <= 80**2).astype(np.float32) * 1040.0 - 1000.0
    skull = ((yy - 100) ** 2 + (xx - 100) ** 2 <= 80**2) & ((yy - 100) ** 2 + (xx - 100) ** 2 >= 74**2)
    head[skull] = 800.0
    from node.classify.canonical import CanonicalVolume

    result = measure_blood(CanonicalVolume(np.repeat(head[None], 30, axis=0), (5.0, 1.0, 1.0), "axial"))
    assert not result.found
