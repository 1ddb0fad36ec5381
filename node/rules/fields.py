"""Fields of routing rules: what a name in a rule refers to, and a field's value in one series.

A field is a DICOM keyword, a tag, a node field (series.*) or a name filled by the analysis step
(classifiable, prediction.*, prior.*, disagreement.*, ...: the registry node.classify.fields); see
docs/rules.md.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_dict, keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from node.classify.fields import ANALYSIS_FIELDS, ANALYSIS_NAMES, ANALYSIS_NAMESPACES, AnalysisField
from node.facts import SeriesFacts

# Fields about the series itself, known to the node (not read from the DICOM header).
NODE_FIELDS = (
    "series.instance_count",
    "series.calling_ae",
    "series.called_ae",
    "series.generation",
    # Consistency warnings (docs/rules.md): true when any instance of the series was flagged at receive.
    "consistency.sop_in_other_series",
    "consistency.series_in_other_study",
)
# Names filled by the analysis step in SeriesFacts.extra (exact names and namespaces), from its registry.
EXTRA_NAMES = ANALYSIS_NAMES
EXTRA_NAMESPACES = ANALYSIS_NAMESPACES

# Never written to the audit trail (only to an interactive dry run) even when a rule tests them.
IDENTIFYING_KEYWORDS = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "MedicalRecordLocator",
        "PatientMotherBirthName",
    }
)
REDACTED = "<redacted>"
_MAX_SHOWN = 96

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


# ---------------------------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class FieldRef:
    """Where a condition's value comes from."""

    text: str
    kind: Literal["dicom", "node", "extra"]
    tag: int | None = None
    keyword: str | None = None
    vr: str | None = None
    vm: str | None = None
    analysis: AnalysisField | None = None  # for an analysis field: its type and vocabulary

    @property
    def identifying(self) -> bool:
        return self.vr == "PN" or self.keyword in IDENTIFYING_KEYWORDS


@functools.lru_cache(maxsize=4096)
def parse_field(text: str) -> FieldRef:
    """Parse a field as written in a rule; ValueError (with a suggestion where one exists) if unknown."""
    text = text.strip()
    if text in NODE_FIELDS:
        return FieldRef(text, "node")
    spec = ANALYSIS_FIELDS.get(text)
    if spec is not None:
        return FieldRef(text, "extra", analysis=spec)
    if text.startswith(EXTRA_NAMESPACES):
        namespace = text.split(".", 1)[0] + "."
        hint = _suggestion(text, ANALYSIS_FIELDS)
        if not hint:
            names = [n for n in ANALYSIS_FIELDS if n.startswith(namespace)]
            hint = f"; the fields under {namespace!r} are {', '.join(names)}"
        raise ValueError(f"unknown analysis field {text!r}{hint}")
    match = _TAG_RE.match(text)
    if match:
        tag = int(match.group(1) + match.group(2), 16)
        keyword = keyword_for_tag(tag) or None
        vr = vm = None
        if keyword:
            vr, vm = dictionary_VR(tag), dictionary_VM(tag)
        return FieldRef(text, "dicom", tag=tag, keyword=keyword, vr=vr, vm=vm)
    if text in keyword_dict:
        tag = keyword_dict[text]
        return FieldRef(text, "dicom", tag=tag, keyword=text, vr=dictionary_VR(tag), vm=dictionary_VM(tag))
    if "." in text:
        hint = _suggestion(text, (*NODE_FIELDS, *ANALYSIS_FIELDS))
        known = ", ".join((*NODE_FIELDS, *EXTRA_NAMES, *(n + "*" for n in EXTRA_NAMESPACES)))
        raise ValueError(f"unknown field {text!r}{hint}; fields beside DICOM attributes are {known}")
    by_case = [k for k in keyword_dict if k.lower() == text.lower()]
    close = by_case or difflib.get_close_matches(text, keyword_dict.keys(), n=3, cutoff=0.8)
    if close:
        hint = " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
    else:
        hint = _suggestion(text, EXTRA_NAMES)
    raise ValueError(f"unknown DICOM keyword {text!r}{hint}; a tag may be written as (gggg,eeee)")


def _suggestion(text: str, names: Iterable[str]) -> str:
    """' (did you mean ...?)' for the closest of `names`, or ''."""
    names = list(names)
    close = [n for n in names if n.lower() == text.lower()]
    close = close or difflib.get_close_matches(text, names, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Observed:
    """A field's value in one series, normalised: a tuple of single values (several if multi-valued)."""

    kind: Literal["value", "missing", "empty", "sequence", "binary"]
    values: tuple[Any, ...] = ()
    display: Any = None

    @property
    def present(self) -> bool:
        return self.kind in ("value", "binary") or (self.kind == "sequence" and bool(self.values))


_MISSING = Observed("missing")
_EMPTY = Observed("empty", display="")


def _single(value: Any) -> Any:
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, str):
        return value.strip(" \x00")
    return value


def _from_items(items: list[Any]) -> Observed:
    values = tuple(_single(v) for v in items)
    values = tuple(v for v in values if v is not None and v != "")
    if not values:
        return _EMPTY
    shown: Any
    if len(values) == 1 and type(values[0]) in (bool, int, float):
        shown = values[0]
    else:
        shown = "\\".join(as_text(v) for v in values)
        if len(shown) > _MAX_SHOWN:
            shown = shown[:_MAX_SHOWN] + "..."
    return Observed("value", values, shown)


def _from_bytes(raw: bytes) -> Observed:
    try:
        text = raw.decode("ascii").strip(" \x00")
    except UnicodeDecodeError:
        return Observed("binary", (), f"<{len(raw)} bytes>")
    if not text:
        return _EMPTY
    if not text.isprintable():
        return Observed("binary", (), f"<{len(raw)} bytes>")
    return _from_items(text.split("\\"))


def _flag(count: int | None) -> bool | None:
    return None if count is None else count > 0


def observe(ref: FieldRef, facts: SeriesFacts) -> Observed:
    """The value of a field for a series."""
    if ref.kind == "node":
        value: Any = {
            "series.instance_count": facts.instance_count,
            "series.calling_ae": facts.calling_ae,
            "series.called_ae": facts.called_ae,
            "series.generation": facts.generation,
            "consistency.sop_in_other_series": _flag(facts.sop_uid_conflicts),
            "consistency.series_in_other_study": _flag(facts.study_uid_conflicts),
        }[ref.text]
        return _MISSING if value is None else _from_items([value])
    if ref.kind == "extra":
        value = facts.extra.get(ref.text)
        if value is None:
            return _MISSING
        return _from_items(list(value) if isinstance(value, (list, tuple)) else [value])
    assert ref.tag is not None
    container: Any = facts.attributes
    if ref.tag >> 16 == 0x0002:
        container = getattr(container, "file_meta", None)
        if container is None:
            return _MISSING
    if ref.tag not in container:
        return _MISSING
    elem = container[ref.tag]
    value = elem.value
    if elem.VR == "SQ":
        return Observed("sequence", tuple(value or ()), f"<sequence of {len(value or ())} items>")
    if value is None:
        return _EMPTY
    if isinstance(value, (bytes, bytearray)):
        return _from_bytes(bytes(value))
    if isinstance(value, (MultiValue, list, tuple)):
        return _from_items(list(value))
    return _from_items([value])


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(number) else number
