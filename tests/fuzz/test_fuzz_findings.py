"""What the fuzzer found outside ingest, replayed with the exact bytes (docs/security.md `## Fuzzing`).

A-ASSOCIATE-RQ followed at once (before the A-ASSOCIATE-AC) by a P-DATA-TF: the DUL aborts (Sta13)
while the association thread is still accepting; its A-ASSOCIATE-AC (Evt7) raised InvalidEventError
in pynetdicom's DUL thread, a traceback on stderr per connection (node.pynetdicom_tuning section 7).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.app import NodeService
from tests.fuzz import checks
from tests.fuzz.dataset_mutators import encode
from tests.fuzz.pdu_mutators import Association
from tests.nodeutil import make_settings, running_node, synthetic_ct
from tests.rawpeer import A_ABORT, RawPeer


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeService]:
    with running_node(make_settings(tmp_path)) as service:
        yield service


def test_data_before_the_accept_is_aborted_without_a_traceback(
    node: NodeService, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[str] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: errors.append(f"{args.exc_type.__name__}: {args.exc_value}")
    try:
        ds = synthetic_ct()
        request, command, data, _ = Association(str(ds.SOPInstanceUID), encode(ds, explicit=True).data).pdus()
        with caplog.at_level(logging.ERROR):
            for _ in range(5):
                assert node.port is not None
                with RawPeer(node.port) as peer:
                    peer.send(request + command + data)  # one write: the node reads on before accepting
                    answer = peer.answer(timeout=10)
                    while answer.kind == "pdu" and answer.pdu_type != A_ABORT:
                        answer = peer.answer(timeout=10)
                    assert answer.pdu_type == A_ABORT, answer
            assert checks.good_peer_problem(node.port) is None
    finally:
        threading.excepthook = previous
    assert errors == []
    assert not [
        r for r in caplog.records if "InvalidEvent" in r.getMessage() or "Invalid event" in r.getMessage()
    ]
