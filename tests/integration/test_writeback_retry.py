"""Write-back copies across retries and a dead letter (canned classification results, pynetdicom peer).

The peer refuses one instance every time (out of resources, retryable): the first attempt sends every
copy and the others are acknowledged; the retry makes and sends the one copy still pending; then the
delivery is dead-lettered. After all that the per-job folder is gone, the originals are as received,
and each attempt left one delivery.writeback row. The answer is disputed, so with the default policy
Body Part Examined is not written, while the private block says why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from sqlalchemy import select

from node.db.models import Instance
from node.writeback import private
from node.writeback.copies import OUTGOING_DIR
from tests.interop.e2e import events
from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for
from tests.peers import in_process_scp
from tests.writebackutil import CannedAnalyser, disputed, sample_results


def test_copies_are_cleaned_after_retries_and_dead_letter(tmp_path: Path) -> None:
    private.register()
    datasets = [synthetic_ct("1.2.826.0.1.3680043.8.498.77", number=n) for n in range(1, 6)]
    refused = str(datasets[2].SOPInstanceUID)
    with in_process_scp(status_for=lambda uid: 0xA700 if uid == refused else 0x0000) as scp:
        rules = {
            "version": 1,
            "destinations": {"pacs": {"ae_title": "TESTSCP", "host": "127.0.0.1", "port": scp.port,
                                      "writeback": {"mode": "attributes"}}},
            "rules": [
                {"name": "all", "when": {"attribute": "Modality", "equals": "CT"}, "send_to": ["pacs"]}
            ],
        }
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
        settings = make_settings(
            tmp_path, rules_path=str(tmp_path / "rules.yaml"), forward={"max_attempts": 2}
        )
        with running_node(settings, analyser=CannedAnalyser(disputed(sample_results()))) as node:
            assert store(node.port, datasets) == [0] * 5
            wait_for(lambda: events(node, "delivery.dead_letter"), timeout=60, what="the dead letter")
            rows = [e.details for e in events(node, "delivery.writeback")]
            with node.sessions() as session:
                spooled = [(node.spool.absolute(r.path), r.sha256) for r in session.scalars(select(Instance))]
            outgoing = node.spool.root / OUTGOING_DIR
            leftovers = list(outgoing.rglob("*")) if outgoing.exists() else []
        received = {r.sop_instance_uid: r.dataset for r in scp.received}

    assert leftovers == []
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == digest for p, digest in spooled)
    assert len(spooled) == 5
    assert [(r["copies"], r["actions"]) for r in rows] == [(5, {"DOUBTFUL": 5}), (1, {"DOUBTFUL": 1})]
    assert rows[0]["body_part"]["disputed"] is True and rows[0]["body_part"]["writable"] is False
    assert sorted(received) == sorted(str(d.SOPInstanceUID) for d in datasets)
    assert [r.sop_instance_uid for r in scp.received].count(refused) == 2  # the retry sent only it
    for ds in received.values():
        assert "BodyPartExamined" not in ds
        block = private.read_block(ds)
        assert block["BodyPartExaminedAction"] == "DOUBTFUL" and block["BodyPartDisagreement"] == "YES"
        assert block["BodyPartLabel"] == "Abdomen"
