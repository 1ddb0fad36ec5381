"""A small scripted STOW-RS server for tests: http.server in a thread, optionally over TLS.

    with stow_peer(answer=lambda request: StowAnswer.ok(request)) as peer:   # peer.url, peer.requests
        ...

`answer(request)` decides each response from what was received (its number, the SOP Instance UIDs, the
headers); `StowAnswer.store_response(...)` builds a PS3.18 Store Instances Response. `hang=True` makes
the handler wait (until the peer stops) without answering, for timeout tests.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

from pydicom import dcmread


@dataclass
class StowRequest:
    number: int  # 1, 2, ... in arrival order
    path: str
    headers: dict[str, str]
    parts: list[bytes]  # empty when the peer discards bodies
    sop_instance_uids: list[str]
    sop_class_uids: list[str]
    body_bytes: int = 0


@dataclass
class StowAnswer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/dicom+json"
    hang: bool = False

    @staticmethod
    def store_response(
        request: StowRequest,
        failed: Mapping[str, int] | None = None,
        warnings: Mapping[str, int] | None = None,
        omit: frozenset[str] = frozenset(),
        status: int | None = None,
    ) -> StowAnswer:
        """A Store Instances Response for `request`: the UIDs in `failed` (-> FailureReason) in
        FailedSOPSequence, the others (less `omit`) in ReferencedSOPSequence, with `warnings`."""
        return StowAnswer.store_response_for(
            request.sop_instance_uids, request.sop_class_uids, failed, warnings, omit, status
        )

    @staticmethod
    def store_response_for(
        sop_instance_uids: list[str],
        sop_class_uids: list[str],
        failed: Mapping[str, int] | None = None,
        warnings: Mapping[str, int] | None = None,
        omit: frozenset[str] = frozenset(),
        status: int | None = None,
    ) -> StowAnswer:
        failed = failed or {}
        warnings = warnings or {}
        referenced, failures = [], []
        for uid, sop_class in zip(sop_instance_uids, sop_class_uids, strict=True):
            item: dict[str, object] = {
                "00081150": {"vr": "UI", "Value": [sop_class]},
                "00081155": {"vr": "UI", "Value": [uid]},
            }
            if uid in failed:
                item["00081197"] = {"vr": "US", "Value": [failed[uid]]}
                failures.append(item)
            elif uid not in omit:
                if uid in warnings:
                    item["00081196"] = {"vr": "US", "Value": [warnings[uid]]}
                referenced.append(item)
        dataset: dict[str, object] = {}
        if referenced:
            dataset["00081199"] = {"vr": "SQ", "Value": referenced}
        if failures:
            dataset["00081198"] = {"vr": "SQ", "Value": failures}
        if status is None:
            status = 200 if not failures else (202 if referenced else 409)
        return StowAnswer(status=status, body=json.dumps(dataset).encode())


def _parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = next(
        p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")
    )
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.partition(b"\r\n\r\n")
        assert b"application/dicom" in head.lower(), head
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


@dataclass
class StowPeer:
    url: str
    requests: list[StowRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received_uids(self) -> list[str]:
        with self.lock:
            return [uid for r in self.requests for uid in r.sop_instance_uids]


@contextlib.contextmanager
def stow_peer(
    answer: Callable[[StowRequest], StowAnswer] | None = None,
    *,
    certificate: tuple[Path, Path] | None = None,
    discard_bodies: bool = False,
) -> Iterator[StowPeer]:
    """A STOW-RS server on a free loopback port, http, or https with `certificate` = (cert, key) PEM.
    discard_bodies: read each body in small pieces and keep only its length (for memory tests)."""
    released = threading.Event()
    peer_box: list[StowPeer] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            peer = peer_box[0]
            length = int(self.headers.get("Content-Length", "0"))
            if discard_bodies:
                left = length
                while left:
                    left -= len(self.rfile.read(min(left, 1 << 16)))
                parts = []
            else:
                parts = _parts(self.rfile.read(length), self.headers.get("Content-Type", ""))
            datasets = [dcmread(BytesIO(p), stop_before_pixels=True) for p in parts]
            with peer.lock:
                request = StowRequest(
                    number=len(peer.requests) + 1,
                    path=self.path,
                    headers=dict(self.headers.items()),
                    parts=parts,
                    sop_instance_uids=[str(ds.SOPInstanceUID) for ds in datasets],
                    sop_class_uids=[str(ds.SOPClassUID) for ds in datasets],
                    body_bytes=length,
                )
                peer.requests.append(request)
            reply = answer(request) if answer else StowAnswer.store_response(request)
            if reply.hang:
                released.wait(timeout=60)
                return
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    scheme = "http"
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certificate[0]), str(certificate[1]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    host, port = server.server_address[:2]
    peer_box.append(StowPeer(url=f"{scheme}://localhost:{port}/dicom-web"))
    thread = threading.Thread(target=server.serve_forever, name="stow-peer", daemon=True)
    thread.start()
    try:
        yield peer_box[0]
    finally:
        released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
