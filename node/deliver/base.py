"""What every forwarder shares: the files to send, the outcome of one attempt, the Sender protocol.

A delivery worker lists the spooled files of one series generation, drops those already recorded as
sent, and calls ``Sender.send``. The sender reports each delivered instance through ``on_sent`` as soon
as the peer answered it (so that a later attempt skips it) and returns a ``SendOutcome``; network
trouble never escapes as an exception.

One bad instance never blocks its series: an instance that the destination refuses for what it is
(``is_instance_refusal``) or that cannot be read back from the spool is *quarantined* for the delivery
(``SendOutcome.quarantined``) and the sender goes on with the others. Trouble with the destination
itself (no connection, association refused or lost, timeouts, out of resources) stays an attempt
failure that is retried with backoff (docs/forwarding.md, "One bad instance").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from node.deliver.destinations import Destination

logger = logging.getLogger(__name__)

# C-STORE statuses that mean "the peer has the instance" (PS3.4 B.2.3): success and the warnings
# coercion of data elements (B000), elements discarded (B006), data set does not match SOP class (B007).
SUCCESS = 0x0000
DELIVERED_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})


def is_delivered(status: int) -> bool:
    """True for a C-STORE status that counts as delivered (success or one of the storage warnings)."""
    return status == SUCCESS or status in DELIVERED_WARNINGS


def is_instance_refusal(status: int) -> bool:
    """True for a failure status that is about the instance itself, not about the destination
    (PS3.4 B.2.3, PS3.7 C): A9xx "data set does not match SOP class", Cxxx "cannot understand" and
    0117 "invalid SOP instance". Sending the same bytes again gets the same answer, and the other
    instances of the series are not concerned: the instance is quarantined, the others are sent.

    Not per instance: A7xx "out of resources" and 0110 "processing failure" (the destination's
    trouble, retried), and the other general failures (0122 SOP class not supported, 0124 not
    authorised, ...), which refuse every instance alike and fail the delivery as before.
    """
    return 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or status == 0x0117


def status_is_retryable(status: int) -> bool:
    """Whether a C-STORE failure status may go away on a later attempt.

    Out of resources (A7xx) and the "processing failure" (0110) are transient on the peer side; the
    others (SOP class not supported, data set does not match, cannot understand, not authorised ...)
    will answer the same next time.
    """
    return 0xA700 <= status <= 0xA7FF or status == 0x0110


@dataclass(frozen=True)
class InstanceFile:
    """One spooled instance (DICOM Part 10 file) to forward."""

    instance_id: int
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class SendOutcome:
    """The result of one ``Sender.send`` call.

    statuses: the DIMSE status the peer answered, per instance id (only instances that got an answer).
    sent: instance ids the peer acknowledged with success or a delivered warning, in sending order
        (``on_sent`` was called for each of them).
    failed: instance id -> why that instance was not delivered, for reasons that fail the attempt (a
        retryable status, no acceptable presentation context, a refusal of every instance alike ...).
    quarantined: instance id -> why that instance is left out of this delivery for good: a
        per-instance refusal (``is_instance_refusal``, its status in ``statuses``) or a spooled file
        that cannot be read, parsed or transcoded. Quarantined instances do not set ``error``.
    error: None when every instance was delivered; otherwise one line naming destination, AE,
        host:port and what happened (the first problem, plus a count of instance failures).
    retryable: when error is set, whether trying again later may help (network trouble, out of
        resources, a transient rejection) or not (permanent rejection, SOP class or syntax refused).
    duration_seconds: wall time of the whole call.
    associations: how many associations were opened (more than one when SOP classes had to be split
        over several associations, or after a stall).
    """

    statuses: dict[int, int] = field(default_factory=dict)
    sent: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    quarantined: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = False
    duration_seconds: float = 0.0
    associations: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


OnSent = Callable[[InstanceFile, int], None]


class Sender(Protocol):
    """Sends a batch of instances to one destination.

    ``on_sent(instance, status)`` is called on the sending thread right after each instance that got a
    success or delivered-warning status. An exception raised by ``on_sent`` propagates (it is the
    caller's bug or database trouble, not a network problem) after the association is released.
    """

    def send(
        self, destination: Destination, files: Sequence[InstanceFile], on_sent: OnSent
    ) -> SendOutcome: ...


def timed_send(
    where: str, name: str, files: Sequence[InstanceFile], send_all: Callable[[SendOutcome], None], unit: str
) -> SendOutcome:
    """Run one sender's attempt: `send_all` fills the outcome; this times it and logs the result in one
    line (`unit` names what outcome.associations counts, e.g. "association(s)")."""
    started = time.monotonic()
    outcome = SendOutcome()
    try:
        if files:
            send_all(outcome)
    finally:
        outcome.duration_seconds = time.monotonic() - started
    if outcome.quarantined:
        logger.warning(
            "forward to %s: %d instance(s) quarantined (refused by the peer or unreadable)",
            name,
            len(outcome.quarantined),
        )
    if outcome.error is None:
        logger.info(
            "forwarded %d instances to %s in %.2f s over %d %s",
            len(outcome.sent),
            where,
            outcome.duration_seconds,
            outcome.associations,
            unit,
        )
    else:
        logger.warning("forward to %s: %s", name, outcome.error)
    return outcome
