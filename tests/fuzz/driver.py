"""Send one fuzz case to a running node and say what it did. Every wait has a deadline: a case that
passes it is a hang.

- `send_store`: a valid association, then a C-STORE whose command or data set may be mutated, on a
  chosen presentation context; then A-RELEASE-RQ.
- `send_stream`: raw PDUs as they are, then a half-close (the peer has nothing more to say), then
  wait for the node to close.
- `send_stow`: a raw HTTP/1.1 POST (Connection: close), then a half-close, then the response.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

from tests.fuzz.stow_mutators import StowRequest
from tests.rawpeer import A_ABORT, A_ASSOCIATE_RJ, A_RELEASE_RP, P_DATA_TF, Answer, RawPeer, p_data_tf

STORE_PATH = "/studies"


@dataclass
class Outcome:
    """What the node answered: `answer` in words ("status 0xC210", "abort", "closed", "http 400"...),
    the DIMSE statuses it sent, the HTTP status, and whether a deadline passed (a hang)."""

    answer: str
    statuses: list[int] = field(default_factory=list)
    comment: str = ""  # the ErrorComment of the last DIMSE response, if any
    http_status: int | None = None
    hang: bool = False


def _status_of(answer: Answer) -> int | None:
    try:
        return answer.status()
    except (AssertionError, KeyError, struct.error):
        return None


def _describe(answer: Answer) -> str:
    if answer.kind != "pdu":
        return answer.kind
    if answer.pdu_type == A_ABORT:
        return "abort"
    if answer.pdu_type == A_ASSOCIATE_RJ:
        return "reject"
    if answer.pdu_type == P_DATA_TF:
        status = _status_of(answer)
        return f"status 0x{status:04X}" if status is not None else "p-data"
    return f"pdu 0x{answer.pdu_type:02X}"


def _final(answer: Answer) -> bool:
    """After A-ABORT or A-ASSOCIATE-RJ the node waits (ARTIM) for the peer to close, as PS3.8 says
    (Sta13): the peer has its answer and closes; waiting for the node to close first is no test."""
    return answer.kind == "closed" or answer.pdu_type in (A_ABORT, A_ASSOCIATE_RJ)


def _drain(peer: RawPeer, deadline: float, outcome: Outcome) -> None:
    """Read what the node sends until it closes, aborts or rejects; a deadline passed is a hang."""
    while True:
        answer = peer.answer(max(deadline - time.monotonic(), 0.0))
        if answer.kind == "timeout":
            outcome.hang = True
            return
        if _final(answer):
            if answer.pdu_type == A_ABORT and "abort" not in outcome.answer:
                outcome.answer += ", then abort"
            return
        if answer.pdu_type == P_DATA_TF:
            status = _status_of(answer)
            if status is not None:
                outcome.statuses.append(status)


def send_stream(port: int, pdus: list[bytes], deadline_s: float) -> Outcome:
    deadline = time.monotonic() + deadline_s
    with RawPeer(port) as peer:
        sent = 0
        for data in pdus:
            try:
                peer.send(data)
            except OSError:  # the node closed first: what it sent before is still read below
                break
            sent += 1
        with contextlib.suppress(OSError):
            peer.sock.shutdown(socket.SHUT_WR)
        outcome = Outcome(answer="")
        first = peer.answer(max(deadline - time.monotonic(), 0.0))
        outcome.answer = _describe(first)
        if first.kind == "timeout":
            outcome.hang = True
            return outcome
        if first.kind == "pdu" and not _final(first):
            if first.pdu_type == P_DATA_TF and (status := _status_of(first)) is not None:
                outcome.statuses.append(status)
            _drain(peer, deadline, outcome)
        if outcome.statuses:
            then = ", then abort" if outcome.answer.endswith("then abort") else ""
            outcome.answer = " ".join(f"status 0x{s:04X}" for s in outcome.statuses) + then
        return outcome


class StoreChannel:
    """C-STOREs on one association, kept open across cases while the node answers with a status (it
    stays usable after a failure status), opened again after an abort or close; released every
    `release_every` stores, so releases are exercised too. Associating costs more than a case."""

    def __init__(self, port: int, request: bytes, release_every: int = 50) -> None:
        self.port = port
        self.request = request
        self.release_every = release_every
        self._peer: RawPeer | None = None
        self._accepted: list[int] = []
        self._stores = 0

    def close(self) -> None:
        if self._peer is not None:
            self._peer.close()
            self._peer = None

    def _open(self, deadline: float) -> Outcome | None:
        self._peer = RawPeer(self.port)
        self._peer.send(self.request)
        accepted = self._peer.answer(max(deadline - time.monotonic(), 0.0))
        if not accepted.is_accept:
            self.close()
            return Outcome(answer="not accepted: " + _describe(accepted), hang=accepted.kind == "timeout")
        self._accepted = accepted.accepted_contexts()
        self._stores = 0
        return None

    def _release(self, deadline: float, outcome: Outcome) -> None:
        assert self._peer is not None
        try:
            self._peer.send(struct.pack(">BBL", 0x05, 0, 4) + b"\0\0\0\0")
        except OSError:
            self.close()
            return
        released = self._peer.answer(max(deadline - time.monotonic(), 0.0))
        if released.kind == "timeout":
            outcome.hang = True
            outcome.answer += ", release unanswered"
        elif released.pdu_type != A_RELEASE_RP:
            outcome.answer += f", release answered {_describe(released)}"
        self.close()

    def store(
        self, context_id: int, command: bytes, dataset: bytes, deadline_s: float, fragment: int | None = None
    ) -> Outcome:
        """The data set goes in PDVs of `fragment` bytes (one PDV if None)."""
        deadline = time.monotonic() + deadline_s
        if self._peer is None and (refused := self._open(deadline)) is not None:
            return refused
        assert self._peer is not None
        if context_id not in self._accepted:
            self.close()
            return Outcome(answer=f"context {context_id} not accepted")
        size = fragment or max(len(dataset), 1)
        chunks = [dataset[i : i + size] for i in range(0, len(dataset), size)] or [b""]
        pdvs = [(context_id, 0x00, c) for c in chunks[:-1]] + [(context_id, 0x02, chunks[-1])]
        try:
            self._peer.send(p_data_tf([(context_id, 0x03, command)]))
            for pdv in pdvs:
                self._peer.send(p_data_tf([pdv]))
        except OSError:
            pass  # the node aborted or closed early; its answer is read below
        answer = self._peer.answer(max(deadline - time.monotonic(), 0.0))
        outcome = Outcome(answer=_describe(answer), hang=answer.kind == "timeout")
        if answer.pdu_type == P_DATA_TF and (status := _status_of(answer)) is not None:
            outcome.statuses.append(status)
            outcome.comment = answer.command().get(0x0902, b"").decode("latin-1").rstrip("\0 ")
        if answer.kind != "pdu" or answer.pdu_type != P_DATA_TF:
            self.close()
            return outcome
        self._stores += 1
        if self._stores >= self.release_every:
            self._release(deadline, outcome)
        return outcome


def _http_request(stow: StowRequest, port: int, path: str) -> bytes:
    length = len(stow.body) if stow.declared_length is None else stow.declared_length
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Length: {length}",
        "Connection: close",
        "Accept: application/dicom+json",
    ]
    if stow.content_type is not None:
        lines.append(f"Content-Type: {stow.content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + stow.body


def send_stow(port: int, stow: StowRequest, deadline_s: float, path: str = STORE_PATH) -> Outcome:
    deadline = time.monotonic() + deadline_s
    sock = socket.create_connection(("127.0.0.1", port), timeout=deadline_s)
    try:
        with contextlib.suppress(OSError):
            sock.sendall(_http_request(stow, port, path))
            # A half-close reads as "client gone" to uvicorn, which then drops the request; only a
            # Content-Length that promises more than the body needs it (else the server waits on).
            if stow.declared_length is not None and stow.declared_length > len(stow.body):
                sock.shutdown(socket.SHUT_WR)
        response = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome(answer="http timeout", hang=True)
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return Outcome(answer="http timeout", hang=True)
            except ConnectionResetError:
                break
            if not chunk:
                break
            response += chunk
    finally:
        sock.close()
    status_line = response.split(b"\r\n", 1)[0].split()
    if len(status_line) >= 2 and status_line[1].isdigit():
        status = int(status_line[1])
        return Outcome(answer=f"http {status}", http_status=status)
    return Outcome(answer="http closed" if not response else "http garbage")
