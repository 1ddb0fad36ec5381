"""receive.max_association_seconds: an association kept open past the limit is aborted and audited,
while a new association (a good peer) gets in at once."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from node.db.models import AuditEvent
from tests.nodeutil import make_settings, running_node, scu, store, synthetic_ct, wait_for


def test_an_association_open_past_the_limit_is_aborted_and_a_good_peer_gets_in(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, receive={"max_association_seconds": 1.0})
    with running_node(settings) as node:
        lingering = scu("LINGERER").associate("127.0.0.1", node.port, ae_title="NODE")
        assert lingering.is_established
        assert int(lingering.send_c_echo().Status) == 0x0000
        wait_for(lambda: lingering.is_aborted or not lingering.is_established, timeout=15, what="the abort")
        assert lingering.is_aborted
        # A good peer: a new association stores at once.
        assert store(node.port, [synthetic_ct()]) == [0x0000]
        with node.sessions() as session:
            (aborted,) = session.scalars(
                select(AuditEvent).where(
                    AuditEvent.event == "association.aborted", AuditEvent.calling_ae == "LINGERER"
                )
            )
        assert "longer than receive.max_association_seconds" in aborted.message
        assert aborted.details["limit"] == "max_association_seconds"


def test_no_limit_when_zero(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, receive={"max_association_seconds": 0})
    with running_node(settings) as node:
        assert node.scp._watchdog is None
