"""The called AE title: checked by default (A-ASSOCIATE-RJ 1/1/7 and an audit row), further titles by
`receive.called_ae_titles`, the check off by `receive.check_called_ae: false`; the title a series was
sent to is stored on its row (series.called_ae)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.models import AuditEvent, Series
from node.pynetdicom_tuning import CONN_OPEN_HANDLERS
from tests.nodeutil import make_settings, running_node, scu, synthetic_ct
from tests.peers import require_binary
from tests.rawpeer import RawPeer


def echoscu(port: int, called_ae: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("echoscu")
    return subprocess.run(
        [binary, "-aet", "ECHOSCU", "-aec", called_ae, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def store_to(port: int, called_ae: str, series_uid: str) -> int:
    assoc = scu().associate("127.0.0.1", port, ae_title=called_ae, evt_handlers=CONN_OPEN_HANDLERS)
    assert assoc.is_established, f"association to {called_ae} refused"
    try:
        return int(assoc.send_c_store(synthetic_ct(series_uid)).Status)
    finally:
        assoc.release()


def called_ae_of(node, series_uid: str) -> str | None:
    with node.sessions() as session:
        return session.scalar(select(Series.called_ae).where(Series.series_uid == series_uid))


def test_wrong_called_ae_is_rejected_and_audited(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path)) as node:
        wrong = echoscu(node.port, "WRONG")
        assert wrong.returncode != 0
        assert "called ae title not recognized" in (wrong.stdout + wrong.stderr).lower()
        with RawPeer(node.port) as peer:
            assert peer.associate(called_ae="WRONG").reject == (1, 1, 7)
        assert echoscu(node.port, "NODE").returncode == 0
        with node.sessions() as session:
            rows = session.scalars(select(AuditEvent).where(AuditEvent.event == "association.rejected")).all()
        assert len(rows) == 2
        assert rows[0].calling_ae == "ECHOSCU" and "WRONG" in rows[0].message
        assert rows[0].details == {"result": 1, "source": 1, "diagnostic": 7, "called_ae": "WRONG"}


def test_further_called_ae_titles_are_answered_and_stored_on_the_series(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, receive={"called_ae_titles": ["ROUTER_QA"]})
    with running_node(settings) as node:
        qa_series, main_series = generate_uid(), generate_uid()
        assert store_to(node.port, "ROUTER_QA", qa_series) == 0
        assert store_to(node.port, "NODE", main_series) == 0
        # The first instance's called AE stays, as calling_ae does.
        assert store_to(node.port, "NODE", qa_series) == 0
        assert called_ae_of(node, qa_series) == "ROUTER_QA"
        assert called_ae_of(node, main_series) == "NODE"
        assert echoscu(node.port, "OTHER").returncode != 0


def test_called_ae_check_can_be_switched_off(tmp_path: Path) -> None:
    with running_node(make_settings(tmp_path, receive={"check_called_ae": False})) as node:
        assert echoscu(node.port, "WRONG").returncode == 0
        series_uid = generate_uid()
        assert store_to(node.port, "ANYTHING", series_uid) == 0
        assert called_ae_of(node, series_uid) == "ANYTHING"


def test_migration_0002_adds_a_nullable_series_called_ae(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import create_engine, inspect, text

    from node.db.migrate import alembic_config

    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    cfg = alembic_config(str(engine.url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO series (series_uid, study_uid, state, generation, instance_count, "
                "first_received_at, last_received_at) VALUES ('1.2.3', '1.2', 'receiving', 1, 0, "
                "'2026-12-01 00:00:00', '2026-12-01 00:00:00')"
            )
        )
        command.upgrade(cfg, "0002")
        assert conn.execute(text("SELECT called_ae FROM series")).scalar_one() is None
        column = next(c for c in inspect(conn).get_columns("series") if c["name"] == "called_ae")
        assert column["nullable"] and column["type"].length == 16
        command.downgrade(cfg, "0001")
        assert "called_ae" not in {c["name"] for c in inspect(conn).get_columns("series")}
