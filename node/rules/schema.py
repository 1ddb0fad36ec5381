"""JSON Schema of a rules file (rules/schema.json), for editors and for review.

    python -m node.rules.schema > rules/schema.json
"""

from __future__ import annotations

import json
from typing import Any

from node.rules.ruleset import RuleSet


def rules_json_schema() -> dict[str, Any]:
    """JSON Schema of a rules file (rules/schema.json), for editors and for review."""
    schema = RuleSet.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Routing rules of the DICOM node (rules/*.yaml)"
    dest = schema.get("$defs", {}).get("DimseDestination", {})
    # In the file a destination's name is its key under `destinations:`.
    if "name" in dest.get("required", []):
        dest["required"] = [r for r in dest["required"] if r != "name"]
        dest["properties"]["name"]["description"] = "optional; defaults to (and must equal) the key"
    return schema


def schema_text() -> str:
    return json.dumps(rules_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
