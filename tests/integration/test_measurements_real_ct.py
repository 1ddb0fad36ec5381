"""The anatomical measurements on real CT series of ../shared/data/ct, against labels set from the images.

Blood pool: the measured HU of the aorta-like tube says the IV contrast that was read off the images (the
manifest's notes give the aortic ROI of each). Coverage: the landmarks a series reaches make its body part.
These thresholds were set from anatomy and physics and checked on these same series: the figures on
patients the node never saw are in docs/model-card.md.
"""

from __future__ import annotations

import pytest

from node.classify.measurements import MEASURE_IN_PLANE, measure
from node.volume import Volume, assemble_series
from tests.peers import unpack_ct

CASES = {
    # series: (body part, contrast, blood HU range when a vessel is found)
    "lidc0001_full": ("Chest", "yes", (250, 500)),
    "nsclcrg_r01001_chest": ("Chest", "yes", (150, 260)),
    "lung1_002_chest": ("Chest", "yes", (120, 200)),
    "pancctcb001_abdomen": ("Abdomen", "yes", (200, 350)),
    "lung1_001_chest": ("Chest", "no", (10, 70)),
    "4dlung113_chest": ("Chest", "no", (10, 70)),
    "ctcolon0518_abdpelvis": ("Abdomen-pelvis", "no", (10, 80)),
    "cptacgbm_c3n01192_head": ("Head", "no", None),
    "fltbreast001_petct_upper": ("Head and neck", "no", None),
}


def volume_of(name: str) -> Volume:
    files = sorted(unpack_ct(name).glob("*.dcm"))
    volume = assemble_series(files, max_in_plane=MEASURE_IN_PLANE)
    assert isinstance(volume, Volume), volume
    return volume


@pytest.mark.parametrize("name", sorted(CASES))
def test_measurements_on_real_series(name: str) -> None:
    body_part, contrast, hu_range = CASES[name]
    measured = measure(volume_of(name))
    assert measured.anatomical
    assert measured.coverage.label == body_part, measured.coverage.as_audit()
    blood = measured.blood
    assert blood is not None
    if hu_range is None:
        assert not blood.found, blood.reason  # no vessel beside a spine in a head: the other sources decide
        return
    assert blood.found, blood.reason
    low, high = hu_range
    assert low <= blood.evidence["hu_median"] <= high, blood.evidence
    assert blood.probability_yes is not None
    assert (blood.probability_yes > 0.5) == (contrast == "yes")
    facts = measured.as_facts()
    assert facts["blood.found"] is True and facts["coverage.body_part"] == body_part


def test_the_breast_tagged_series_runs_from_the_lung_apex_to_the_vertex() -> None:
    coverage = measure(volume_of("fltbreast001_petct_upper")).coverage
    assert [name for name, _ in coverage.landmarks] == ["lung apex", "skull base", "vertex"]
    assert (coverage.covers_from, coverage.covers_to) == ("chest", "head")
