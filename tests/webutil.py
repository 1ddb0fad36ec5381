"""Serve a Starlette app with uvicorn on a free loopback port in a thread, and build STOW-RS bodies."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO

import uvicorn
from pydicom.dataset import Dataset
from starlette.applications import Starlette

from node.app import NodeService
from node.web.stow import stow_routes
from tests.nodeutil import wait_for

BOUNDARY = "node-test-boundary-7f3a"
STOW_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Yields the base URL (http://127.0.0.1:<port>) while uvicorn serves `app` in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def stow_app(service: NodeService) -> Starlette:
    """The STOW-RS routes of a running node, wired like the node's HTTP server wires them."""
    routes = stow_routes(
        service.ingest,
        service.spool,
        service.settings.web,
        on_stored=service.tracker.instance_stored,
        sessions=service.sessions,
        max_instance_bytes=service.settings.receive.max_instance_bytes,
    )
    return Starlette(routes=routes)


def part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart_body(parts: Sequence[bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """A multipart/related body of application/dicom parts; close=False leaves out the final boundary."""
    out = BytesIO()
    for data in parts:
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    if close:
        out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()
