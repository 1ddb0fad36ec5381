"""Load-time checks of a condition on an analysis field against the field's type (node.classify.fields).

A label takes text from its vocabulary (with a suggestion for a typo), a number takes numbers within its
bounds, a boolean takes true or false, text takes text. An operator that cannot apply to the type is an
error too, so that a rule that could never be true is refused when the file loads, not found in an audit.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from node.classify.fields import AnalysisField

TEXT_ONLY_OPERATORS = ("regex", "contains")
NUMERIC_OPERATORS = ("lt", "le", "gt", "ge", "range")
VALUE_OPERATORS = ("equals", "not_equals", "in", "contains", "regex", *NUMERIC_OPERATORS)


def check_operand(spec: AnalysisField, op: str, value: Any, ignore_case: bool = False) -> None:
    """ValueError when `op: value` does not fit the analysis field `spec`."""
    if op not in VALUE_OPERATORS:
        return
    values = list(value) if op == "in" else [value]
    if spec.kind == "label":
        _check_label(spec, op, values, ignore_case)
    elif spec.kind == "number":
        _check_number(spec, op, values)
    elif spec.kind == "boolean":
        _check_boolean(spec, op, values)
    else:
        _check_text(spec, op, values)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _not_numeric(spec: AnalysisField, op: str, instead: str) -> ValueError:
    article = "a " if spec.kind in ("label", "boolean") else ""
    return ValueError(f"{op!r} compares numbers and {spec.name} is {article}{spec.kind}; {instead}")


def _check_label(spec: AnalysisField, op: str, values: list[Any], ignore_case: bool) -> None:
    labels = ", ".join(repr(v) for v in spec.vocabulary)
    if op in NUMERIC_OPERATORS:
        raise _not_numeric(spec, op, "use equals, in or regex with its labels")
    if op == "regex":
        flags = re.IGNORECASE if ignore_case else 0
        if not any(re.fullmatch(values[0], label, flags) for label in spec.vocabulary):
            raise ValueError(
                f"regex {values[0]!r} matches no label of {spec.name}, so the condition is never true; "
                f"its labels are {labels}"
            )
        return
    problems = []
    for value in values:
        if not isinstance(value, str):
            problems.append(
                f"{spec.name} is a label, not {'a boolean' if isinstance(value, bool) else 'a number'} "
                f"({_show(value)}): write one of {labels} as text"
            )
        elif not _is_label(value, spec.vocabulary, ignore_case):
            problems.append(_label_problem(spec, value, ignore_case, labels))
    if problems:
        raise ValueError("; ".join(problems))


def _is_label(value: str, vocabulary: tuple[str, ...], ignore_case: bool) -> bool:
    if ignore_case:
        return value.strip().casefold() in {v.casefold() for v in vocabulary}
    return value.strip() in vocabulary


def _label_problem(spec: AnalysisField, value: str, ignore_case: bool, labels: str) -> str:
    by_case = [v for v in spec.vocabulary if v.casefold() == value.strip().casefold()]
    if by_case:  # only without ignore_case: with it a case variant is a label
        return (
            f"{value!r} is not a label of {spec.name} (did you mean {by_case[0]!r}? Labels are "
            "case-sensitive unless the condition has ignore_case: true)"
        )
    if ignore_case:
        folded = {v.casefold(): v for v in spec.vocabulary}
        close = [folded[c] for c in difflib.get_close_matches(value.casefold(), folded, n=1, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(value, spec.vocabulary, n=1, cutoff=0.6)
    if close:
        return f"{value!r} is not a label of {spec.name} (did you mean {close[0]!r}?)"
    return f"{value!r} is not a label of {spec.name}; its labels are {labels}"


def _check_number(spec: AnalysisField, op: str, values: list[Any]) -> None:
    assert spec.bounds is not None
    low, high = spec.bounds
    if op in TEXT_ONLY_OPERATORS:
        raise ValueError(
            f"{spec.name} is a {spec.type_text}: {op!r} applies to text; use lt, le, gt, ge or range"
        )
    flat = list(values[0]) if op == "range" else values
    for value in flat:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"{spec.name} is a {spec.type_text}: compare it with a number, not {_show(value)}"
            )
    outside = [v for v in flat if not low <= v <= high]
    if outside:
        written = f"[{flat[0]:g}, {flat[1]:g}]" if op == "range" else ", ".join(f"{v:g}" for v in flat)
        hint = " (a probability is a fraction: 0.9, not 90)" if spec.bounds == (0.0, 1.0) else ""
        raise ValueError(f"{op} {written} is outside {low:g} to {high:g}, the values {spec.name} takes{hint}")


def _check_boolean(spec: AnalysisField, op: str, values: list[Any]) -> None:
    if op in NUMERIC_OPERATORS:
        raise _not_numeric(spec, op, "use equals: true or equals: false")
    if op in TEXT_ONLY_OPERATORS:
        raise ValueError(f"{spec.name} is a boolean: {op!r} applies to text; use equals: true or false")
    for value in values:
        if not isinstance(value, bool):
            raise ValueError(f"{spec.name} is a boolean: write true or false, not {_show(value)}")


def _check_text(spec: AnalysisField, op: str, values: list[Any]) -> None:
    if op in NUMERIC_OPERATORS:
        raise _not_numeric(spec, op, "use equals, in or regex")
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{spec.name} is text: write the value as a string, not {_show(value)}")
