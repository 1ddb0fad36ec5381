"""Problems found while validating a YAML file (rules, settings), located at the file's lines.

Shared by the rules loader (node/rules/ruleset.py) and the settings loader (node/config.py): both read
the file with node.yaml_lines (mappings remember the line of each key), validate it with pydantic, and
turn each validation error into a `Problem` that gives the line, the field path and a message a person
can act on ("unknown key 'prot' (did you mean 'port'?)", "expected a number; got the text 'many'").
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from node.yaml_lines import LineDict


@dataclass(frozen=True)
class Problem:
    message: str
    rule: str | None = None
    field: str | None = None
    line: int | None = None


def describe(file: str, problem: Problem) -> str:
    """`file:line: rule 'r': field 'f': message`, leaving out the parts that are unknown."""
    where = file
    if problem.line is not None:
        where += f":{problem.line}"
    if problem.rule is not None:
        where += f": rule {problem.rule!r}"
    if problem.field is not None:
        where += f": field {problem.field!r}"
    return f"{where}: {problem.message}"


def describe_all(file: str, problems: Sequence[Problem]) -> str:
    """One problem on one line; several under a heading, one per line."""
    if len(problems) == 1:
        return describe(file, problems[0])
    return f"{file}: {len(problems)} problems:\n  " + "\n  ".join(describe(file, p) for p in problems)


def line_of(mapping: Any, key: Any) -> int | None:
    """The line of `key` in a mapping read by node.yaml_lines (else the mapping's own line)."""
    if isinstance(mapping, LineDict):
        return mapping.key_lines.get(key, mapping.line)
    return None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(key: str, known: Iterable[str]) -> str:
    return f"unknown key {key!r}" + did_you_mean(key, known)


def kind_of(value: Any) -> str:
    """How a value that was given is named in a message."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return repr(value)


def field_path(loc: Sequence[Any]) -> str | None:
    """('receive', 'allowed_callers', 1, 'ae_title') -> 'receive.allowed_callers[1].ae_title'."""
    parts: list[str] = []
    for step in loc:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append(("." if parts else "") + str(step))
    return "".join(parts) or None


def locate(raw: Any, loc: Sequence[Any]) -> int | None:
    """The line of the value at `loc` in the YAML read by node.yaml_lines (the nearest line known)."""
    node = raw
    line: int | None = raw.line if isinstance(raw, LineDict) else None
    for step in loc:
        if isinstance(node, dict) and step in node:
            line = line_of(node, step) or line
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            node = node[step]
            line = node.line if isinstance(node, LineDict) else line
        else:
            break
    return line


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (X, X | None, list[X], dict[str, X], ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return []
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(models_in(arg))
    return found


def keys_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys a model accepts at `loc` (the mapping that holds the last step): for "did you mean"."""
    models: list[type[BaseModel]] = [model]
    for step in loc:
        if isinstance(step, int):
            continue  # a list index: the item models are already in `models`
        below: list[type[BaseModel]] = []
        for candidate in models:
            field = candidate.model_fields.get(str(step))
            if field is not None:
                below.extend(models_in(field.annotation))
        models = below
    return sorted({key for m in models for key in m.model_fields})
