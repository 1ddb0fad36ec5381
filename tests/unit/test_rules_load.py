"""Loading rules files: what is accepted, and errors that name the file, line, rule and field."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from node.errors import RulesError
from node.rules import RulesFileError, load_rules
from node.rules.schema import schema_text
from node.yaml_lines import load_yaml

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
version: 1
destinations:
  pacs: {kind: dimse, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}
  research: {ae_title: RESEARCH, host: 127.0.0.1, port: 4243, calling_ae_title: NODE_R}
rules:
  - name: ct-to-pacs
    when: {attribute: Modality, equals: CT}
    send_to: [pacs]
    on_match: continue
  - name: contrast
    when:
      any:
        - {attribute: prediction.contrast, equals: yes}
        - {attribute: ContrastBolusAgent, exists: true}
    send_to: [research]
  - name: drop-sr
    when: {attribute: Modality, equals: SR}
    discard: true
fallback: {send_to: [pacs]}
"""


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> RulesFileError:
    path = write(tmp_path, text)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert isinstance(info.value, RulesFileError)
    assert str(path) in str(info.value)
    return info.value


def test_good_file_loads(tmp_path: Path) -> None:
    ruleset = load_rules(write(tmp_path, GOOD))
    assert [r.name for r in ruleset.rules] == ["ct-to-pacs", "contrast", "drop-sr"]
    assert ruleset.destinations["pacs"].name == "pacs"
    assert ruleset.destinations["pacs"].port == 4242
    assert ruleset.destinations["research"].calling_ae_title == "NODE_R"
    assert ruleset.fallback.send_to == ["pacs"]
    assert ruleset.rules[0].on_match == "continue"
    assert ruleset.rules[1].on_match == "stop"  # the default
    assert ruleset.source == str(tmp_path / "rules.yaml")
    assert ruleset.sha256 is not None and len(ruleset.sha256) == 64
    assert ruleset.warnings == []


def test_yes_and_no_stay_strings(tmp_path: Path) -> None:
    ruleset = load_rules(write(tmp_path, GOOD))
    condition = ruleset.rules[1].when
    assert condition is not None
    first = condition.any_[0]  # type: ignore[union-attr]
    assert first.equals == "yes"  # YAML 1.1 would have made it True
    assert load_yaml("a: no\nb: on\nc: 010\nd: 2024-01-01\ne: true\nf: 1.5\ng: 1.2.840\nh: 0x10\n") == {
        "a": "no",
        "b": "on",
        "c": 10,
        "d": "2024-01-01",
        "e": True,
        "f": 1.5,
        "g": "1.2.840",
        "h": 16,
    }


def test_empty_file_means_discard_everything_with_a_warning(tmp_path: Path) -> None:
    ruleset = load_rules(write(tmp_path, ""))
    assert ruleset.rules == [] and ruleset.fallback.discard is True
    assert any("no fallback" in w for w in ruleset.warnings)


def test_unused_destination_is_a_warning(tmp_path: Path) -> None:
    ruleset = load_rules(
        write(
            tmp_path,
            GOOD.replace("fallback: {send_to: [pacs]}", "fallback: {discard: true}").replace(
                "send_to: [research]", "send_to: [pacs]"
            ),
        )
    )
    assert ruleset.warnings == ["destination 'research' is not used by any rule"]


def test_unknown_destination(tmp_path: Path) -> None:
    error = load_error(tmp_path, GOOD.replace("send_to: [research]", "send_to: [reserch]"))
    text = str(error)
    assert "rule 'contrast'" in text and "send_to[0]" in text and "'reserch'" in text
    assert "did you mean 'research'" in text
    assert ":15:" in text  # the line of send_to
    assert (error.rule, error.field, error.line) == ("contrast", "send_to[0]", 15)


def test_unknown_destination_in_fallback(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, GOOD.replace("fallback: {send_to: [pacs]}", "fallback: {send_to: [archive]}")
    )
    assert error.field == "fallback.send_to[0]" and "unknown destination 'archive'" in str(error)


def test_keyword_typo_names_file_line_rule_and_field(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, GOOD.replace("{attribute: ContrastBolusAgent,", "{attribute: ContrastBolus,")
    )
    assert (error.rule, error.field, error.line) == ("contrast", "when.any[1].attribute", 14)
    assert "unknown DICOM keyword 'ContrastBolus'" in str(error)


def test_bad_regex(tmp_path: Path) -> None:
    error = load_error(tmp_path, GOOD.replace("equals: SR}", "regex: '[SR'}"))
    assert (error.rule, error.field, error.line) == ("drop-sr", "when.regex", 17)
    assert "invalid regular expression" in str(error)


def test_unknown_operator(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, GOOD.replace("{attribute: Modality, equals: CT}", "{attribute: Modality, eq: CT}")
    )
    assert (error.rule, error.field, error.line) == ("ct-to-pacs", "when", 7)
    assert "unknown operator 'eq' (did you mean 'equals'?)" in str(error)


def test_rule_without_action(tmp_path: Path) -> None:
    error = load_error(tmp_path, GOOD.replace("    discard: true\n", ""))
    assert error.rule == "drop-sr" and "needs an action" in str(error)
    assert error.line == 16


def test_rule_with_both_actions_and_discard_continue(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, GOOD.replace("    discard: true\n", "    discard: true\n    send_to: [pacs]\n")
    )
    assert "not both" in str(error)
    error = load_error(
        tmp_path, GOOD.replace("    discard: true\n", "    discard: true\n    on_match: continue\n")
    )
    assert "always stops" in str(error)


def test_duplicate_rule_names(tmp_path: Path) -> None:
    error = load_error(tmp_path, GOOD.replace("name: drop-sr", "name: ct-to-pacs"))
    assert (error.rule, error.field, error.line) == ("ct-to-pacs", "name", 16)
    assert "duplicate rule name" in str(error)


def test_unknown_rule_key_and_bad_on_match(tmp_path: Path) -> None:
    error = load_error(tmp_path, GOOD.replace("send_to: [research]", "sendto: [research]"))
    assert any(p.field == "sendto" and "did you mean 'send_to'" in p.message for p in error.problems)
    error = load_error(tmp_path, GOOD.replace("on_match: continue", "on_match: go-on"))
    assert (error.rule, error.field) == ("ct-to-pacs", "on_match")


def test_bad_destination(tmp_path: Path) -> None:
    error = load_error(tmp_path, GOOD.replace("port: 4242", "port: 99999"))
    assert (error.rule, error.field, error.line) == (None, "destinations.pacs.port", 3)
    error = load_error(tmp_path, GOOD.replace("ae_title: ORTHANC", "ae_title: WAY_TOO_LONG_AE_TITLE_X"))
    assert error.field == "destinations.pacs.ae_title" and "AE title" in str(error)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = (
        GOOD.replace("equals: CT}", "equal: CT}")
        .replace("send_to: [research]", "send_to: [nowhere]")
        .replace("name: drop-sr", "name: contrast")
    )
    error = load_error(tmp_path, text)
    assert len(error.problems) == 3
    assert "3 problems" in str(error)
    assert [p.line for p in error.problems] == sorted(p.line or 0 for p in error.problems)


def test_yaml_syntax_error_and_duplicate_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, "rules:\n  - name: a\n    when: {attribute: Modality, equals: [CT}\n")
    assert "not valid YAML" in str(error) and error.line == 3
    error = load_error(
        tmp_path,
        "rules:\n  - name: a\n    when: {attribute: Modality, equals: CT, equals: MR}\n    discard: true\n",
    )
    assert "duplicate key 'equals'" in str(error) and error.line == 3


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    error = load_error(tmp_path, "- a\n- b\n")
    assert "top level must be a mapping" in str(error)
    error = load_error(tmp_path, "version: 2\n")
    assert error.field == "version"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(info.value) and "cannot read" in str(info.value)


def test_repository_rules_are_valid() -> None:
    for path in sorted((REPO / "rules").glob("*.yaml")):
        ruleset = load_rules(path)
        assert ruleset.rules, path


def test_schema_is_up_to_date() -> None:
    committed = (REPO / "rules" / "schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), "regenerate with: python -m node.rules.schema > rules/schema.json"


def test_schema_accepts_the_examples_and_rejects_a_bad_condition() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    schema = json.loads(schema_text())
    for path in sorted((REPO / "rules").glob("*.yaml")):
        jsonschema.validate(load_yaml(path.read_text(encoding="utf-8")), schema)
    bad = {"rules": [{"name": "a", "when": {"attribute": "Modality"}, "discard": True}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_wrong_value_types_give_one_problem_each(tmp_path: Path) -> None:
    text = GOOD.replace("equals: SR}", "equals: [SR, KO]}").replace(
        "{attribute: Modality, equals: CT}", "{attribute: SliceThickness, gt: thick}"
    )
    error = load_error(tmp_path, text)
    assert [(p.rule, p.field, p.message) for p in error.problems] == [
        ("ct-to-pacs", "when.gt", "expected a number; got the text 'thick'"),
        ("drop-sr", "when.equals", "expected a string, a boolean or a number; got a list"),
    ]


# ------------------------------------------------------------------------------ analysis fields


def one_condition(condition: str) -> str:
    """A rules file with one rule `r` whose `when:` (line 5) is `condition`."""
    return (
        "destinations:\n"
        "  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242}\n"
        "rules:\n"
        "  - name: r\n"
        f"    when: {condition}\n"
        "    send_to: [pacs]\n"
        "fallback: {send_to: [pacs]}\n"
    )


def condition_error(tmp_path: Path, condition: str) -> RulesFileError:
    error = load_error(tmp_path, one_condition(condition))
    assert len(error.problems) == 1, error.problems
    assert (error.rule, error.line) == ("r", 5), str(error)
    return error


def loads(tmp_path: Path, condition: str) -> None:
    load_rules(write(tmp_path, one_condition(condition)))


def test_unknown_analysis_field_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.body_prat, equals: Chest}")
    assert error.field == "when.attribute"
    assert "unknown analysis field 'prediction.body_prat' (did you mean 'prediction.body_part'?)" in str(
        error
    )
    error = condition_error(tmp_path, "{attribute: disagreement.everything, equals: true}")
    assert "unknown analysis field 'disagreement.everything'" in str(error)
    assert "disagreement.any" in str(error)  # no close name: the namespace's fields are listed
    error = condition_error(tmp_path, "{attribute: prior.axis_obliqueness, exists: true}")
    assert "did you mean 'prior.axis_oblique'" in str(error)


def test_typos_of_node_fields_and_classifiable_get_suggestions(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: series.called_aet, equals: NODE}")
    assert "unknown field 'series.called_aet' (did you mean 'series.called_ae'?)" in str(error)
    error = condition_error(tmp_path, "{attribute: classifable, equals: true}")
    assert "did you mean 'classifiable'?" in str(error)


def test_called_ae_is_a_node_field(tmp_path: Path) -> None:
    loads(tmp_path, "{attribute: series.called_ae, in: [NODE, NODE_QA]}")


def test_label_outside_the_vocabulary_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.body_part, equals: Chets}")
    assert error.field == "when.equals"
    assert "'Chets' is not a label of prediction.body_part (did you mean 'Chest'?)" in str(error)
    error = condition_error(tmp_path, "{attribute: image.body_part, not_equals: Pelvic}")
    assert error.field == "when.not_equals" and "did you mean 'Pelvis'?" in str(error)
    error = condition_error(tmp_path, "{attribute: prior.body_part, contains: Nek}")
    assert error.field == "when.contains" and "did you mean 'Neck'?" in str(error)


def test_each_bad_label_of_in_is_named(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.body_part, in: [Chest, Abdomn, Pelvs]}")
    assert error.field == "when.in"
    text = str(error)
    assert "'Abdomn' is not a label of prediction.body_part (did you mean 'Abdomen'?)" in text
    assert "'Pelvs' is not a label of prediction.body_part (did you mean 'Pelvis'?)" in text
    assert "'Chest' is not" not in text


def test_label_without_a_close_match_lists_the_vocabulary(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.contrast, equals: maybe}")
    assert "'maybe' is not a label of prediction.contrast; its labels are 'no', 'yes', 'unknown'" in str(
        error
    )


def test_label_fields_take_text_not_booleans_or_numbers(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.contrast, equals: true}")
    assert "prediction.contrast is a label" in str(error) and "'yes'" in str(error)
    error = condition_error(tmp_path, "{attribute: prediction.axis, in: [axial, 2]}")
    assert "prediction.axis is a label" in str(error)


def test_case_of_labels_and_ignore_case(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.body_part, equals: chest}")
    assert "'chest' is not a label of prediction.body_part (did you mean 'Chest'?" in str(error)
    assert "ignore_case" in str(error)
    loads(tmp_path, "{attribute: prediction.body_part, equals: chest, ignore_case: true}")
    loads(tmp_path, "{attribute: prediction.body_part, in: [CHEST, chest-abdomen-pelvis], ignore_case: true}")
    error = condition_error(tmp_path, "{attribute: prediction.body_part, equals: chets, ignore_case: true}")
    assert "did you mean 'Chest'?" in str(error)


def test_regex_on_a_label_field_must_match_a_label(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.body_part, regex: 'Chets.*'}")
    assert error.field == "when.regex" and "matches no label of prediction.body_part" in str(error)
    loads(tmp_path, "{attribute: prediction.body_part, regex: '.*spine.*', ignore_case: true}")
    loads(tmp_path, "{attribute: prediction.body_part, regex: 'Chest.*'}")


def test_numeric_operators_on_a_label_field_are_errors(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.body_part, ge: 0.5}")
    assert error.field == "when.ge"
    assert "'ge' compares numbers and prediction.body_part is a label" in str(error)


def test_text_operators_on_a_number_field_are_errors(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.body_part_confidence, equals: high}")
    assert error.field == "when.equals"
    assert "prediction.body_part_confidence is a number from 0 to 1" in str(error)
    error = condition_error(tmp_path, "{attribute: prediction.body_part_confidence, regex: '0\\.9.*'}")
    assert "prediction.body_part_confidence is a number" in str(error) and "'regex'" in str(error)
    # A string for a numeric operator was already refused by its type.
    error = condition_error(tmp_path, "{attribute: prediction.body_part_confidence, gt: 'high'}")
    assert "expected a number; got the text 'high'" in str(error)
    loads(tmp_path, "{attribute: prediction.body_part_confidence, equals: 1}")
    loads(tmp_path, "{attribute: image.contrast_confidence, in: [0, 1]}")


def test_numbers_outside_a_fields_bounds_are_errors(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: prediction.body_part_confidence, range: [50, 100]}")
    assert error.field == "when.range"
    assert "outside 0 to 1" in str(error) and "prediction.body_part_confidence" in str(error)
    error = condition_error(tmp_path, "{attribute: prior.contrast_confidence, ge: 90}")
    assert error.field == "when.ge" and "90" in str(error) and "outside 0 to 1" in str(error)
    error = condition_error(tmp_path, "{attribute: image.axis_confidence, lt: -0.1}")
    assert "outside 0 to 1" in str(error)
    loads(tmp_path, "{attribute: prediction.body_part_confidence, range: [0, 1]}")
    loads(tmp_path, "{attribute: prior.axis_obliquity_degrees, gt: 10}")


def test_boolean_fields_take_booleans(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: disagreement.any, equals: yes}")
    assert error.field == "when.equals"
    assert "disagreement.any is a boolean: write true or false, not 'yes'" in str(error)
    error = condition_error(tmp_path, "{attribute: classifiable, equals: 1}")
    assert "classifiable is a boolean" in str(error)
    error = condition_error(tmp_path, "{attribute: prediction.low_confidence, regex: 'tr.*'}")
    assert "prediction.low_confidence is a boolean" in str(error)
    error = condition_error(tmp_path, "{attribute: disagreement.axis, ge: 1}")
    assert "'ge' compares numbers and disagreement.axis is a boolean" in str(error)
    loads(tmp_path, "{attribute: disagreement.any, not_equals: false}")


def test_text_fields_take_text(tmp_path: Path) -> None:
    loads(tmp_path, "{attribute: classification.model, regex: 'ct-starter@.*'}")
    loads(tmp_path, "{attribute: prior.body_part_source, equals: BodyPartExamined}")
    error = condition_error(tmp_path, "{attribute: classification.model, ge: 1}")
    assert "'ge' compares numbers and classification.model is text" in str(error)
    error = condition_error(tmp_path, "{attribute: classification.device, equals: true}")
    assert "classification.device is text" in str(error)


def test_not_classifiable_codes_are_a_vocabulary(tmp_path: Path) -> None:
    error = condition_error(tmp_path, "{attribute: classification.code, equals: not_CT}")
    assert "did you mean 'not_ct'?" in str(error)
    loads(tmp_path, "{attribute: classification.code, in: [localizer_only, too_few_slices]}")


def test_several_problems_in_one_file_each_name_their_rule_and_field(tmp_path: Path) -> None:
    text = GOOD.replace("equals: yes}", "equals: maybe}").replace(
        "{attribute: Modality, equals: CT}", "{attribute: prediction.body_prat, equals: Chest}"
    )
    error = load_error(tmp_path, text)
    assert [(p.rule, p.field, p.line) for p in error.problems] == [
        ("ct-to-pacs", "when.attribute", 7),
        ("contrast", "when.any[0].equals", 13),
    ]


def test_every_analysis_field_loads_with_an_operator_of_its_type(tmp_path: Path) -> None:
    from node.classify.fields import ANALYSIS_FIELDS

    for spec in ANALYSIS_FIELDS.values():
        loads(tmp_path, f"{{attribute: {spec.name}, exists: true}}")
        if spec.kind == "label":
            loads(tmp_path, json.dumps({"attribute": spec.name, "in": list(spec.vocabulary)}))
        elif spec.kind == "number":
            assert spec.bounds is not None
            loads(tmp_path, json.dumps({"attribute": spec.name, "range": list(spec.bounds)}))
        elif spec.kind == "boolean":
            loads(tmp_path, json.dumps({"attribute": spec.name, "equals": False}))
        else:
            loads(tmp_path, json.dumps({"attribute": spec.name, "regex": ".+"}))


def test_schema_gives_editors_the_analysis_fields_types() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    schema = json.loads(schema_text())

    def valid(condition: dict[str, object]) -> bool:
        document = {"rules": [{"name": "a", "when": condition, "discard": True}]}
        return jsonschema.Draft202012Validator(schema).is_valid(document)

    assert valid({"attribute": "prediction.body_part", "in": ["Chest", "Abdomen"]})
    assert not valid({"attribute": "prediction.body_part", "in": ["Chest", "Abdomn"]})
    assert not valid({"attribute": "prediction.body_part", "equals": "Chets"})
    assert valid({"attribute": "prediction.body_part", "equals": "chest", "ignore_case": True})
    assert not valid({"attribute": "disagreement.any", "equals": "yes"})
    assert valid({"attribute": "disagreement.any", "equals": True})
    assert not valid({"attribute": "prediction.body_part_confidence", "ge": 90})
    assert not valid({"attribute": "prior.axis_confidence", "range": [0.5, 2]})
    assert valid({"attribute": "prediction.body_part_confidence", "range": [0.5, 1]})
    assert valid({"attribute": "SeriesDescription", "equals": "Chets"})
    examples = schema["$defs"]["AttributeCondition"]["properties"]["attribute"]["examples"]
    assert "series.called_ae" in examples and "prediction.body_part" in examples
