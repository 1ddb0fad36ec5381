"""Who sent an instance, whether a replacement comes from the same sender, and whether the node is open.

A sender is the calling AE title and the host it connected from. For STOW-RS there is no AE title and
the host is the audit's peer without its port ("http:user@10.0.0.5"), so an HTTP user is a sender of
its own. A replacement (same SOP Instance UID, other bytes) is "from the same sender" only when both
parts are equal and known: an instance whose sender is unknown (indexed at start from the spool, or
stored before the node recorded senders) can be replaced only as `replacement_from_other_sender` says.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from node.config import ReceiveSettings

# PS3.7 Annex C general status "Refused: Not authorized": the sender may not replace this instance.
# Not A7xx (the node has the resources: a retry would fail again) nor Cxxx (the data set was understood).
STATUS_NOT_AUTHORIZED = 0x0124


@dataclass(frozen=True)
class Sender:
    ae: str | None
    host: str | None

    @classmethod
    def of(cls, calling_ae: str | None, peer: str | None) -> Sender:
        return cls(calling_ae or None, host_of(peer))

    @property
    def known(self) -> bool:
        return self.ae is not None or self.host is not None

    def same_as(self, other: Sender) -> bool:
        """True only when this (the stored instance's) sender is known and equal to `other`."""
        return self.known and self == other

    def describe(self) -> str:
        if not self.known:
            return "an unknown sender"
        return f"{self.ae or '(no AE title)'} at {self.host or '(unknown host)'}"

    def to_audit(self) -> dict[str, Any]:
        return {"calling_ae": self.ae, "host": self.host}


def host_of(peer: str | None) -> str | None:
    """The peer without its port: '10.0.0.5:40001' -> '10.0.0.5', '::1:40001' -> '::1'."""
    if not peer:
        return None
    host, sep, port = peer.rpartition(":")
    return host if sep and host and port.isdigit() else peer


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches only this machine ('0.0.0.0' and '::' reach every interface)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # cannot tell: warn rather than stay silent
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def open_to_anyone(receive: ReceiveSettings) -> str | None:
    """The start-up warning when any calling AE can store from other machines, else None."""
    if receive.allowed_callers or is_loopback(receive.host):
        return None
    return (
        f"receive.allowed_callers is empty and the DICOM listener is on {receive.host}:{receive.port}, "
        "not a loopback address: any calling AE title on any host that reaches the port can store "
        "instances. List the modalities and PACS in receive.allowed_callers (docs/deployment.md)"
    )
