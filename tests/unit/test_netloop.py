"""The pynetdicom seams in node/pynetdicom_tuning.py still apply to the installed pynetdicom.

Each test names what the tuning module relies on in pynetdicom's source; if pynetdicom moves it,
the test fails, and the seam must be revisited before the node can rely on it again.
"""

from __future__ import annotations

import inspect
import socket
import socketserver
import threading
import time
import types

from pynetdicom import _config, association, dimse, dimse_messages, dul, fsm, transport

from node import pynetdicom_tuning as netloop


def test_association_reactor_sleeps_through_module_time() -> None:
    # The shim only works while the reactor calls `time.sleep` through the module's `time` name.
    source = inspect.getsource(association.Association._run_reactor)
    assert "time.sleep(" in source


def test_install_is_idempotent_and_sets_the_poll_cap() -> None:
    netloop.install(0.0002)
    assert netloop.installed()
    assert netloop.poll_delay_installed() == 0.0002
    netloop.install(0.0001)  # idempotent: the same shim, a new cap
    assert netloop.poll_delay_installed() == 0.0001
    assert netloop.installed()
    assert _config.STORE_SEND_CHUNKED_DATASET is True


def test_dul_has_run_loop_delay() -> None:
    assert "_run_loop_delay" in inspect.getsource(dul.DULServiceProvider.__init__)


def test_dul_reads_pdus_through_read_pdu_data() -> None:
    # _read_pdu replaces _read_pdu_data: the transport check must still call it, and it must still
    # be the method that reads the 6-byte header and queues the decoded PDU with its event.
    assert "self._read_pdu_data()" in inspect.getsource(dul.DULServiceProvider._is_transport_event)
    original = inspect.getsource(netloop._ORIGINAL_READ_PDU)
    assert "def _read_pdu_data(self)" in original
    assert "self.socket.recv(6)" in original
    assert 'struct.unpack(">BBL"' in original
    assert "self._decode_pdu(" in original and "self._recv_pdu.put(pdu)" in original
    assert "self.event_queue.put(" in original


def test_acceptor_waits_for_the_rq_on_to_user_queue_for_acse_timeout() -> None:
    # _wake_acceptor puts None there; ARTIM is the acse_timeout.
    source = inspect.getsource(association.Association.run_reactor)
    assert "receive_pdu(wait=True, timeout=self.acse_timeout)" in source
    assert "if primitive is None:" in source
    assert "artim_timer.timeout = value" in inspect.getsource(association.Association)
    assert fsm.TRANSITION_TABLE[("Evt17", "Sta2")] == "AA-5"
    assert fsm.TRANSITION_TABLE[("Evt17", "Sta6")] == "AA-4"


def test_dimse_seams() -> None:
    # _receive_primitive wraps receive_primitive, which decode_msg serves and which raises KeyError
    # on an unknown command field; _serve_request wraps the method that drops invalid requests.
    assert "dimse.receive_primitive(" in inspect.getsource(fsm.DT_2)
    assert "_MESSAGE_TYPES[" in inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    assert "self.message.decode_msg(primitive" in inspect.getsource(netloop._ORIGINAL_RECEIVE_PRIMITIVE)
    assert "is_valid_request" in inspect.getsource(netloop._ORIGINAL_SERVE_REQUEST)
    assert dimse.DIMSEServiceProvider.receive_primitive in (
        netloop._ORIGINAL_RECEIVE_PRIMITIVE,
        netloop._receive_primitive,
    )


def test_server_seams() -> None:
    # HostLimitedServer relies on socketserver's verify_request and pynetdicom's process_request_thread
    # and on AssociationServer.shutdown removing the server from ae._servers.
    assert "self.verify_request(" in inspect.getsource(socketserver.BaseServer._handle_request_noblock)
    assert not any("verify_request" in vars(cls) for cls in transport.ThreadedAssociationServer.__mro__[:-3])
    assert "process_request_thread" in transport.ThreadedAssociationServer.__dict__
    assert "self.ae._servers.remove(" in inspect.getsource(transport.AssociationServer.shutdown)


def test_fill_reads_exact_count_and_partial_on_close() -> None:
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 1000  # 256000 bytes, more than one kernel read
    writer = threading.Thread(target=lambda: (left.sendall(payload[:200000]), left.sendall(payload[200000:])))
    writer.start()
    buffer = bytearray(len(payload))
    assert netloop.fill(right, memoryview(buffer), time.monotonic() + 10) == len(payload)
    writer.join()
    assert bytes(buffer) == payload
    left.sendall(b"abc")
    left.close()
    partial = bytearray(10)
    assert netloop.fill(right, memoryview(partial), time.monotonic() + 10) == 3
    assert bytes(partial[:3]) == b"abc"
    right.close()


def test_fill_on_a_socket_closed_under_it_reads_as_the_peer_closing() -> None:
    """Another thread closed the socket (EBADF): fill says how much it read, it does not raise."""
    left, right = socket.socketpair()
    left.sendall(b"ab")
    partial = bytearray(6)
    assert netloop.fill(right, memoryview(partial)[:2], time.monotonic() + 10) == 2
    right.close()
    assert netloop.fill(right, memoryview(partial)[2:], time.monotonic() + 10) == 0
    left.close()


def test_fill_gives_up_at_the_deadline_without_changing_the_socket() -> None:
    left, right = socket.socketpair()
    left.sendall(b"ab")
    started = time.monotonic()
    assert netloop.fill(right, memoryview(bytearray(6)), started + 0.2) is None
    assert 0.15 <= time.monotonic() - started < 5
    assert right.gettimeout() is None  # still blocking for the threads that send on it
    left.close()
    right.close()


class _FakeAssociation:
    """What HostLimitedServer.open_connections reads of an association: the requestor and an open socket."""

    def __init__(self, host: str, port: int) -> None:
        self.requestor = types.SimpleNamespace(address=host, port=port)
        self.dul = types.SimpleNamespace(socket=types.SimpleNamespace(socket=object()))


class _CountingServer(netloop.HostLimitedServer):
    """HostLimitedServer without a socket: its live associations are whatever the test says."""

    def __init__(self, max_per_host: int) -> None:  # no super().__init__: no listening socket
        self.max_per_host = max_per_host
        self._on_refused = lambda host, count: None
        self._starting = set()
        self._count_lock = threading.Lock()
        self.live: list[_FakeAssociation] = []

    @property
    def active_associations(self) -> list[_FakeAssociation]:  # type: ignore[override]
        return self.live


def test_a_starting_association_is_counted_once_per_host() -> None:
    """While an Association thread starts, the connection is both "starting" and live (assoc.start()
    runs inside process_request_thread): 8 senders at max_associations_per_host 8 were refused one."""
    server = _CountingServer(max_per_host=2)
    assert server.verify_request(None, ("127.0.0.2", 40001))
    server.live.append(_FakeAssociation("127.0.0.2", 40001))  # its thread is running, not yet un-counted
    assert server.open_connections("127.0.0.2") == 1
    assert server.verify_request(None, ("127.0.0.2", 40002))  # the second of two is allowed
    server.live.append(_FakeAssociation("127.0.0.2", 40002))
    assert not server.verify_request(None, ("127.0.0.2", 40003))  # the third is not
    assert server.open_connections("127.0.0.3") == 0  # another host is not affected
