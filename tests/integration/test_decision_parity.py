"""The dry run (`rules test`) and the running node reach the same Decision for the same series.

Both build the series' facts with node.facts.series_facts, analyse it with the same analyser (the
shipped starter classifier, as configured by default) and call node.rules.decide. Two real CT series are
sent to a node over C-STORE; the decision the node recorded in its `route.decision` audit row is compared
with the dry run's on the same files, field by field (traces, matched rules, each frozen plan).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
import yaml

from node.classify.factory import build_analyser
from node.config import ClassifySettings
from node.rules import load_rules
from node.rules.dryrun import decide_folder
from tests.interop.e2e import events
from tests.nodeutil import make_settings, running_node, store, wait_for
from tests.peers import REPO_ROOT, in_process_scp, unpack_ct

SERIES = ("kits00072_arterial_slab", "qa_ge_head_tilt")


def example_rules_to(path: Path, port: int) -> Path:
    """rules/example.yaml with every destination pointed at one local peer."""
    rules = yaml.safe_load((REPO_ROOT / "rules" / "example.yaml").read_text())
    for destination in rules["destinations"].values():
        destination.update(host="127.0.0.1", port=port)
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("parity")
    for name in SERIES:
        shutil.copytree(unpack_ct(name), folder / name)
    return folder


def test_dry_run_and_node_decide_the_same(tmp_path: Path, ct_folder: Path) -> None:
    with in_process_scp() as sink:
        rules_path = example_rules_to(tmp_path / "rules.yaml", sink.port)
        settings = make_settings(tmp_path, rules_path=rules_path, classify={"enabled": True})
        with running_node(settings) as node:
            for name in SERIES:
                files = sorted((ct_folder / name).glob("*.dcm"))
                statuses = store(node.port, [pydicom.dcmread(f) for f in files], ae_title="PARITYSCU")
                assert set(statuses) == {0}
            wait_for(lambda: len(events(node, "route.decision")) == len(SERIES), timeout=120, what="routing")
            recorded = {row.series_uid: row.details for row in events(node, "route.decision")}

    analyser, _ = build_analyser(ClassifySettings())
    try:
        _, decisions = decide_folder(
            load_rules(rules_path), ct_folder, analyser, calling_ae="PARITYSCU", called_ae="NODE"
        )
    finally:
        analyser.close()  # type: ignore[attr-defined]
    assert len(decisions) == len(SERIES)
    for entry, decision, _analysis in decisions:
        node_decision = recorded[entry.uid]
        assert node_decision is not None
        dry = decision.to_audit()
        assert dry == node_decision, f"series {entry.uid}: dry run and node differ"
        assert dry["plans"], "every series goes somewhere under the example rules"
        for plan in dry["plans"].values():
            assert plan["destination"]["port"] == sink.port
            assert plan["rules_sha256"] == load_rules(rules_path).sha256
