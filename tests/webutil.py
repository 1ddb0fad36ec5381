"""Test helpers for a node's HTTP side: serve STOW-RS routes with uvicorn, build STOW-RS bodies, and talk to
the node with curl (a real client, as operators use it) and parse /metrics."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from starlette.applications import Starlette

from node.app import NodeService
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
    """The STOW-RS routes of a running node, wired as the node's HTTP server wires them."""
    return Starlette(routes=service.stow_routes())


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


# (sample name, sorted label items) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def curl(url: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET with the curl binary."""
    result = subprocess.run(
        ["curl", "-s", "-S", "--noproxy", "*", "--max-time", "30", "-w", "\n%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = curl(url)
    return status, json.loads(body)


def scrape(base_url: str) -> Samples:
    """Every sample of GET /metrics, parsed with prometheus-client's own parser."""
    status, body = curl(base_url + "/metrics")
    assert status == 200, body
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the node has not produced it yet (a counter never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
