"""The whole receive -> complete -> route -> deliver path on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom.uid import generate_uid

from node.audit.query import series_story
from tests.interop.e2e import all_delivered, write_rules
from tests.nodeutil import make_settings, recording_sink, running_node, store, synthetic_ct, wait_for


def test_full_path_with_concurrent_senders(tmp_path: Path, db_url: str) -> None:
    received: list[str] = []
    sink, port = recording_sink(received)
    rules = write_rules(
        tmp_path / "rules.yaml", {"sink": {"ae_title": "SINK", "host": "127.0.0.1", "port": port}}
    )
    settings = make_settings(tmp_path, rules_path=str(rules), database_url=db_url)
    series = [generate_uid() for _ in range(3)]
    statuses: list[list[int]] = []
    try:
        with running_node(settings) as node:
            # Three associations at once, each sending one series of 8 instances.
            senders = [
                threading.Thread(
                    target=lambda uid=uid: statuses.append(
                        store(
                            node.port, [synthetic_ct(uid, study_uid=series[0], number=n) for n in range(1, 9)]
                        )
                    )
                )
                for uid in series
            ]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join(60)
            assert statuses == [[0] * 8] * 3
            wait_for(lambda: all_delivered(node, 3), timeout=60, what="three deliveries")
            with node.sessions() as session:
                story = series_story(session, series[1])
            assert story["series"]["instance_count"] == 8
            names = [e["event"] for e in story["events"]]
            for expected in (
                "instance.stored",
                "series.complete",
                "route.decision",
                "delivery.queued",
                "delivery.attempt",
                "delivery.done",
            ):
                assert expected in names, f"{expected} missing from {sorted(set(names))}"
        assert len(received) == 24 and len(set(received)) == 24
    finally:
        sink.shutdown()


def test_one_series_from_two_associations_at_once_counts_every_instance(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, database_url=db_url, completion={"quiet_seconds": 3600})
    series_uid, study_uid = generate_uid(), generate_uid()
    halves = [range(1, 16), range(16, 31)]
    statuses: list[list[int]] = []
    with running_node(settings) as node:
        senders = [
            threading.Thread(
                target=lambda numbers=numbers: statuses.append(
                    store(node.port, [synthetic_ct(series_uid, study_uid, number=n) for n in numbers])
                )
            )
            for numbers in halves
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        assert sorted(map(len, statuses)) == [15, 15] and all(s == 0 for batch in statuses for s in batch)
        with node.sessions() as session:
            story = series_story(session, series_uid)
        # A lost update on the series row would count fewer.
        assert story["series"]["instance_count"] == 30
        assert story["instances"]["count"] == 30
