"""Conditions of routing rules: operators, combinators (all, any, not), and how they are evaluated.

A condition is data (a mapping in the rules YAML), never code. Every condition evaluates to a trace that
says what was compared with what, and why it came out true or false; see docs/rules.md for the semantics.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from node.facts import SeriesFacts
from node.rules.field_types import VALUE_OPERATORS as FIELD_TYPE_OPERATORS
from node.rules.field_types import check_operand
from node.rules.fields import (
    REDACTED,
    FieldRef,
    Observed,
    as_number,
    as_text,
    observe,
    parse_field,
)

TEXT_OPERATORS = ("equals", "not_equals", "in", "regex", "contains")
NUMERIC_OPERATORS = ("lt", "le", "gt", "ge", "range")
PRESENCE_OPERATORS = ("exists", "missing")
OPERATORS = TEXT_OPERATORS + NUMERIC_OPERATORS + PRESENCE_OPERATORS
LEAF_KEYS = ("attribute", "ignore_case", *OPERATORS)
# Spellings from other tools, for "did you mean" hints.
_OPERATOR_SPELLINGS = {
    "eq": "equals",
    "equal": "equals",
    "is": "equals",
    "ne": "not_equals",
    "neq": "not_equals",
    "not_equal": "not_equals",
    "gte": "ge",
    "lte": "le",
    "match": "regex",
    "matches": "regex",
    "one_of": "in",
    "between": "range",
    "present": "exists",
    "field": "attribute",
    "tag": "attribute",
    "keyword": "attribute",
    "case_insensitive": "ignore_case",
}

# ---------------------------------------------------------------------------------------------- traces


@dataclass(frozen=True)
class LeafTrace:
    """One attribute condition, evaluated."""

    field: str
    op: str
    expected: Any
    actual: Any
    result: bool
    reason: str
    identifying: bool = False

    def to_audit(self, redact: bool = True) -> dict[str, Any]:
        actual = REDACTED if redact and self.identifying and self.actual is not None else self.actual
        return {
            "field": self.field,
            "op": self.op,
            "expected": self.expected,
            "actual": actual,
            "result": self.result,
            "reason": self.reason,
        }

    def render(self, indent: str) -> list[str]:
        actual = "missing" if self.actual is None else show(self.actual)
        verdict = "true " if self.result else "false"
        expected = show(self.expected)
        return [f"{indent}[{verdict}] {self.field} {self.op} {expected}: actual {actual}; {self.reason}"]


def show(value: Any) -> str:
    """A value as a person reads it in a rules file: strings quoted, backslashes not doubled."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class GroupTrace:
    """An all / any / not combinator, evaluated (every child is evaluated, for a complete explanation)."""

    kind: Literal["all", "any", "not"]
    result: bool
    children: tuple[ConditionTrace, ...]

    def to_audit(self, redact: bool = True) -> dict[str, Any]:
        return {self.kind: [c.to_audit(redact) for c in self.children], "result": self.result}

    def render(self, indent: str) -> list[str]:
        verdict = "true " if self.result else "false"
        lines = [f"{indent}[{verdict}] {self.kind}:"]
        for child in self.children:
            lines.extend(child.render(indent + "    "))
        return lines


ConditionTrace = LeafTrace | GroupTrace


# ---------------------------------------------------------------------------------------------- models

Scalar = StrictStr | StrictBool | StrictInt | StrictFloat
Number = StrictInt | StrictFloat


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _reject_other_keys(data: Any, key: str) -> Any:
    if isinstance(data, dict):
        others = [k for k in data if k != key]
        if others:
            raise ValueError(
                f"{key!r} takes no other keys beside it, found {', '.join(map(repr, others))}; "
                "nest the conditions inside all/any instead"
            )
    return data


class AllCondition(_Model):
    """True when every condition in the list is true."""

    all_: list[Condition] = Field(alias="all", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _alone(cls, data: Any) -> Any:
        return _reject_other_keys(data, "all")

    def evaluate(self, facts: SeriesFacts) -> GroupTrace:
        children = tuple(c.evaluate(facts) for c in self.all_)
        return GroupTrace("all", all(c.result for c in children), children)


class AnyCondition(_Model):
    """True when at least one condition in the list is true."""

    any_: list[Condition] = Field(alias="any", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _alone(cls, data: Any) -> Any:
        return _reject_other_keys(data, "any")

    def evaluate(self, facts: SeriesFacts) -> GroupTrace:
        children = tuple(c.evaluate(facts) for c in self.any_)
        return GroupTrace("any", any(c.result for c in children), children)


class NotCondition(_Model):
    """True when the condition is false (a missing attribute makes most conditions false, so not -> true)."""

    not_: Condition = Field(alias="not")

    @model_validator(mode="before")
    @classmethod
    def _alone(cls, data: Any) -> Any:
        return _reject_other_keys(data, "not")

    def evaluate(self, facts: SeriesFacts) -> GroupTrace:
        child = self.not_.evaluate(facts)
        return GroupTrace("not", not child.result, (child,))


class AttributeCondition(_Model):
    """One field, one operator: `{attribute: Modality, equals: CT}`."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": [op]} for op in OPERATORS]})

    attribute: str = Field(
        description="DICOM keyword, tag (gggg,eeee), or node field (series.*, prediction.*...)"
    )
    # Before the operators, so that their validators see it.
    ignore_case: bool = Field(False, description="text operators compare without regard to case")
    equals: Scalar | None = None
    not_equals: Scalar | None = None
    in_: list[Scalar] | None = Field(None, alias="in", min_length=1)
    regex: str | None = Field(None, description="Python regular expression, must match the whole value")
    contains: Scalar | None = Field(None, description="true when any one value of the attribute equals this")
    exists: bool | None = None
    missing: bool | None = None
    lt: Number | None = None
    le: Number | None = None
    gt: Number | None = None
    ge: Number | None = None
    range: tuple[Number, Number] | None = Field(None, description="[low, high], both inclusive")

    _ref: FieldRef = PrivateAttr()
    _pattern: re.Pattern[str] | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _one_operator(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = [k for k in data if k not in LEAF_KEYS]
        problems = []
        for key in unknown:
            close = [_OPERATOR_SPELLINGS[key]] if key in _OPERATOR_SPELLINGS else []
            close = close or difflib.get_close_matches(str(key), LEAF_KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown operator {key!r}{hint}")
        if problems:
            raise ValueError("; ".join(problems) + f"; operators are {', '.join(OPERATORS)}")
        ops = [k for k in data if k in OPERATORS]
        if not ops:
            raise ValueError(f"no operator: add one of {', '.join(OPERATORS)}")
        if len(ops) > 1:
            raise ValueError(
                f"one operator per condition, found {' and '.join(ops)}; combine conditions with all/any"
            )
        if data[ops[0]] is None:
            raise ValueError(f"operator {ops[0]!r} needs a value")
        return data

    @field_validator("attribute")
    @classmethod
    def _known_field(cls, value: str) -> str:
        parse_field(value)
        return value.strip()

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
        return value

    @field_validator(*(op if op != "in" else "in_" for op in FIELD_TYPE_OPERATORS))
    @classmethod
    def _fits_the_field(cls, value: Any, info: ValidationInfo) -> Any:
        """On an analysis field the value must fit its type and vocabulary (node.classify.fields)."""
        attribute = info.data.get("attribute")
        if value is None or attribute is None:  # no value, or the attribute is already an error
            return value
        spec = parse_field(attribute).analysis
        if spec is not None:
            op = "in" if info.field_name == "in_" else str(info.field_name)
            check_operand(spec, op, value, ignore_case=bool(info.data.get("ignore_case", False)))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AttributeCondition:
        op, expected = self.operator
        ref = parse_field(self.attribute)
        if self.ignore_case and op not in TEXT_OPERATORS:
            raise ValueError(f"ignore_case applies only to {', '.join(TEXT_OPERATORS)}, not to {op!r}")
        if op == "range" and expected[0] > expected[1]:
            raise ValueError(f"range low {expected[0]} is above high {expected[1]}")
        if ref.vr == "SQ" and op not in PRESENCE_OPERATORS:
            raise ValueError(f"{ref.text} is a sequence: only exists/missing apply to it")
        if op == "contains" and ref.vm == "1":
            raise ValueError(
                f"'contains' tests the values of a multi-valued attribute and {ref.text} has "
                f"one value; for a substring use regex: '.*{expected}.*'"
            )
        self._ref = ref
        if op == "regex":
            self._pattern = re.compile(expected, re.IGNORECASE if self.ignore_case else 0)
        return self

    @property
    def operator(self) -> tuple[str, Any]:
        for op in OPERATORS:
            value = getattr(self, "in_" if op == "in" else op)
            if value is not None:
                return op, value
        raise AssertionError("validated condition without an operator")

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, facts: SeriesFacts) -> LeafTrace:
        op, expected = self.operator
        obs = observe(self._ref, facts)
        result, reason = self._decide(op, expected, obs)
        shown_expected = list(expected) if isinstance(expected, (list, tuple)) else expected
        actual = obs.display if obs.kind != "missing" else None
        return LeafTrace(self._ref.text, op, shown_expected, actual, result, reason, self._ref.identifying)

    def _text(self, value: Any) -> str:
        text = as_text(value)
        return text.casefold() if self.ignore_case else text

    def _equal(self, obs: Observed, expected: Any) -> tuple[bool, str | None]:
        """Whether the value equals `expected`; a reason when the comparison could not be made."""
        if isinstance(expected, bool):
            if len(obs.values) == 1 and isinstance(obs.values[0], bool):
                return obs.values[0] is expected, None
            return False, "not a boolean"
        if isinstance(expected, (int, float)):
            if len(obs.values) != 1:
                return False, f"{len(obs.values)} values; a number compares with one value"
            number = as_number(obs.values[0])
            if number is None:
                return False, f"{as_text(obs.values[0])!r} is not a number"
            return number == float(expected), None
        joined = "\\".join(self._text(v) for v in obs.values)
        return joined == self._text(expected), None

    def _decide(self, op: str, expected: Any, obs: Observed) -> tuple[bool, str]:
        if op in PRESENCE_OPERATORS:
            want_present = expected if op == "exists" else not expected
            state = "present" if obs.present else ("present but empty" if obs.kind == "empty" else "missing")
            return obs.present == want_present, state
        if not obs.present:
            return False, "present but empty" if obs.kind == "empty" else "missing"
        if obs.kind in ("sequence", "binary"):
            return False, f"a {obs.kind} value: only exists/missing apply"
        if op in ("equals", "not_equals", "in"):
            candidates = expected if op == "in" else [expected]
            notes = []
            for candidate in candidates:
                same, note = self._equal(obs, candidate)
                if same:
                    return op != "not_equals", "equal" if op != "in" else f"equals {candidate!r}"
                if note:
                    notes.append(note)
            if op == "not_equals" and notes:
                return False, notes[0]
            return op == "not_equals", notes[0] if notes else ("not equal" if op != "in" else "none equal")
        if op == "regex":
            assert self._pattern is not None
            joined = "\\".join(as_text(v) for v in obs.values)
            matched = self._pattern.fullmatch(joined) is not None
            return matched, "matches" if matched else "does not match"
        if op == "contains":
            if isinstance(expected, (int, float)) and not isinstance(expected, bool):
                found = any(as_number(v) == float(expected) for v in obs.values)
            else:
                wanted = self._text(expected)
                found = any(self._text(v) == wanted for v in obs.values)
            count = len(obs.values)
            return found, (f"one of {count} values" if found else f"not among {count} values")
        # numeric
        if len(obs.values) != 1:
            return False, f"{len(obs.values)} values; numeric operators need one"
        number = as_number(obs.values[0])
        if number is None:
            return False, f"{as_text(obs.values[0])!r} is not a number"
        if op == "range":
            low, high = float(expected[0]), float(expected[1])
            inside = low <= number <= high
            return inside, f"{number:g} {'within' if inside else 'outside'} [{low:g}, {high:g}]"
        compare = {
            "lt": number < expected,
            "le": number <= expected,
            "gt": number > expected,
            "ge": number >= expected,
        }[op]
        symbol = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}[op]
        return compare, f"{number:g} {symbol if compare else 'not ' + symbol} {float(expected):g}"


def _condition_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("all", "any", "not"):
            if key in value:
                return f"cond:{key}"
        return "cond:leaf"
    kinds: dict[type, str] = {
        AllCondition: "cond:all",
        AnyCondition: "cond:any",
        NotCondition: "cond:not",
        AttributeCondition: "cond:leaf",
    }
    return kinds.get(type(value))


CONDITION_SHAPE = (
    "a condition is a mapping: {attribute: FIELD, OPERATOR: VALUE}, {all: [...]}, "
    "{any: [...]} or {not: {...}}"
)

Condition = Annotated[
    Annotated[AllCondition, Tag("cond:all")]
    | Annotated[AnyCondition, Tag("cond:any")]
    | Annotated[NotCondition, Tag("cond:not")]
    | Annotated[AttributeCondition, Tag("cond:leaf")],
    Discriminator(_condition_kind, custom_error_type="condition_shape", custom_error_message=CONDITION_SHAPE),
]

for _model in (AllCondition, AnyCondition, NotCondition, AttributeCondition):
    _model.model_rebuild()
