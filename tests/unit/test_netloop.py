"""The pynetdicom seams in node/pynetdicom_tuning.py still apply to the installed pynetdicom."""

from __future__ import annotations

import inspect
import socket
import threading

from pynetdicom import association, dul, transport

from node import pynetdicom_tuning as netloop


def test_association_reactor_sleeps_through_module_time() -> None:
    # The shim only works while the reactor calls `time.sleep` through the module's `time` name.
    source = inspect.getsource(association.Association._run_reactor)
    assert "time.sleep(" in source


def test_poll_delay_caps_sleep() -> None:
    netloop.install_poll_delay(0.0002)
    assert netloop.poll_delay_installed() == 0.0002
    assert association.time.sleep is not None
    netloop.install_poll_delay(0.0001)  # idempotent: the same shim, a new cap
    assert netloop.poll_delay_installed() == 0.0001


def test_dul_has_run_loop_delay() -> None:
    assert "_run_loop_delay" in inspect.getsource(dul.DULServiceProvider.__init__)


def test_fast_recv_reads_exact_count_and_partial_on_close() -> None:
    original = transport.AssociationSocket.recv
    netloop.install_fast_recv()
    try:
        assert netloop.fast_recv_installed()
        left, right = socket.socketpair()
        payload = bytes(range(256)) * 1000  # 256000 bytes, more than one kernel read

        class Holder:
            socket = right

        writer = threading.Thread(
            target=lambda: (left.sendall(payload[:200000]), left.sendall(payload[200000:]))
        )
        writer.start()
        got = netloop._recv_exactly(Holder(), len(payload))  # type: ignore[arg-type]
        writer.join()
        assert bytes(got) == payload
        left.sendall(b"abc")
        left.close()
        partial = netloop._recv_exactly(Holder(), 10)  # type: ignore[arg-type]
        assert bytes(partial) == b"abc"
        right.close()
    finally:
        transport.AssociationSocket.recv = original  # type: ignore[method-assign]
