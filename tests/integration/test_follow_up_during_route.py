"""A follow-up instance that arrives while the previous generation is being routed must still be
delivered (docs/operations.md, "Late instances"). Found by scripts/crash_soak.py: after a kill -9 the
restarted node completes a partial series at once, and the sender's re-sent instances start a follow-up
while generation 1 is routed. Router._write checked `state == complete` on the row it had read and then
wrote `routed` by id, overwriting the follow-up's `receiving`; it now writes with a conditional UPDATE."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from node import routing
from node.analysis import AnalysisResult
from node.audit import Where
from node.db.models import Series
from tests.interop.e2e import all_delivered, write_rules
from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for
from tests.peers import in_process_scp


def test_follow_up_arriving_while_the_first_generation_is_routed_is_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    series_uid, study_uid = generate_uid(), generate_uid()
    late = synthetic_ct(series_uid, study_uid, 4)
    late_statuses: list[int] = []
    port: list[int] = []
    original = routing._audit_analysis

    def late_instance_in_the_window(session: Session, analysis: AnalysisResult, where: Where) -> None:
        # Router._write has read the series row (complete, generation 1) and not yet written it: the
        # window in which scripts/crash_soak.py saw the re-sent instances of a restarted sender arrive.
        if not late_statuses:
            late_statuses.extend(store(port[0], [late]))
        original(session, analysis, where)

    monkeypatch.setattr(routing, "_audit_analysis", late_instance_in_the_window)
    with in_process_scp() as sink:
        destination = {"sink": {"ae_title": sink.ae_title, "host": "127.0.0.1", "port": sink.port}}
        rules = write_rules(tmp_path / "rules.yaml", destination)
        settings = make_settings(tmp_path, rules_path=str(rules), completion={"quiet_seconds": 0.3})
        with running_node(settings) as node:
            assert node.port is not None
            port.append(node.port)
            first = [synthetic_ct(series_uid, study_uid, n) for n in (1, 2, 3)]
            assert store(node.port, first) == [0, 0, 0]
            wait_for(lambda: late_statuses, what="the late instance sent during the route step")
            assert late_statuses == [0]  # acknowledged: generation 2 started
            wait_for(lambda: len(set(sink.uids())) >= 3, what="generation 1 delivered")
            # Generation 2 completes after its quiet time and is delivered: 2 deliveries in all.
            wait_for(lambda: all_delivered(node, 2), timeout=10, what="the follow-up delivered")
            with node.sessions() as session:
                row = session.execute(
                    select(Series.state, Series.generation).where(Series.series_uid == series_uid)
                ).one()
            assert tuple(row) == ("routed", 2)
        assert str(late.SOPInstanceUID) in sink.uids()
