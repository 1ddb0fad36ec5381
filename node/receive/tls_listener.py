"""The SCP's TLS port: HostLimitedServer with the TLS handshake moved off the accepting thread.

pynetdicom's AssociationServer.get_request wraps each accepted socket with the SSL context and so runs
the handshake on the one thread that accepts every connection, with no timeout: a single client that
connects and sends nothing (or plain DICOM) would stop the whole port. Here get_request only wraps;
the handshake runs on the connection's own thread (socketserver's ThreadingMixIn starts one per
connection) within `handshake_timeout`. A failed handshake (wrong CA, expired or missing certificate,
plain TCP, silence) is reported to `on_handshake_failed(peer, why)` and the connection closed; the port
goes on serving.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from node.pynetdicom_tuning import HostLimitedServer
from node.tls import describe_failure

logger = logging.getLogger(__name__)


class TlsServer(HostLimitedServer):
    def __init__(
        self,
        *args: Any,
        handshake_timeout: float,
        on_handshake_failed: Callable[[str, str], None],
        **kwargs: Any,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self._on_handshake_failed = on_handshake_failed
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        wrapped = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        sock = request
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.settimeout(self.handshake_timeout)
            sock.do_handshake()
            sock.settimeout(None)  # blocking, as pynetdicom has a plain accepted socket
        except (OSError, ValueError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
            self._refuse(sock, client_address, describe_failure(exc))
            return
        super().process_request_thread(request, client_address)

    def _refuse(self, sock: ssl.SSLSocket, client_address: Any, why: str) -> None:
        host, port = str(client_address[0]), int(client_address[1])
        with self._count_lock:
            self._starting.discard((host, port))
        try:
            sock.close()
        except OSError:
            pass
        logger.warning("TLS connection from %s:%d closed: handshake failed: %s", host, port, why)
        self._on_handshake_failed(f"{host}:{port}", why)
