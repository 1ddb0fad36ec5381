"""A sender that behaves like a modality towards a node that may die: it sends its instances on one
association, records the time of every success status, and when the association breaks (the node was
killed) it reconnects and re-sends every instance that did not get a success status, until all did.

    source = load_sources(["qa_ge_head_tilt"])[0]
    modality = RetryingModality("MOD1", port, source, clock=lambda: time.monotonic() - t0)
    modality.start(); ...; modality.join()
    modality.acks        # SOP Instance UID -> Ack (when, on which pass)

Files are sent as they are on disk (pynetdicom's chunked sending, `_config.STORE_SEND_CHUNKED_DATASET`,
which the caller sets: pydicom cannot re-encode some private elements of the shared CT files).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom.association import Association

from node.pynetdicom_tuning import CONN_OPEN_HANDLERS, guard_responses
from tests.nodeutil import scu
from tests.peers import ct_files

SUCCESS = 0x0000
# Between two connection attempts while the node is down (a poll interval, not synchronisation).
RECONNECT_INTERVAL = 0.1


@dataclass(frozen=True)
class SourceInstance:
    path: Path
    sop_instance_uid: str
    series_uid: str
    pixel_sha256: str


@dataclass(frozen=True)
class Ack:
    sop_instance_uid: str
    series_uid: str
    modality: str
    at: float  # seconds on the trial's clock when the success status arrived
    send_pass: int  # 1: the first pass; 2 and more: a re-send after the association broke


def load_sources(names: Sequence[str]) -> list[list[SourceInstance]]:
    """The instances of each CT series (tests/peers.py ct_files), with a hash of their pixel data."""
    out = []
    for name in names:
        series = []
        for path in ct_files(name):
            ds = pydicom.dcmread(path)
            series.append(
                SourceInstance(
                    path=path,
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_uid=str(ds.SeriesInstanceUID),
                    pixel_sha256=hashlib.sha256(bytes(ds.PixelData)).hexdigest(),
                )
            )
        out.append(series)
    return out


class RetryingModality(threading.Thread):
    def __init__(
        self,
        name: str,
        port: int,
        instances: Sequence[SourceInstance],
        clock: Callable[[], float],
        on_ack: Callable[[], None] = lambda: None,
        give_up_after: float = 180.0,
    ) -> None:
        super().__init__(name=f"modality-{name}", daemon=True)
        self.ae_title = name
        self.port = port
        self.instances = list(instances)
        self.clock = clock
        self.on_ack = on_ack
        self.give_up_after = give_up_after
        self.acks: dict[str, Ack] = {}
        # Statuses other than success: (SOP Instance UID, status). The instance is re-sent later.
        self.refusals: list[tuple[str, int]] = []
        self.passes = 0
        self.error: str | None = None
        # Set while no association is open (before, between and after passes): after a kill, the
        # caller waits for it so that no success status is still on its way.
        self.idle = threading.Event()
        self.idle.set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Give up after the current pass (the caller has stopped waiting)."""
        self._stopping.set()

    def acknowledged(self) -> dict[str, Ack]:
        with self._lock:
            return dict(self.acks)

    def pending(self) -> list[SourceInstance]:
        with self._lock:
            return [i for i in self.instances if i.sop_instance_uid not in self.acks]

    def run(self) -> None:
        deadline = time.monotonic() + self.give_up_after
        while pending := self.pending():
            if self._stopping.is_set():
                self.error = f"{self.ae_title}: stopped with {len(pending)} instances unacknowledged"
                return
            if time.monotonic() > deadline:
                self.error = (
                    f"{self.ae_title}: gave up after {self.give_up_after:g} s with {len(pending)} of "
                    f"{len(self.instances)} instances unacknowledged (first {pending[0].sop_instance_uid})"
                )
                return
            assoc = self._associate()
            if assoc is None:
                self._stopping.wait(RECONNECT_INTERVAL)
                continue
            self.passes += 1
            try:
                self._send_pass(assoc, pending)
            finally:
                if assoc.is_established:
                    assoc.release()
                self.idle.set()

    def _associate(self) -> Association | None:
        ae = scu(self.ae_title)
        self.idle.clear()
        assoc = ae.associate("127.0.0.1", self.port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS)
        if not assoc.is_established:
            self.idle.set()
            return None
        # pynetdicom issue #875 (a lost C-STORE response): not what this test is about.
        guard_responses(assoc)
        return assoc

    def _send_pass(self, assoc: Association, pending: list[SourceInstance]) -> None:
        for instance in pending:
            if not assoc.is_established:
                return
            try:
                status = assoc.send_c_store(instance.path)
            except RuntimeError:  # the association ended between the check and the send
                return
            code = status.get("Status") if status is not None else None
            if code is None:  # no response: the association was aborted (the node died)
                return
            if int(code) != SUCCESS:
                self.refusals.append((instance.sop_instance_uid, int(code)))
                continue
            ack = Ack(
                instance.sop_instance_uid, instance.series_uid, self.ae_title, self.clock(), self.passes
            )
            with self._lock:
                self.acks[instance.sop_instance_uid] = ack
            self.on_ack()
