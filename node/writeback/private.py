"""The node's private block: the classification in the forwarded copies (docs/private-dictionary.md).

One private creator, ``DICOM-NODE 1.0``, in group 0x0077: an odd group no vendor in pydicom's private
dictionary uses (0x0073, the other candidate, is taken by Agfa and Stentor), so a dcmdump of the copy does
not mix our elements with a vendor's. The block is reserved at (0077,0010) when that slot is free, else at
the next free one (PS3.5 7.8.1), so the element tags are (0077,xxEE) with EE the offsets below.

ELEMENTS is the one table: the code writes from it, docs/private-dictionary.md lists it (a test keeps
them in step) and `register()` gives it to pydicom so that reading a copy, even Implicit VR, shows names
and proper VRs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import add_private_dict_entries
from pydicom.dataset import Dataset

from node.classify.labels import BODY_PART_TERMS, TASKS

PRIVATE_CREATOR = "DICOM-NODE 1.0"
PRIVATE_GROUP = 0x0077
# Version of the layout below; bumped when an element changes meaning.
LAYOUT_VERSION = "1"
# The first element offset of each task's elements (the offsets within are TASK_FIELDS).
TASK_BASE = {"body_part": 0x10, "axis": 0x20, "contrast": 0x30}

_LO = 64  # characters (PS3.5 6.2)
_LT = 10240


@dataclass(frozen=True)
class Element:
    offset: int  # the low byte of the element number
    keyword: str
    vr: str
    vm: str
    meaning: str


_SERIES = (
    Element(0x01, "NodeBlockVersion", "CS", "1", "version of this layout (1)"),
    Element(0x02, "ModelName", "LO", "1", "classifier package name (e.g. ct-starter)"),
    Element(0x03, "ModelVersion", "LO", "1", "classifier package version (e.g. 0.2.0)"),
    Element(0x04, "Classifiable", "CS", "1", "YES when the image sources ran, NO when only attributes did"),
    Element(0x05, "NotClassifiableCode", "LO", "1", "why not (e.g. single_slice, no_anatomy); only with NO"),
    Element(0x06, "NotClassifiableReason", "LT", "1", "the reason in words; only with NO"),
    Element(0x07, "BodyPartExaminedAction", "CS", "1",
            "what the node did with Body Part Examined in this copy: WRITTEN, KEPT (the sender's value "
            "stayed), DOUBTFUL (low confidence or disputed, not written), NOT_CLASSIFIABLE"),
    Element(0x08, "AnyDisagreement", "CS", "1", "YES when prior and image disagree on any task"),
    Element(0x09, "AnyLowConfidence", "CS", "1", "YES when any task's final answer is low-confidence"),
    Element(0x0A, "ResultsSummary", "LT", "1", "one line: each task's answer, confidence and main source"),
)
# Per task, at TASK_BASE[task] + offset.
TASK_FIELDS = (
    (0x0, "Label", "LO", "the final label (the classifier's vocabulary, docs/classification.md)"),
    (0x1, "Confidence", "DS", "its fused probability, 0 to 1"),
    (0x2, "Source", "LO", "the source that weighed most (prior, image, coverage, blood, geometry)"),
    (0x3, "LowConfidence", "CS", "YES when below the task's confidence threshold"),
    (0x4, "Disagreement", "CS", "YES when the prior (the tags) and an image source disagree"),
    (0x5, "DisagreementWith", "LO", "the source that conflicts with the prior; only with a disagreement"),
    (0x6, "PriorLabel", "LO", "the prior's label from the DICOM attributes (unknown when none)"),
    (0x7, "PriorConfidence", "DS", "the prior's confidence, 0 to 1"),
    (0x8, "PriorSource", "LO", "the attribute the prior came from (e.g. SeriesDescription, none)"),
    (0x9, "ImageLabel", "LO", "the network's label; absent when not classifiable"),
    (0xA, "ImageConfidence", "DS", "the network's probability for it, 0 to 1"),
)
_TASK_TITLES = {"body_part": "BodyPart", "axis": "Axis", "contrast": "Contrast"}
_MEASURED = (
    Element(0x1B, "BodyPartDefinedTerm", "CS", "1",
            "the Body Part Examined defined term of the final body part (whether written or not)"),
    Element(0x40, "CoverageAnatomical", "CS", "1", "YES when the slices show a patient"),
    Element(0x41, "CoverageFrom", "LO", "1",
            "body segment at the feet end (legs, pelvis, abdomen, chest, neck, head)"),
    Element(0x42, "CoverageTo", "LO", "1", "body segment at the head end"),
    Element(0x43, "CoverageLandmarkNames", "LO", "1-n", "landmarks found, feet to head (e.g. iliac crest)"),
    Element(0x44, "CoverageLandmarkPositions", "DS", "1-n",
            "their positions, mm from the series' feet end (same order as the names)"),
    Element(0x45, "CoverageBodyPart", "LO", "1", "the body part the coverage alone suggests"),
    Element(0x46, "CoverageBodyPartConfidence", "DS", "1", "its probability, 0 to 1"),
    Element(0x50, "BloodPoolFound", "CS", "1", "YES when a blood-pool structure was measured"),
    Element(0x51, "BloodPoolHU", "DS", "1", "its median attenuation, HU"),
    Element(0x52, "BloodPoolStructure", "LO", "1", "what it is (e.g. aorta-like tube)"),
    Element(0x53, "BloodPoolWhere", "LT", "1", "where and how it was measured, in words"),
    Element(0x54, "BloodPoolRange", "DS", "2", "its extent along the series, mm from the first slice"),
    Element(0x55, "BloodContrastProbability", "DS", "1", "probability of IV contrast from the blood HU"),
    Element(0x60, "ResultsJSON", "UT", "1",
            "the frozen results (final, prior, disagreement, measurements, model) as compact JSON"),
)


def _task_elements() -> tuple[Element, ...]:
    return tuple(
        Element(TASK_BASE[task] + off, f"{_TASK_TITLES[task]}{name}", vr, "1", f"{task}: {meaning}")
        for task in TASK_BASE
        for off, name, vr, meaning in TASK_FIELDS
    )


ELEMENTS: tuple[Element, ...] = tuple(
    sorted((*_SERIES, *_task_elements(), *_MEASURED), key=lambda e: e.offset)
)
BY_KEYWORD: dict[str, Element] = {e.keyword: e for e in ELEMENTS}


def register() -> None:
    """Tell pydicom our dictionary (names and VRs; needed to read Implicit VR copies back). Idempotent."""
    add_private_dict_entries(
        PRIVATE_CREATOR,
        {(PRIVATE_GROUP << 16) | 0x1000 | e.offset: (e.vr, e.vm, e.keyword, "") for e in ELEMENTS},
    )


def _yes_no(value: object) -> str:
    return "YES" if value else "NO"


def _ds(value: object) -> str | None:
    """A DS string (at most 16 characters) for a number, None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{float(value):.6g}"


def _text(value: object, limit: int = _LO) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\\", "/")  # a backslash would split the value (VM)
    return text[:limit] if text else None


def _model(results: Mapping[str, Any]) -> tuple[str | None, str | None]:
    model = results.get("model") or results.get("facts", {}).get("classification.model")
    if not model:
        return None, None
    name, _, version = str(model).partition("@")
    return name, version or None


def block_values(results: Mapping[str, Any], body_part_action: str) -> dict[str, Any]:
    """Keyword -> value of every element to write for these results (None values are left out).

    Not classifiable: only what is meaningful then, i.e. the flag and reason, the prior and the model;
    no final answers (they are the prior again), no image or measurements.
    """
    facts: Mapping[str, Any] = results.get("facts") or {}
    final: Mapping[str, Any] = results.get("final") or {}
    disagreement: Mapping[str, Any] = results.get("disagreement") or {}
    classifiable = bool(facts.get("classifiable", False))
    name, version = _model(results)
    out: dict[str, Any] = {
        "NodeBlockVersion": LAYOUT_VERSION,
        "ModelName": _text(name),
        "ModelVersion": _text(version),
        "Classifiable": _yes_no(classifiable),
        "BodyPartExaminedAction": body_part_action,
    }
    for task in TASKS:
        title = _TASK_TITLES[task]
        out[f"{title}PriorLabel"] = _text(facts.get(f"prior.{task}"))
        out[f"{title}PriorConfidence"] = _ds(facts.get(f"prior.{task}_confidence"))
        out[f"{title}PriorSource"] = _text(facts.get(f"prior.{task}_source"))
    if not classifiable:
        nc = results.get("not_classifiable") or {}
        out["NotClassifiableCode"] = _text(nc.get("code") or facts.get("classification.code"))
        out["NotClassifiableReason"] = _text(nc.get("reason") or facts.get("classification.reason"), _LT)
        return {k: v for k, v in out.items() if v is not None}

    out["AnyDisagreement"] = _yes_no(facts.get("disagreement.any"))
    out["AnyLowConfidence"] = _yes_no(facts.get("prediction.low_confidence"))
    out["ResultsSummary"] = _text(results.get("summary"), _LT)
    for task in TASKS:
        title = _TASK_TITLES[task]
        answer = final.get(task) or {}
        label = answer.get("label", facts.get(f"prediction.{task}"))
        out[f"{title}Label"] = _text(label)
        out[f"{title}Confidence"] = _ds(answer.get("confidence", facts.get(f"prediction.{task}_confidence")))
        out[f"{title}Source"] = _text(answer.get("source", facts.get(f"prediction.{task}_source")))
        low = answer.get("low_confidence", facts.get(f"prediction.{task}_low_confidence"))
        out[f"{title}LowConfidence"] = _yes_no(low)
        disputed = bool(facts.get(f"disagreement.{task}")) or task in disagreement
        out[f"{title}Disagreement"] = _yes_no(disputed)
        if disputed:
            out[f"{title}DisagreementWith"] = _text((disagreement.get(task) or {}).get("with"))
        out[f"{title}ImageLabel"] = _text(facts.get(f"image.{task}"))
        out[f"{title}ImageConfidence"] = _ds(facts.get(f"image.{task}_confidence"))
    out["BodyPartDefinedTerm"] = BODY_PART_TERMS.get(str(out.get("BodyPartLabel")))
    out.update(_measurement_values(results.get("measurements") or {}))
    out["ResultsJSON"] = json.dumps(
        {k: results.get(k) for k in ("model", "final", "prior", "disagreement", "measurements")},
        separators=(",", ":"),
        sort_keys=True,
    )
    return {k: v for k, v in out.items() if v is not None and v != []}


def _measurement_values(measurements: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    coverage = measurements.get("coverage")
    if isinstance(coverage, Mapping):
        out["CoverageAnatomical"] = _yes_no(coverage.get("anatomical"))
        out["CoverageFrom"] = _text(coverage.get("from"))
        out["CoverageTo"] = _text(coverage.get("to"))
        landmarks = [m for m in coverage.get("landmarks") or [] if isinstance(m, Mapping)]
        names = [_text(m.get("name")) for m in landmarks]
        positions = [_ds(m.get("z_mm")) for m in landmarks]
        if landmarks and None not in names and None not in positions:
            out["CoverageLandmarkNames"] = names
            out["CoverageLandmarkPositions"] = positions
        out["CoverageBodyPart"] = _text(coverage.get("label"))
        probabilities = coverage.get("probabilities") or {}
        out["CoverageBodyPartConfidence"] = _ds(probabilities.get(coverage.get("label")))
    blood = measurements.get("blood")
    if isinstance(blood, Mapping):
        out["BloodPoolFound"] = _yes_no(blood.get("found"))
        if blood.get("found"):
            out["BloodPoolHU"] = _ds(blood.get("hu_median"))
            out["BloodPoolStructure"] = _text(blood.get("structure"))
            out["BloodPoolWhere"] = _text(blood.get("reason"), _LT)
            z = blood.get("z_mm")
            if isinstance(z, list) and len(z) == 2 and None not in (zs := [_ds(v) for v in z]):
                out["BloodPoolRange"] = zs
            out["BloodContrastProbability"] = _ds(blood.get("probability_yes"))
    return out


def add_block(ds: Dataset, values: Mapping[str, Any]) -> int:
    """Write `values` (keyword -> value, from block_values) as our private block into `ds`.

    An existing block of ours (a copy of a copy) is replaced, never mixed with. Returns the block's
    reserved element (e.g. 0x10, so tags are (0077,10EE)).
    """
    remove_block(ds)
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    for keyword, value in values.items():
        element = BY_KEYWORD[keyword]
        block.add_new(element.offset, element.vr, value)
    return block.block_start >> 8


def remove_block(ds: Dataset) -> None:
    """Remove our private creator and its elements, if present."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return
    start = (PRIVATE_GROUP << 16) | block.block_start
    for tag in [t for t in ds.keys() if start <= int(t) <= start + 0xFF]:
        del ds[tag]
    del ds[(PRIVATE_GROUP << 16) | (block.block_start >> 8)]


def read_block(ds: Dataset) -> dict[str, Any]:
    """Keyword -> value of our private block in `ds` ({} when there is none): for tests and tools."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return {}
    out: dict[str, Any] = {}
    for element in ELEMENTS:
        if element.offset in block:
            out[element.keyword] = block[element.offset].value
    return out


def dcmtk_dictionary() -> str:
    """The block as a dcmtk data dictionary (deploy/dcmtk/dicom-node.dic): with it in DCMDICTPATH,
    dcmdump prints our element names instead of "Unknown Tag & Data"."""
    lines = [
        f"# dcmtk data dictionary of the DICOM node's private block ({PRIVATE_CREATOR}); generated from",
        "# node/writeback/private.py ELEMENTS (docs/private-dictionary.md). Use:",
        "#   DCMDICTPATH=/usr/share/libdcmtk17/dicom.dic:/path/to/dicom-node.dic dcmdump FILE",
    ]
    for e in ELEMENTS:
        tag = f'({PRIVATE_GROUP:04X},"{PRIVATE_CREATOR}",{e.offset:02X})'
        lines.append(f"{tag}\t{e.vr}\t{e.keyword}\t{e.vm}\tPrivateTag")
    return "\n".join(lines) + "\n"


def markdown_rows() -> list[str]:
    """The table rows of docs/private-dictionary.md (tag with the block at 0x10, keyword, VR, VM, meaning)."""
    return [
        f"| ({PRIVATE_GROUP:04X},10{e.offset:02X}) | `{e.keyword}` | {e.vr} | {e.vm} | {e.meaning} |"
        for e in ELEMENTS
    ]
