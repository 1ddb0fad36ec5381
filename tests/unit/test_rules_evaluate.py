"""Rule order, stop/continue, discard, fallback, and the decision's audit and text forms."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from node.facts import SeriesFacts
from node.rules import FALLBACK, RuleSet, evaluate, parse_rules

DESTINATIONS = """\
version: 1
destinations:
  pacs: {ae_title: PACS, host: 127.0.0.1, port: 104}
  research: {ae_title: RESEARCH, host: 127.0.0.1, port: 105}
  qa: {ae_title: QA, host: 127.0.0.1, port: 106}
"""


def rules(body: str) -> RuleSet:
    return parse_rules(DESTINATIONS + textwrap.dedent(body), "test.yaml")


def series(modality: str = "CT", description: str = "Chest", **extra: Any) -> SeriesFacts:
    ds = Dataset()
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.PatientID = "PAT-123"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    return SeriesFacts("1.2.3.4", ds, 50, calling_ae="CT1", extra=extra)


ORDERED = """\
rules:
  - name: ct-to-pacs
    when: {attribute: Modality, equals: CT}
    send_to: [pacs]
  - name: chest-to-research
    when: {attribute: SeriesDescription, regex: '(?i).*chest.*'}
    send_to: [research]
fallback: {send_to: [qa]}
"""


def test_stop_is_the_default_first_match_wins() -> None:
    decision = evaluate(rules(ORDERED), series())
    assert decision.destinations == {"pacs": ["ct-to-pacs"]}
    assert decision.stopped_by == "ct-to-pacs"
    assert decision.matched_rules == ["ct-to-pacs"]
    assert [(r.name, r.evaluated, r.matched) for r in decision.rules] == [
        ("ct-to-pacs", True, True),
        ("chest-to-research", False, False),
    ]
    assert decision.rules[1].note == "rule 'ct-to-pacs' stopped evaluation"
    assert not decision.fallback_used and not decision.discarded


def test_continue_collects_every_match() -> None:
    ruleset = rules(ORDERED.replace("send_to: [pacs]", "send_to: [pacs]\n    on_match: continue"))
    decision = evaluate(ruleset, series())
    assert decision.destinations == {"pacs": ["ct-to-pacs"], "research": ["chest-to-research"]}
    assert decision.stopped_by == "chest-to-research"


def test_same_destination_from_two_rules_is_listed_once_with_both_rules() -> None:
    ruleset = rules(
        ORDERED.replace("send_to: [research]", "send_to: [pacs]").replace(
            "send_to: [pacs]\n  - name: chest", "send_to: [pacs]\n    on_match: continue\n  - name: chest"
        )
    )
    decision = evaluate(ruleset, series())
    assert decision.destinations == {"pacs": ["ct-to-pacs", "chest-to-research"]}
    assert decision.destination_names == ["pacs"]


def test_order_matters() -> None:
    swapped = """\
rules:
  - name: chest-to-research
    when: {attribute: SeriesDescription, regex: '(?i).*chest.*'}
    send_to: [research]
  - name: ct-to-pacs
    when: {attribute: Modality, equals: CT}
    send_to: [pacs]
fallback: {send_to: [qa]}
"""
    assert evaluate(rules(swapped), series()).destinations == {"research": ["chest-to-research"]}
    assert evaluate(rules(swapped), series(description="Head")).destinations == {"pacs": ["ct-to-pacs"]}


def test_fallback_when_no_rule_matched() -> None:
    decision = evaluate(rules(ORDERED), series(modality="MR", description="Brain"))
    assert decision.fallback_used
    assert decision.destinations == {"qa": [FALLBACK]}
    assert not decision.discarded
    assert all(r.evaluated and not r.matched for r in decision.rules)


def test_fallback_discard_and_default_fallback() -> None:
    ruleset = rules(ORDERED.replace("fallback: {send_to: [qa]}", "fallback: {discard: true}"))
    decision = evaluate(ruleset, series(modality="MR", description="Brain"))
    assert decision.fallback_used and decision.discarded and decision.destinations == {}
    implicit = rules(ORDERED.replace("fallback: {send_to: [qa]}\n", ""))
    decision = evaluate(implicit, series(modality="MR", description="Brain"))
    assert decision.fallback_used and decision.discarded


def test_discard_stops_and_overrides_earlier_continue_rules() -> None:
    body = """\
rules:
  - name: everything-to-qa
    send_to: [qa]
    on_match: continue
  - name: drop-sr
    when: {attribute: Modality, equals: SR}
    discard: true
  - name: ct-to-pacs
    when: {attribute: Modality, equals: CT}
    send_to: [pacs]
fallback: {send_to: [pacs]}
"""
    sr = evaluate(rules(body), series(modality="SR"))
    assert sr.discarded and sr.destinations == {}
    assert sr.dropped == {"qa": ["everything-to-qa"]}
    assert sr.stopped_by == "drop-sr"
    assert not sr.fallback_used
    assert sr.rules[2].evaluated is False
    ct = evaluate(rules(body), series(modality="CT"))
    assert ct.destinations == {"qa": ["everything-to-qa"], "pacs": ["ct-to-pacs"]}
    assert not ct.discarded
    # A rule without `when` matches every series, so the fallback never applies here.
    mr = evaluate(rules(body), series(modality="MR"))
    assert mr.destinations == {"qa": ["everything-to-qa"]} and not mr.fallback_used
    assert mr.rules[0].condition is None


def test_prediction_fields_route() -> None:
    body = """\
rules:
  - name: disagreement-to-qa
    when:
      all:
        - {attribute: classifiable, equals: true}
        - {attribute: disagreement.body_part, equals: true}
    send_to: [qa]
    on_match: continue
  - name: confident-chest
    when:
      all:
        - {attribute: prediction.body_part, equals: Chest}
        - {attribute: prediction.body_part_confidence, ge: 0.8}
    send_to: [research]
fallback: {send_to: [pacs]}
"""
    ruleset = rules(body)
    decision = evaluate(
        ruleset,
        series(
            **{
                "classifiable": True,
                "disagreement.body_part": True,
                "prediction.body_part": "Chest",
                "prediction.body_part_confidence": 0.91,
            }
        ),
    )
    assert decision.destinations == {"qa": ["disagreement-to-qa"], "research": ["confident-chest"]}
    # Before the analysis step fills them, prediction fields behave as missing attributes.
    decision = evaluate(ruleset, series())
    assert decision.fallback_used and decision.destinations == {"pacs": [FALLBACK]}


def test_audit_form_is_json_and_explains() -> None:
    ruleset = rules(ORDERED.replace("send_to: [pacs]", "send_to: [pacs]\n    on_match: continue"))
    decision = evaluate(ruleset, series())
    audit = decision.to_audit()
    assert json.loads(json.dumps(audit)) == audit
    assert audit["destinations"] == {"pacs": ["ct-to-pacs"], "research": ["chest-to-research"]}
    assert audit["rules_sha256"] == ruleset.sha256
    assert audit["trace"][0] == {
        "rule": "ct-to-pacs",
        "matched": True,
        "when": {
            "field": "Modality",
            "op": "equals",
            "expected": "CT",
            "actual": "CT",
            "result": True,
            "reason": "equal",
        },
    }


def test_no_patient_identifiers_unless_a_rule_tests_them() -> None:
    decision = evaluate(rules(ORDERED), series())
    dumped = json.dumps(decision.to_audit(redact=False)) + decision.render_text()
    for secret in ("PAT-123", "Doe", "19700101"):
        assert secret not in dumped
    body = """\
rules:
  - name: study-patient
    when: {attribute: PatientID, regex: 'PAT-.*'}
    send_to: [research]
"""
    decision = evaluate(rules(body), series())
    assert decision.destinations == {"research": ["study-patient"]}
    assert "PAT-123" not in json.dumps(decision.to_audit())  # redacted for the audit trail
    assert "<redacted>" in json.dumps(decision.to_audit())
    assert "PAT-123" in decision.render_text()  # an interactive dry run shows what the rule tested
    assert "PAT-123" not in decision.render_text(redact=True)


def test_text_rendering() -> None:
    decision = evaluate(rules(ORDERED), series(modality="MR", description="Brain"))
    text = decision.render_text()
    assert "rule ct-to-pacs: no match" in text
    assert "[false] Modality equals 'CT': actual 'MR'; not equal" in text
    assert "no rule matched: fallback applies" in text
    assert text.endswith("=> send to qa (fallback)")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "rules").glob("*.yaml")))
def test_repository_rules_evaluate(path: Path) -> None:
    ruleset = parse_rules(path.read_text(encoding="utf-8"), str(path))
    decision = evaluate(ruleset, series())
    assert decision.discarded or decision.destinations
