"""The anatomical measurements of one volume: its coverage (body part) and its blood pool (IV contrast).

Both work on the volume turned to the patient's axes (node.classify.canonical) and need no trained model;
each gives fusion an `Opinion` with its evidence, the rules a few facts, and the audit its full account.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from node.classify.bloodpool import BloodPool, measure_blood
from node.classify.canonical import CanonicalVolume, canonical
from node.classify.coverage import Coverage, measure_coverage
from node.classify.fusion import Opinion
from node.volume import Volume

# A measured probability is never taken as certainty (an explicit tag then still weighs).
MAX_MEASURED_PROBABILITY = 0.98
# Slices are read for the measurements at least this fine in-plane (vessels are 10-40 mm across).
MEASURE_IN_PLANE = 256


@dataclass(frozen=True)
class Measurements:
    coverage: Coverage
    blood: BloodPool | None  # None when the volume shows no anatomy (not measured)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def anatomical(self) -> bool:
        return self.coverage.anatomical

    def opinions(self) -> dict[str, Opinion]:
        out: dict[str, Opinion] = {}
        if self.coverage.probabilities:
            out["body_part"] = Opinion("coverage", self.coverage.probabilities, self.coverage.reason)
        if self.blood is not None and self.blood.probability_yes is not None:
            p = min(max(self.blood.probability_yes, 1 - MAX_MEASURED_PROBABILITY), MAX_MEASURED_PROBABILITY)
            out["contrast"] = Opinion("blood", {"yes": p, "no": 1.0 - p}, self.blood.reason)
        return out

    def as_facts(self) -> dict[str, Any]:
        blood = self.blood
        found = blood is not None and blood.found
        label = self.coverage.label
        return {
            "blood.found": found,
            "blood.hu": blood.evidence.get("hu_median") if blood is not None and found else None,
            "blood.contrast_probability": (
                round(blood.probability_yes, 4)
                if blood is not None and blood.probability_yes is not None
                else None
            ),
            "coverage.from": self.coverage.covers_from,
            "coverage.to": self.coverage.covers_to,
            "coverage.body_part": label if label is not None else "unknown",
            "coverage.body_part_confidence": (
                round(self.coverage.probabilities[label], 4) if label is not None else 0.0
            ),
        }

    def as_audit(self) -> dict[str, Any]:
        return {
            "coverage": self.coverage.as_audit(),
            "blood": self.blood.as_audit() if self.blood is not None else None,
        }


def measure(volume: Volume) -> Measurements:
    return measure_turned(canonical(volume))


def measure_turned(turned: CanonicalVolume) -> Measurements:
    started = time.perf_counter()
    coverage = measure_coverage(turned)
    covered = time.perf_counter()
    skull_base = dict(coverage.landmarks).get("skull base")
    blood = measure_blood(turned, below_mm=skull_base) if coverage.anatomical else None
    done = time.perf_counter()
    return Measurements(
        coverage,
        blood,
        {"coverage": round((covered - started) * 1000, 1), "blood": round((done - covered) * 1000, 1)},
    )
