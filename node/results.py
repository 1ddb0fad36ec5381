"""The classification results a destination receives: frozen into its delivery plan by the route step.

The write-back (docs/writeback.md) and the Structured Report (docs/structured-report.md) are built at
delivery time from this dictionary alone, never from a later re-classification, so that what a copy
carries is what the decision was made on. It is the analysis facts (the flat `prediction.*`, `prior.*`,
`image.*`, `blood.*`, `coverage.*`, `disagreement.*` fields the rules see) plus the parts of the
analysis audit record that explain them:

    {"facts": {...}, "final": {task: {label, confidence, source, low_confidence, sources}},
     "prior": {task: {label, confidence, source, evidence}}, "measurements": {coverage, blood} | None,
     "disagreement": {task: {...}}, "model": "ct-starter@0.2.0", "summary": "..."}
"""

from __future__ import annotations

from typing import Any

from node.analysis import AnalysisResult

RESULTS_VERSION = 1
_AUDIT_PARTS = ("final", "prior", "measurements", "disagreement", "model", "not_classifiable")


def frozen_results(analysis: AnalysisResult) -> dict[str, Any] | None:
    """The results to freeze into a plan; None when nothing was analysed (no classifier configured)."""
    if "classifiable" not in analysis.facts:
        return None
    out: dict[str, Any] = {
        "version": RESULTS_VERSION,
        "facts": dict(analysis.facts),
        "summary": analysis.summary,
    }
    for part in _AUDIT_PARTS:
        if part in analysis.audit:
            out[part] = analysis.audit[part]
    return out
