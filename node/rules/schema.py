"""JSON Schema of a rules file (rules/schema.json), for editors and for review.

    python -m node.rules.schema > rules/schema.json
"""

from __future__ import annotations

import json
from typing import Any

from node.classify.fields import ANALYSIS_FIELDS, AnalysisField
from node.rules.fields import NODE_FIELDS
from node.rules.ruleset import RuleSet


def rules_json_schema() -> dict[str, Any]:
    """JSON Schema of a rules file (rules/schema.json), for editors and for review."""
    schema = RuleSet.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Routing rules of the DICOM node (rules/*.yaml)"
    for kind in ("DimseDestination", "DicomwebDestination"):
        dest = schema.get("$defs", {}).get(kind, {})
        # In the file a destination's name is its key under `destinations:`; kind defaults to dimse.
        for implied in ("name", "kind") if kind == "DimseDestination" else ("name",):
            if implied in dest.get("required", []):
                dest["required"] = [r for r in dest["required"] if r != implied]
        if "name" in dest.get("properties", {}):
            dest["properties"]["name"]["description"] = "optional; defaults to (and must equal) the key"
    condition = schema.get("$defs", {}).get("AttributeCondition")
    if condition is not None:
        condition["properties"]["attribute"]["examples"] = [*NODE_FIELDS, *ANALYSIS_FIELDS]
        condition["allOf"] = analysis_field_schemas()
    return schema


def analysis_field_schemas() -> list[dict[str, Any]]:
    """if/then clauses that give editors the analysis fields' types: a label's vocabulary as an enum
    (unless ignore_case is true), booleans for a boolean field, bounds for a number. Loading checks more
    (node/rules/field_types.py); these only let an editor flag the commonest mistakes as they are typed."""
    groups: dict[str, list[AnalysisField]] = {}
    for spec in ANALYSIS_FIELDS.values():
        if spec.kind != "text":
            groups.setdefault(json.dumps([spec.kind, spec.vocabulary, spec.bounds]), []).append(spec)
    clauses = []
    for specs in groups.values():
        spec = specs[0]
        names = sorted(s.name for s in specs)
        when: dict[str, Any] = {"properties": {"attribute": {"enum": names}}, "required": ["attribute"]}
        value: dict[str, Any]
        if spec.kind == "label":
            value = {"enum": list(spec.vocabulary)}
            when["not"] = {"properties": {"ignore_case": {"const": True}}, "required": ["ignore_case"]}
        elif spec.kind == "boolean":
            value = {"type": "boolean"}
        else:
            assert spec.bounds is not None
            value = {"type": "number", "minimum": spec.bounds[0], "maximum": spec.bounds[1]}
        properties: dict[str, Any] = {op: value for op in ("equals", "not_equals")}
        properties["in"] = {"items": value}
        if spec.kind == "label":
            properties["contains"] = value
        if spec.kind == "number":
            properties.update({op: value for op in ("lt", "le", "gt", "ge")})
            properties["range"] = {"items": value}
        clauses.append({"if": when, "then": {"properties": properties}})
    return clauses


def schema_text() -> str:
    return json.dumps(rules_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
