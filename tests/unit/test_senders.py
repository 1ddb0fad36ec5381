"""Who a sender is, when a replacement counts as from the same sender, and when the node is open."""

from __future__ import annotations

import pytest

from node.config import AllowedCaller, ReceiveSettings
from node.receive.senders import Sender, host_of, is_loopback, open_to_anyone


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("10.0.0.5:40001", "10.0.0.5"),
        ("::1:40001", "::1"),
        ("http:alice@10.0.0.5:5555", "http:alice@10.0.0.5"),
        ("http:unknown", "http:unknown"),
        (None, None),
        ("", None),
    ],
)
def test_host_of_drops_only_the_port(peer: str | None, host: str | None) -> None:
    assert host_of(peer) == host


def test_same_sender_needs_a_known_equal_ae_and_host() -> None:
    original = Sender.of("CT1", "10.0.0.5:40001")
    assert original.same_as(Sender.of("CT1", "10.0.0.5:50123"))  # another connection, same sender
    assert not original.same_as(Sender.of("CT2", "10.0.0.5:40001"))
    assert not original.same_as(Sender.of("CT1", "10.0.0.6:40001"))
    # An instance whose sender is unknown (indexed at start) has no "same sender".
    assert not Sender(None, None).same_as(Sender(None, None))
    assert Sender(None, None).describe() == "an unknown sender"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_open_to_anyone_only_without_callers_on_a_non_loopback_address() -> None:
    assert open_to_anyone(ReceiveSettings(host="0.0.0.0", port=104)) is not None
    assert open_to_anyone(ReceiveSettings(host="127.0.0.1")) is None
    closed = ReceiveSettings(host="0.0.0.0", allowed_callers=[AllowedCaller(ae_title="CT1")])
    assert open_to_anyone(closed) is None
