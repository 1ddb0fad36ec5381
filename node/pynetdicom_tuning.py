"""The one place where the node tunes pynetdicom's networking. Keep every such tweak here.

1. TCP_NODELAY. dcmtk and pynetdicom leave Nagle's algorithm on; on C-STORE traffic (a small
   response after each large request) it costs 5-30x throughput. `set_nodelay` is an EVT_CONN_OPEN
   handler for both the SCP and the SCU side.

2. Poll delay. pynetdicom's association reactor sleeps a fixed 1 ms per loop and its DUL reactor
   sleeps `_run_loop_delay` (1 ms) when idle. Those sleeps, not CPU, set the per-instance floor
   (~2.5 ms against dcmtk's ~0.23 ms). `install_poll_delay` replaces the `time` module seen by
   pynetdicom's association module with a shim whose `sleep` is capped at the configured delay, and
   sets the DUL delay per association (`tune_association`). Nothing else of pynetdicom is changed;
   tests/unit/test_netloop.py fails if pynetdicom's internals move so that the seam no longer applies.

3. Large reads. pynetdicom's AssociationSocket.recv reads a PDU 4 KiB at a time into a growing
   bytearray (about 130 recv calls and Python loop turns per 512x512 CT image).
   `install_fast_recv` replaces that one method with a version of the same contract (read exactly
   nr_bytes, return what was read if the peer closes) that reads into a preallocated buffer with
   recv_into, as much as the kernel has. Measured: about +10% images/s on the receive path.
"""

from __future__ import annotations

import socket
import time as _time
import types
from typing import Any

from pynetdicom import association as _association
from pynetdicom import evt
from pynetdicom import transport as _transport

_DEFAULT_DUL_DELAY = 0.001


class _CappedSleepTime(types.ModuleType):
    """A stand-in for the `time` module whose sleep never exceeds `cap` seconds."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        _time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def install_poll_delay(seconds: float) -> None:
    """Cap pynetdicom's association-reactor sleep at `seconds` (process wide, idempotent)."""
    current = _association.__dict__.get("time")
    if isinstance(current, _CappedSleepTime):
        current.cap = seconds
    else:
        _association.time = _CappedSleepTime(seconds)


def _recv_exactly(self: _transport.AssociationSocket, nr_bytes: int) -> bytearray:
    """AssociationSocket.recv with large reads: exactly nr_bytes, or fewer if the peer closed."""
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    sock = self.socket
    assert sock is not None
    read = 0
    while read < nr_bytes:
        got = sock.recv_into(view[read:], nr_bytes - read)
        if not got:  # connection closed: return what arrived, as pynetdicom's own recv does
            del view
            del buffer[read:]
            return buffer
        read += got
    return buffer


_ORIGINAL_RECV = _transport.AssociationSocket.recv


def install_fast_recv() -> None:
    """Use _recv_exactly for every pynetdicom association socket in this process (idempotent)."""
    _transport.AssociationSocket.recv = _recv_exactly  # type: ignore[method-assign]


def fast_recv_installed() -> bool:
    return _transport.AssociationSocket.recv is _recv_exactly


def poll_delay_installed() -> float | None:
    current = _association.__dict__.get("time")
    return current.cap if isinstance(current, _CappedSleepTime) else None


def _socket_of(event: evt.Event) -> socket.socket | None:
    transport = getattr(event.assoc.dul, "socket", None)
    return getattr(transport, "socket", None)


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket."""
    sock = _socket_of(event)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tune_association(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY plus the DUL idle-poll delay from install_poll_delay."""
    set_nodelay(event)
    cap = poll_delay_installed()
    if cap is not None and hasattr(event.assoc.dul, "_run_loop_delay"):
        event.assoc.dul._run_loop_delay = min(cap, _DEFAULT_DUL_DELAY)


CONN_OPEN_HANDLERS = [(evt.EVT_CONN_OPEN, tune_association)]
