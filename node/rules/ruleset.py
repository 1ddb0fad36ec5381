"""A rules file: its models (rules, destinations, fallback) and loading, with errors that name file, line,
rule and field. The semantics are documented in docs/rules.md."""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from node.deliver.destinations import (
    DESTINATION_KINDS,
    DeliveryOptions,
    Destination,
    DicomwebDestination,
    DimseDestination,
    HttpAuth,
    WriteBack,
)
from node.errors import RulesError
from node.rules.conditions import LEAF_KEYS, Condition
from node.rules.evaluation import FALLBACK
from node.yaml_lines import LineDict, load_yaml, yaml_error_line
from node.yaml_problems import Problem, kind_of, line_of, unknown_key

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE_COMPILED = re.compile(NAME_PATTERN)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _action_problem(send_to: list[str] | None, discard: bool) -> str | None:
    if send_to and discard:
        return "give either send_to or discard: true, not both"
    if not send_to and not discard:
        return "needs an action: send_to: [DESTINATION, ...] or discard: true"
    if send_to:
        twice = sorted({d for d in send_to if send_to.count(d) > 1})
        if twice:
            return f"send_to lists {', '.join(twice)} more than once"
    return None


class Rule(_Strict):
    """A named condition and what to do with a series that meets it."""

    name: str = Field(pattern=NAME_PATTERN, description="unique; letters, digits, '_', '.', '-'")
    description: str | None = None
    when: Condition | None = Field(None, description="absent: the rule matches every series")
    send_to: list[str] | None = Field(None, min_length=1, description="destination names")
    discard: bool = Field(False, description="forward nowhere, and stop")
    on_match: Literal["stop", "continue"] = Field(
        "stop",
        description="stop: later rules are not evaluated; continue: they are, and their destinations add up",
    )
    deliver: DeliveryOptions | None = Field(
        None,
        description="overrides what this rule's destinations get (writeback, structured_report); "
        "the first matching rule that chose a destination and sets a field decides it",
    )

    @model_validator(mode="after")
    def _action(self) -> Rule:
        problem = _action_problem(self.send_to, self.discard)
        if problem:
            raise ValueError(problem)
        if self.discard and self.on_match == "continue":
            raise ValueError("a discard rule always stops; remove on_match: continue")
        if self.name == FALLBACK:
            raise ValueError(f"the rule name {FALLBACK!r} is reserved")
        return self


class Fallback(_Strict):
    """What happens to a series that no rule matched."""

    send_to: list[str] | None = Field(None, min_length=1)
    discard: bool = False

    @model_validator(mode="after")
    def _action(self) -> Fallback:
        problem = _action_problem(self.send_to, self.discard)
        if problem:
            raise ValueError(problem)
        return self


class RuleSet(_Strict):
    """A whole rules file."""

    version: Literal[1] = 1
    destinations: dict[str, Destination] = Field(
        default_factory=dict, description="name -> destination; the name is the key"
    )
    rules: list[Rule] = Field(default_factory=list, description="evaluated in order")
    fallback: Fallback = Field(
        default_factory=lambda: Fallback(send_to=None, discard=True),
        description="applies when no rule matched; default: discard",
    )

    _source: str | None = PrivateAttr(None)
    _sha256: str | None = PrivateAttr(None)
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("destinations", mode="before")
    @classmethod
    def _names_from_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {
            key: ({"name": key, "kind": "dimse", **dest} if isinstance(dest, dict) else dest)
            for key, dest in value.items()
        }

    @model_validator(mode="after")
    def _cross_check(self, info: ValidationInfo) -> RuleSet:
        if info.context and info.context.get("cross_checked"):
            return self
        problems = [p.message for p in _cross_problems(self.model_dump(by_alias=True, exclude_none=True))]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def source(self) -> str | None:
        """The file this rule set was loaded from."""
        return self._source

    @property
    def sha256(self) -> str | None:
        """Hash of the file's bytes: which version of the rules made a decision."""
        return self._sha256

    @property
    def warnings(self) -> list[str]:
        """Things that are legal but probably not meant (unused destinations, implicit fallback)."""
        return list(self._warnings)

    def destination(self, name: str) -> DimseDestination | DicomwebDestination:
        return self.destinations[name]

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


# ---------------------------------------------------------------------------------------------- loading


class RulesFileError(RulesError):
    """A rules file with one or more problems; `problems` lists each with its line, rule and field."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.problems = problems
        if len(problems) == 1:
            p = problems[0]
            super().__init__(file, p.message, rule=p.rule, field=p.field, line=p.line)
        else:
            lines = [str(RulesError(file, p.message, p.rule, p.field, p.line)) for p in problems]
            super().__init__(file, f"{len(problems)} problems:\n  " + "\n  ".join(lines))


def _rule_label(rules: Any, index: int) -> str:
    if isinstance(rules, list) and 0 <= index < len(rules):
        rule = rules[index]
        if isinstance(rule, dict) and isinstance(rule.get("name"), str):
            return rule["name"]
    return f"#{index + 1}"


def _cross_problems(raw: Any) -> list[Problem]:
    """Problems that span several parts of the file: duplicate rule names, unknown destinations."""
    if not isinstance(raw, dict):
        return []
    problems: list[Problem] = []
    destinations = raw.get("destinations")
    known = set(destinations) if isinstance(destinations, dict) else set()
    used: set[str] = set()

    def check_targets(owner: Any, rule: str | None, prefix: str) -> None:
        targets = owner.get("send_to") if isinstance(owner, dict) else None
        if not isinstance(targets, list):
            return
        for i, target in enumerate(targets):
            if not isinstance(target, str):
                continue
            used.add(target)
            if target not in known:
                close = difflib.get_close_matches(target, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listed = ", ".join(sorted(known)) or "none"
                problems.append(
                    Problem(
                        f"unknown destination {target!r}{hint}; defined: {listed}",
                        rule,
                        f"{prefix}send_to[{i}]",
                        line_of(owner, "send_to"),
                    )
                )

    rules = raw.get("rules")
    seen: dict[str, int] = {}
    if isinstance(rules, list):
        for index, rule in enumerate(rules):
            label = _rule_label(rules, index)
            name = rule.get("name") if isinstance(rule, dict) else None
            if isinstance(name, str):
                if name in seen:
                    problems.append(
                        Problem(
                            f"duplicate rule name (first used by rule #{seen[name] + 1})",
                            name,
                            "name",
                            line_of(rule, "name"),
                        )
                    )
                else:
                    seen[name] = index
            check_targets(rule, label, "")
    check_targets(raw.get("fallback"), None, "fallback.")
    if isinstance(destinations, dict):
        for key, dest in destinations.items():
            if not isinstance(key, str) or not _NAME_RE_COMPILED.match(key):
                problems.append(
                    Problem(
                        "a destination name uses letters, digits, '_', '.', '-' (1-64)",
                        None,
                        f"destinations.{key}",
                        line_of(destinations, key),
                    )
                )
            elif isinstance(dest, dict) and "name" in dest and dest["name"] != key:
                problems.append(
                    Problem(
                        f"name {dest['name']!r} differs from its key {key!r}; omit it",
                        None,
                        f"destinations.{key}.name",
                        line_of(dest, "name"),
                    )
                )
    return problems


def _unused_destinations(raw: dict[str, Any]) -> list[str]:
    used: set[str] = set()
    for owner in [*(raw.get("rules") or []), raw.get("fallback") or {}]:
        if isinstance(owner, dict) and isinstance(owner.get("send_to"), list):
            used.update(t for t in owner["send_to"] if isinstance(t, str))
    return sorted(set(raw.get("destinations") or {}) - used)


_TAG_PREFIX = "cond:"
_KNOWN_KEYS = sorted(
    {
        *RuleSet.model_fields,
        *Rule.model_fields,
        *DimseDestination.model_fields,
        *DicomwebDestination.model_fields,
        *WriteBack.model_fields,
        *DeliveryOptions.model_fields,
        *HttpAuth.model_fields,
        "all",
        "any",
        "not",
        *LEAF_KEYS,
    }
    - {"in_"}
)


def _problem_from_error(error: Any, raw: Any) -> Problem:
    loc: tuple[Any, ...] = tuple(error["loc"])
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    # Walk the raw YAML along the error's location, skipping the condition tags pydantic adds.
    path: list[Any] = [p for p in loc if not (isinstance(p, str) and p.startswith(_TAG_PREFIX))]
    # A destination's kind is a union tag too: destinations.<name>.<kind>.<field>.
    if len(path) >= 3 and path[0] == "destinations" and path[2] in DESTINATION_KINDS:
        path = path[:2] + path[3:]
    node: Any = raw
    line: int | None = raw.line if isinstance(raw, LineDict) else None
    rule: str | None = None
    parts: list[str] = []
    union: str | None = None
    if path and path[-1] in _UNION_LABELS and not (isinstance(raw, dict) and len(path) == 1):
        union = _UNION_LABELS[path[-1]]
        path = path[:-1]
    for depth, step in enumerate(path):
        if depth == 1 and path[0] == "rules" and isinstance(step, int):
            rule = _rule_label(node, step)
            node = node[step] if isinstance(node, list) and step < len(node) else None
            line = node.line if isinstance(node, LineDict) else line
            parts = []
            continue
        if isinstance(node, dict) and step in node:
            line = line_of(node, step) or line
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
            line = node.line if isinstance(node, LineDict) else line
        else:
            node = None
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append(("." if parts else "") + str(step))
    where = "".join(parts) or None
    if error["type"] == "extra_forbidden":
        message = unknown_key(str(path[-1]) if path else "?", _KNOWN_KEYS)
    elif error["type"] == "missing":
        message = "required"
    elif union is not None:
        message = f"expected {union}; got {kind_of(error.get('input'))}"
    return Problem(message, rule, where, line)


_UNION_LABELS = {"str": "a string", "bool": "a boolean", "int": "a number", "float": "a number"}


def _merge_union_problems(problems: list[Problem]) -> list[Problem]:
    """One problem per place for a value that matched none of a union's types (str, bool, number)."""
    merged: dict[tuple[str | None, str | None, int | None], Problem] = {}
    out: list[Problem] = []
    for problem in problems:
        if not problem.message.startswith("expected a "):
            out.append(problem)
            continue
        key = (problem.rule, problem.field, problem.line)
        first = merged.get(key)
        if first is None:
            merged[key] = problem
            out.append(problem)
            continue
        wanted, got = problem.message[len("expected ") :].split("; got ", 1)
        first_wanted, _ = first.message[len("expected ") :].split("; got ", 1)
        kinds = first_wanted.replace(" or ", ", ").split(", ")
        if wanted not in kinds:
            kinds.append(wanted)
        text = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
        replacement = Problem(f"expected {text}; got {got}", first.rule, first.field, first.line)
        out[out.index(first)] = replacement
        merged[key] = replacement
    return out


def parse_rules(text: str, file: str) -> RuleSet:
    """Validate the text of a rules file; `file` names it in errors. Raises RulesFileError."""
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        detail = str(getattr(exc, "problem", None) or exc)
        line = yaml_error_line(exc)
        raise RulesFileError(file, [Problem(f"not valid YAML: {detail}", line=line)]) from None
    if raw is None:
        raw = LineDict()
        raw.key_lines = {}
    if not isinstance(raw, dict):
        raise RulesFileError(
            file,
            [Problem("the top level must be a mapping (version, destinations, rules, fallback)", line=1)],
        )
    problems = _cross_problems(raw)
    ruleset: RuleSet | None = None
    try:
        ruleset = RuleSet.model_validate(raw, context={"cross_checked": True})
    except ValidationError as exc:
        problems.extend(
            _merge_union_problems([_problem_from_error(e, raw) for e in exc.errors(include_url=False)])
        )
    if problems or ruleset is None:
        problems.sort(key=lambda p: p.line or 0)
        raise RulesFileError(file, problems)
    warnings = [f"destination {name!r} is not used by any rule" for name in _unused_destinations(raw)]
    if "fallback" not in raw:
        warnings.append("no fallback given: a series that no rule matches is discarded")
    ruleset._warnings = warnings
    ruleset._source = file
    ruleset._sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return ruleset


def load_rules(path: Path) -> RuleSet:
    """Load and validate a rules file. Raises RulesError naming the file, line, rule and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise RulesError(str(path), f"not UTF-8 text: {exc.reason}") from None
    return parse_rules(text, str(path))
