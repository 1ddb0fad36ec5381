"""Service lifecycle: rules reload (SIGHUP and in-process), graceful SIGTERM, manual completion, retention."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import threading
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from node import retention
from node.app import open_database
from node.cli import main as cli_main
from node.config import Settings
from node.db.models import AuditEvent, Instance, Series, utcnow
from node.pynetdicom_tuning import CONN_OPEN_HANDLERS
from tests.interop.e2e import all_delivered, events, write_rules
from tests.nodeutil import (
    NodeProcess,
    make_settings,
    node_process_settings,
    recording_sink,
    running_node,
    scu,
    store,
    synthetic_ct,
    wait_for,
)
from tests.peers import free_port
from tests.rawpeer import RawPeer


def test_reload_keeps_old_rules_when_new_file_is_invalid(tmp_path: Path) -> None:
    received: list[str] = []
    sink, port = recording_sink(received)
    rules = write_rules(
        tmp_path / "rules.yaml", {"sink": {"ae_title": "SINK", "host": "127.0.0.1", "port": port}}
    )
    try:
        with running_node(make_settings(tmp_path, rules_path=str(rules))) as node:
            rules.write_text(
                "version: 1\nrules:\n  - name: broken\n    when: {attribute: NoSuchKeyword, equals: 1}\n"
            )
            message = node.reload_rules()
            assert "previous rules stay in force" in message
            failed = events(node, "rules.reload_failed")
            assert failed and "broken" in failed[0].message
            # The old rules still route.
            store(node.port, [synthetic_ct()])
            wait_for(lambda: all_delivered(node, 1), what="delivery under the old rules")
            # A valid file is taken.
            write_rules(
                rules, {"sink": {"ae_title": "SINK", "host": "127.0.0.1", "port": port}}, modality="MR"
            )
            assert "loaded 1 rules" in node.reload_rules()
            series_uid = generate_uid()
            store(node.port, [synthetic_ct(series_uid)])
            wait_for(lambda: len(events(node, "route.decision")) == 2, what="second routing")
            assert events(node, "route.decision")[-1].details["destinations"] == {}
    finally:
        sink.shutdown()


def test_sighup_reloads_and_sigterm_stops_gracefully(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules.yaml", {"x": {"ae_title": "X", "host": "127.0.0.1", "port": 104}})
    node = NodeProcess(tmp_path, node_process_settings(tmp_path, free_port(), rules)).start()
    sessions = None
    try:
        from node.app import open_database
        from node.config import Settings

        sessions = open_database(Settings.model_validate(node_process_settings(tmp_path, node.port, rules)))
        assert node.process is not None
        node.process.send_signal(signal.SIGHUP)

        def loaded() -> bool:
            with sessions() as session:
                return (
                    session.scalar(select(AuditEvent).where(AuditEvent.event == "rules.loaded")) is not None
                )

        wait_for(loaded, what="rules.loaded after SIGHUP")
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(timeout=60) == 0
        with sessions() as session:
            assert session.scalar(select(AuditEvent).where(AuditEvent.event == "node.stopped")) is not None
    finally:
        node.stop()


def test_cli_series_complete_marks_complete_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, completion={"quiet_seconds": 3600})
    series_uid = generate_uid()
    with running_node(settings) as node:
        store(node.port, [synthetic_ct(series_uid)])
        data_dir = str(settings.data_dir)
        assert cli_main(["series", "complete", series_uid, "--data-dir", data_dir]) == 0
        assert cli_main(["series", "complete", series_uid, "--data-dir", data_dir]) == 1
        wait_for(lambda: events(node, "route.decision"), what="routing after manual completion")
        [complete] = events(node, "series.complete")
        assert complete.details["reason"] == "manual"
    assert cli_main(["series", "complete", "1.2.3.4.5", "--data-dir", data_dir]) == 2


def test_retention_deletes_files_only_after_delivery(tmp_path: Path) -> None:
    received: list[str] = []
    sink, port = recording_sink(received)
    rules = write_rules(
        tmp_path / "rules.yaml", {"sink": {"ae_title": "SINK", "host": "127.0.0.1", "port": port}}
    )
    settings = make_settings(tmp_path, rules_path=str(rules), retention={"keep_seconds": 600})
    try:
        with running_node(settings) as node:
            series_uid = generate_uid()
            store(node.port, [synthetic_ct(series_uid, number=n) for n in (1, 2)])
            files = list(node.spool.instances_dir.rglob("*.dcm"))
            assert len(files) == 2
            wait_for(lambda: all_delivered(node, 1), what="delivery")
            with node.sessions() as session:
                assert retention.sweep(session, node.spool, 600) == 0  # too early
                later = utcnow() + dt.timedelta(seconds=601)
                assert retention.sweep(session, node.spool, 600, now=later) == 1
                series = session.scalar(select(Series).where(Series.series_uid == series_uid))
                assert series is not None and series.files_deleted_at is not None
            assert not any(f.exists() for f in files)
            assert events(node, "retention.deleted")[0].details["instances"] == 2
            assert len(received) == 2
    finally:
        sink.shutdown()


def node_accepted(pid: int, client: socket.socket) -> bool:
    """True once the node process has accept()ed the connection of `client` (the kernel completes
    the handshake before that): the server end's socket inode is among the process's descriptors."""
    client_port = client.getsockname()[1]
    descriptors = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            descriptors.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[2].split(":")[1], 16) == client_port and f"socket:[{fields[9]}]" in descriptors:
                return True
    return False


def test_sigterm_does_not_wait_for_a_connection_that_never_negotiated(tmp_path: Path) -> None:
    settings = node_process_settings(tmp_path, free_port())
    settings["receive"]["negotiation_timeout"] = 300  # the negotiation timeout is not what ends it
    node = NodeProcess(tmp_path, settings).start()
    try:
        assert node.process is not None
        with RawPeer(node.port) as peer:
            pid = node.process.pid
            wait_for(lambda: node_accepted(pid, peer.sock), what="the node to accept the raw connection")
            node.process.send_signal(signal.SIGTERM)
            # The drain (30 s) waits for established associations only.
            assert node.process.wait(timeout=25) == 0  # below the 30 s drain, above a loaded start-up
    finally:
        node.stop()


def test_second_sigterm_aborts_a_store_in_progress_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    settings = node_process_settings(tmp_path, free_port())
    node = NodeProcess(tmp_path, settings).start()
    acknowledged: list[str] = []
    stop = threading.Event()

    def send_until_stopped() -> None:
        assoc = scu().associate("127.0.0.1", node.port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS)
        series_uid = generate_uid()
        number = 0
        try:
            while assoc.is_established and not stop.is_set():
                number += 1
                ds = synthetic_ct(series_uid, number=number)
                status = assoc.send_c_store(ds)
                if int(status.get("Status", -1)) != 0:
                    break
                acknowledged.append(str(ds.SOPInstanceUID))
        finally:
            if assoc.is_established:
                assoc.abort()

    sender = threading.Thread(target=send_until_stopped, daemon=True)
    try:
        assert node.process is not None
        sender.start()
        wait_for(lambda: len(acknowledged) >= 5, what="stores under way")
        node.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "refusing new associations" in node.log_path.read_text(), what="the drain")
        during = len(acknowledged)
        wait_for(lambda: len(acknowledged) > during + 3, what="the store going on during the drain")
        node.process.send_signal(signal.SIGTERM)
        # Well before the 30 s drain: the second signal aborts the association in progress.
        assert node.process.wait(timeout=15) == 0
        sender.join(30)
        assert not sender.is_alive()
    finally:
        stop.set()
        node.stop()
    sessions = open_database(Settings.model_validate(settings))
    with sessions() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    assert acknowledged and set(acknowledged) <= stored
