"""Run a NodeService in-process on a free loopback port, and small helpers to talk to it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from node.analysis import SeriesAnalyser
from node.app import NodeService
from node.config import Settings
from node.pynetdicom_tuning import CONN_OPEN_HANDLERS

T = TypeVar("T")


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    receive = {"port": 0, "host": "127.0.0.1", **overrides.pop("receive", {})}
    completion = {"quiet_seconds": 0.5, **overrides.pop("completion", {})}
    forward = {
        "backoff_initial_seconds": 0.2,
        "backoff_factor": 2.0,
        "max_attempts": 3,
        "dimse_timeout": 5,
        **overrides.pop("forward", {}),
    }
    # Classification is off unless a test asks for it: the core tests route on attributes and
    # stay fast; tests/integration/test_classify_node.py and the e2e tests turn it on.
    classify = {"enabled": False, **overrides.pop("classify", {})}
    # The HTTP side is off unless a test asks for it (then on an ephemeral loopback port).
    web = {"enabled": False, "host": "127.0.0.1", "port": 0, **overrides.pop("web", {})}
    raw = {
        "data_dir": str(tmp_path / "data"),
        "receive": receive,
        "completion": completion,
        "forward": forward,
        "classify": classify,
        "web": web,
        **overrides,
    }
    return Settings.model_validate(raw)


@contextmanager
def running_node(settings: Settings, analyser: SeriesAnalyser | None = None) -> Iterator[NodeService]:
    """A started NodeService (with this analyser instead of the configured one, if given); stopped after."""
    service = NodeService(settings, analyser=analyser)
    service.start()
    try:
        yield service
    finally:
        service.stop(drain_seconds=5)


def wait_for(condition: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def synthetic_ct(
    series_uid: str | None = None, study_uid: str | None = None, number: int = 1, rows: int = 16
) -> Dataset:
    """A small but valid CT image instance (explicit VR little endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST123"
    ds.InstanceNumber = number
    ds.SeriesDescription = "CHEST WO"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = bytes((number + i) % 251 for i in range(rows * rows * 2))
    return ds


def scu(ae_title: str = "TESTSCU") -> AE:
    ae = AE(ae_title=ae_title)
    # One context per syntax: the SCP accepts one syntax per context.
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = 10
    ae.dimse_timeout = 10
    ae.network_timeout = 10
    return ae


def store(port: int, datasets: list[Dataset], ae_title: str = "TESTSCU") -> list[int]:
    """Send datasets on one association; returns each C-STORE status."""
    assoc = scu(ae_title).associate("127.0.0.1", port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS)
    assert assoc.is_established, "association to the node was not established"
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()


class NodeProcess:
    """`python -m node run` as a separate process (for kill -9 tests and benchmarks)."""

    def __init__(self, work: Path, settings: dict[str, Any]) -> None:
        self.work = work
        self.config_path = work / "node.yaml"
        settings = {
            **settings,
            "classify": {"enabled": False, **settings.get("classify", {})},
            "web": {"enabled": False, "host": "127.0.0.1", "port": 0, **settings.get("web", {})},
        }
        self.config_path.write_text(yaml.safe_dump(settings))
        self.port = int(settings["receive"]["port"])
        self.log_path = work / "node.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        from tests.peers import tcp_accepts

        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        proc = self.process
        wait_for(
            lambda: tcp_accepts(self.port) or proc.poll() is not None, timeout=60, what="node to listen"
        )
        if proc.poll() is not None:
            raise AssertionError(f"node exited: {self.log_path.read_text()[-3000:]}")
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def node_process_settings(
    work: Path, port: int, rules_path: Path | None = None, **extra: Any
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "data_dir": str(work / "data"),
        "receive": {"host": "127.0.0.1", "port": port},
        "completion": {"quiet_seconds": 60.0},
        "retention": {"keep_seconds": None},
        "log_level": "INFO",
        **extra,
    }
    if rules_path is not None:
        settings["rules_path"] = str(rules_path)
    return settings


@contextmanager
def node_process(
    work: Path, port: int, rules_path: Path | None = None, **extra: Any
) -> Iterator[NodeProcess]:
    proc = NodeProcess(work, node_process_settings(work, port, rules_path, **extra)).start()
    try:
        yield proc
    finally:
        proc.stop()


def recording_sink(received: list[str]) -> tuple[AE, int]:
    """A pynetdicom storage SCP on a free port that records SOP Instance UIDs."""
    ae = AE(ae_title="SINK")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax)

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return ae, int(server.server_address[1])


def kill_worker(node: NodeService, name: str) -> None:
    """Make one worker thread die outside any handler, as a bug there would (for the health checks)."""
    worker = next(w for w in node.workers if w.name == name)

    def die() -> bool:
        raise SystemExit("simulated death outside any handler")

    worker._run_one = die  # type: ignore[method-assign]
    node.wake_router.set()
    node.wake_delivery.set()
    wait_for(lambda: not worker.is_alive(), what=f"worker {name} to die")
