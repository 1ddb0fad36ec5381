"""End to end with dcmtk on both sides: storescu sends a real CT series to the node, one spooled file is
damaged on disk before the node forwards it, and dcmtk's storescp (which aborts the association on the
data set it cannot read) receives all the others. The delivery ends done and partial; the damaged
instance is quarantined with an audit row.

The destination is down at first (its port not yet listened on): the file is damaged while the node
waits to retry, then storescp starts on that port."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from node.db.models import Instance, JobState
from node.deliver.wire import dataset_offset
from tests.interop.e2e import events, jobs_in, storescu, write_rules
from tests.nodeutil import make_settings, running_node, wait_for
from tests.peers import ct_files, free_port, run_storescp

pytestmark = pytest.mark.interop


def test_real_series_reaches_storescp_but_the_damaged_instance(tmp_path: Path) -> None:
    files = ct_files("qa_ge_head_tilt")
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    port = free_port()
    rules = write_rules(tmp_path / "rules.yaml", {"pacs": {"ae_title": "STORESCP", "host": "127.0.0.1",
                                                          "port": port}})
    settings = make_settings(
        tmp_path,
        rules_path=str(rules),
        forward={"max_attempts": 10, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.5},
    )
    with running_node(settings) as node:
        storescu(node.port, files)
        wait_for(lambda: events(node, "delivery.retry"), timeout=60, what="the first failed attempt")
        with node.sessions() as session:
            row = session.scalars(select(Instance).order_by(Instance.instance_number).offset(10)).first()
            assert row is not None
            damaged_uid, path = row.sop_instance_uid, node.spool.absolute(row.path)
        data = path.read_bytes()
        offset = dataset_offset(path)
        assert offset is not None
        path.write_bytes(data[:offset] + b"\xff" * 64 + data[offset + 64 :])
        with run_storescp(tmp_path / "pacs", port=port) as scp:
            wait_for(lambda: events(node, "delivery.done"), timeout=120, what="the delivery to end")
            written = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()}
        [job] = jobs_in(node, "deliver")
        [quarantined] = events(node, "instance.quarantined")
        [done] = events(node, "delivery.done")

    assert written == uids - {damaged_uid}
    assert job.state == JobState.DONE
    assert quarantined.sop_instance_uid == damaged_uid and quarantined.destination == "pacs"
    assert quarantined.details is not None and quarantined.details["by"] == "node"
    assert str(path) in quarantined.message and "cannot be parsed" in quarantined.message
    assert done.details is not None and done.details["partial"] is True
    assert done.details["sent_total"] == len(files) - 1 and done.details["quarantined_total"] == 1
