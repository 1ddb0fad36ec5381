"""What a destination gets besides the stored bytes: destination kinds, write-back settings, a rule's
`deliver:` override, and the classification results frozen into the plan."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.analysis import AnalysisResult
from node.deliver.destinations import DicomwebDestination, DimseDestination
from node.deliver.plan import DeliveryPlan, PlanError
from node.errors import RulesError
from node.facts import SeriesFacts
from node.rules import RulesFileError, decide, load_rules

RULES = """\
version: 1
destinations:
  pacs: {ae_title: ORTHANC, host: 127.0.0.1, port: 4242, writeback: {mode: attributes}}
  web:
    kind: dicomweb
    url: http://127.0.0.1:8042/dicom-web
    batch_size: 5
    auth: {kind: basic, username: node, password_env: WEB_PASSWORD}
    structured_report: true
  plain: {ae_title: PLAIN, host: 127.0.0.1, port: 4243}
rules:
  - name: chest
    when: {attribute: prediction.body_part, equals: Chest}
    send_to: [pacs, plain]
    deliver: {writeback: {mode: attributes, body_part: overwrite}, structured_report: true}
    on_match: continue
  - name: all-ct
    when: {attribute: Modality, equals: CT}
    send_to: [pacs, web]
    deliver: {structured_report: false}
"""

ANALYSIS = AnalysisResult(
    facts={"classifiable": True, "prediction.body_part": "Chest"},
    audit={
        "final": {"body_part": {"label": "Chest", "confidence": 0.9}},
        "model": "m@1",
        "image": {"big": 1},
    },
    summary="body_part Chest 0.90",
)


def load(tmp_path: Path, text: str = RULES):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_rules(path)


def facts() -> SeriesFacts:
    ds = Dataset()
    ds.Modality = "CT"
    return SeriesFacts("1.2.3", ds, 10)


def test_both_destination_kinds_load(tmp_path: Path) -> None:
    rules = load(tmp_path)
    assert isinstance(rules.destinations["pacs"], DimseDestination)
    web = rules.destinations["web"]
    assert isinstance(web, DicomwebDestination)
    assert (web.batch_size, web.verify_tls, web.auth.kind, web.address) == (
        5,
        True,
        "basic",
        "http://127.0.0.1:8042/dicom-web",
    )
    assert rules.destinations["plain"].writeback.mode == "none"


def test_first_matching_rule_that_sets_an_option_decides_it(tmp_path: Path) -> None:
    decision = decide(facts(), ANALYSIS, load(tmp_path))
    pacs, plain, web = (decision.plans[n] for n in ("pacs", "plain", "web"))
    # pacs: chosen by chest (overwrite, SR) then all-ct (no SR): chest comes first and decides both.
    assert pacs.destination.writeback.body_part == "overwrite" and pacs.destination.structured_report
    assert plain.destination.writeback.mode == "attributes" and plain.destination.structured_report
    # web: chosen only by all-ct, which switches its SR off.
    assert not web.destination.structured_report and web.destination.writeback.mode == "none"
    assert web.results is None
    assert pacs.results is not None and pacs.results["facts"]["prediction.body_part"] == "Chest"
    assert pacs.results["final"]["body_part"]["label"] == "Chest"
    assert "image" not in pacs.results  # the raw network output is not frozen into plans


def test_plan_round_trip_keeps_options_and_results(tmp_path: Path) -> None:
    plan = decide(facts(), ANALYSIS, load(tmp_path)).plans["pacs"]
    again = DeliveryPlan.from_json(plan.to_json(), 7)
    assert again == plan


def test_a_version_1_plan_is_still_read() -> None:
    old = {
        "version": 1,
        "destination": {"kind": "dimse", "name": "pacs", "ae_title": "A", "host": "h", "port": 1},
        "rules": ["r"],
        "rules_sha256": None,
        "rules_source": None,
        "generation": 1,
    }
    plan = DeliveryPlan.from_json(old, 1)
    assert plan.results is None and plan.destination.writeback.mode == "none"


def test_a_plan_with_an_unknown_kind_names_it() -> None:
    with pytest.raises(PlanError, match="unknown destination kind 'ftp'"):
        DeliveryPlan.from_json({"version": 2, "destination": {"kind": "ftp"}, "generation": 1}, 3)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ("batch_size: 5", "destinations.web.batch_size", "greater than or equal to 1"),
        ("password_env: WEB_PASSWORD", "destinations.web.auth", "exactly one of password_file"),
        ("url: http://127.0.0.1:8042/dicom-web", "destinations.web.url", "should match pattern"),
    ],
)
def test_bad_dicomweb_settings_name_the_field(tmp_path: Path, change: str, field: str, message: str) -> None:
    broken = {
        "batch_size: 5": "batch_size: 0",
        "password_env: WEB_PASSWORD": "password_env: A, password_file: /x",
        "url: http://127.0.0.1:8042/dicom-web": "url: ftp://x",
    }[change]
    with pytest.raises(RulesError) as info:
        load(tmp_path, RULES.replace(change, broken))
    assert isinstance(info.value, RulesFileError)
    assert field in str(info.value) and message in str(info.value)
