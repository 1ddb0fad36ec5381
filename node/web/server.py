"""The HTTP server: a Starlette app served by uvicorn on a thread of the node's process.

`NodeService` builds the app (`build_app`: health, metrics, and whatever extra routes it is given,
e.g. STOW-RS) and starts and stops the server with the DICOM SCP. The listening socket is bound here,
on the caller's thread, so that a port in use fails `start()` at once with the same one-line error as
the DICOM port (node.errors.ListenError), and port 0 gives the real port back.

Stopping is uvicorn's graceful shutdown: stop accepting, let requests in flight finish within
`web.shutdown_timeout_seconds` (then they are cancelled), and `force()` (a second SIGTERM/SIGINT)
stops without waiting. uvicorn installs no signal handlers off the main thread: the node's own stay.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from node.config import WebSettings
from node.errors import ListenError

logger = logging.getLogger(__name__)

# How long start() waits for uvicorn to be serving on the bound socket.
STARTUP_TIMEOUT_SECONDS = 30.0


def build_app(routes: Sequence[BaseRoute], extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The node's ASGI app: its own routes (health, metrics) and the extra ones (STOW-RS)."""
    return Starlette(routes=[*routes, *extra_routes])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one). Raises ListenError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenError(host, port, exc.strerror or str(exc), "web") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc.strerror or str(exc), "web") from None
    sock.set_inheritable(True)
    return sock


class WebServer:
    """Owns the uvicorn server and its thread."""

    def __init__(self, settings: WebSettings, app: Starlette) -> None:
        self._settings = settings
        self._app = app
        self._config = uvicorn.Config(
            app,
            log_config=None,  # the node's logging as configured; no uvicorn handlers
            access_log=False,  # scrapes and probes every few seconds would drown the log
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_seconds)),
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = self._settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    def start(self) -> int:
        """Bind, serve on a thread, and return the bound port once uvicorn serves. Raises ListenError."""
        self._socket = bind(self._settings.host, self._settings.port)
        self.port = int(self._socket.getsockname()[1])
        sockets = [self._socket]
        self._thread = threading.Thread(target=self._run, args=(sockets,), name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._socket.close()
                raise ListenError(self._settings.host, self.port, "the HTTP server did not start", "web")
            self._thread.join(0.01)  # uvicorn offers no event for "started"
        paths = sorted({str(getattr(r, "path", "")) for r in self._app.routes} - {""})
        logger.info("web: listening on %s (%s)", self.url, ", ".join(paths))
        return self.port

    def _run(self, sockets: list[socket.socket]) -> None:
        try:
            asyncio.run(self._server.serve(sockets=sockets))
        except Exception:  # thread boundary: log it; the node's health and the stop still work
            logger.exception("web: the HTTP server failed")

    def request_stop(self) -> None:
        """Stop accepting; requests in flight go on (until shutdown_timeout_seconds)."""
        self._server.should_exit = True

    def force(self) -> None:
        """Stop without waiting for requests in flight."""
        self._server.should_exit = True
        self._server.force_exit = True

    def join(self, force: threading.Event | None = None) -> None:
        """Wait for the server to stop: up to shutdown_timeout_seconds (plus a little for uvicorn's own
        close), at once when `force` is set."""
        thread = self._thread
        if thread is None:
            return
        self.request_stop()
        deadline = time.monotonic() + self._settings.shutdown_timeout_seconds + 5.0
        while thread.is_alive() and time.monotonic() < deadline:
            if force is not None and force.is_set():
                self.force()
            thread.join(0.05)
        if thread.is_alive():
            logger.warning("web: the HTTP server did not stop in time; leaving its thread")
        self._thread = None
        if self._socket is not None:
            self._socket.close()
