"""Shared by the benchmarks: dcmtk storescu runs (one or several associations at once), the physical
ceiling of a durable write, synthetic series made from real slices, a node process with routing rules and
a look into its database, Orthanc auto-routing stable series, and a process's peak RSS."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import yaml
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, Job, JobState
from tests.nodeutil import NodeProcess, node_process_settings
from tests.peers import (
    REPO_ROOT,
    Orthanc,
    StoreScp,
    free_port,
    require_binary,
    run_orthanc,
)

BENCH_CACHE = REPO_ROOT / ".cache" / "bench"


def print_medians(rates: dict[str, list[float]], title: str) -> dict[str, float]:
    """Print the median of each receiver's runs as a table under `title`; return the medians."""
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{title:<19} images/s")
    for name, value in median.items():
        print(f"{name:<19} {value:8.0f}")
    return median


def storescu_seconds(files: list[Path], port: int, called_ae: str, extra: tuple[str, ...] = ()) -> float:
    """Wall time of one dcmtk storescu association sending `files` (TCP_NODELAY=1, as the DESIGN says)."""
    return parallel_storescu_seconds([files], port, called_ae, extra)


def parallel_storescu_seconds(
    groups: Sequence[Sequence[Path]], port: int | Sequence[int], called_ae: str | Sequence[str],
    extra: tuple[str, ...] = (),
) -> float:
    """Wall time of len(groups) dcmtk storescu processes started together, one association each, group i
    sent to port[i] (or all to one port); from the first start to the last exit."""
    storescu = require_binary("storescu")
    ports = [port] * len(groups) if isinstance(port, int) else list(port)
    aes = [called_ae] * len(groups) if isinstance(called_ae, str) else list(called_ae)
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [storescu, "-aet", "BENCH", "-aec", ae, *extra, "127.0.0.1", str(p), *map(str, files)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for files, p, ae in zip(groups, ports, aes, strict=True)
    ]
    errors = []
    for proc in procs:
        _, stderr = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"storescu failed ({proc.returncode}): {stderr[-2000:]}")
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError("; ".join(errors))
    return elapsed


def durable_write_rate(files: Sequence[Path], directory: Path) -> float:
    """Files/s of the physical ceiling of a durable receive in `directory`: the same files' bytes (read
    into memory first) written to new files and fdatasync'ed one after another, as the spool must."""
    directory.mkdir(parents=True, exist_ok=True)
    payloads = [f.read_bytes() for f in files]
    start = time.perf_counter()
    for i, data in enumerate(payloads):
        fd = os.open(directory / f"{i:06d}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    return len(payloads) / (time.perf_counter() - start)


def synthetic_series(
    sources: Sequence[Path], count: int, name: str, root: Path = BENCH_CACHE
) -> list[Path]:
    """`count` instances of one new series made from the real slices `sources` (cycled, then stacked
    further along the slice axis), with new Study/Series/SOP Instance UIDs; cached under
    <root>/<name>-<count>/ (default .cache/bench) so that reruns reuse them."""
    folder = root / f"{name}-{count}"
    done = folder / ".complete"
    if done.exists():
        return sorted(folder.glob("*.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.dcm"):
        old.unlink()
    datasets = [pydicom.dcmread(p) for p in sources]
    study_uid, series_uid = generate_uid(), generate_uid()
    positions = [float(ds.ImagePositionPatient[2]) for ds in datasets if "ImagePositionPatient" in ds]
    span = (max(positions) - min(positions)) if positions else 0.0
    step = span / max(len(positions) - 1, 1) if positions else 1.0
    for i in range(count):
        ds = datasets[i % len(datasets)]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        if "ImagePositionPatient" in ds:
            x, y, _ = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, min(positions) + i * step]
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
    done.touch()
    return sorted(folder.glob("*.dcm"))


# ---- the node as a process, with routing rules ----


def write_dimse_rules(path: Path, destinations: dict[str, StoreScp]) -> Path:
    """Rules that send every CT series to each of `destinations` (name -> storescp) over DIMSE."""
    rules = {
        "version": 1,
        "destinations": {
            name: {"kind": "dimse", "ae_title": scp.ae_title, "host": "127.0.0.1", "port": scp.port}
            for name, scp in destinations.items()
        },
        "rules": [{"name": "ct-everywhere", "when": {"attribute": "Modality", "equals": "CT"},
                   "send_to": sorted(destinations)}],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@contextlib.contextmanager
def routing_node(
    work: Path, destinations: dict[str, StoreScp], quiet_seconds: float, **settings: Any
) -> Iterator[NodeProcess]:
    """`python -m node run` routing every CT series to `destinations`; classification off unless
    settings say otherwise."""
    work.mkdir(parents=True, exist_ok=True)
    rules = write_dimse_rules(work / "rules.yaml", destinations)
    config = node_process_settings(work, free_port(), rules, log_level="WARNING", **settings)
    config["completion"] = {"quiet_seconds": quiet_seconds}
    node = NodeProcess(work, config).start()
    try:
        yield node
    finally:
        node.stop()


@dataclass
class DeliveryTimes:
    destination: str
    created_at: dt.datetime
    finished_at: dt.datetime
    send_seconds: float  # the sender's part (the delivery.attempt audit row's duration_seconds)

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.created_at).total_seconds()


def finished_deliveries(node: NodeProcess, expected: int, timeout: float = 300.0) -> list[DeliveryTimes]:
    """Wait until `expected` delivery jobs in the node's SQLite database are done; their timestamps
    (created_at: queued by the router; finished_at: the job's last commit)."""
    engine = create_engine(f"sqlite:///{node.work / 'data' / 'node.db'}")
    deadline = time.monotonic() + timeout
    try:
        while True:
            with Session(engine) as session:
                jobs = list(session.scalars(select(Job).where(Job.kind == "deliver")))
            failed = [j for j in jobs if j.state == JobState.FAILED or j.last_error]
            if failed:
                raise RuntimeError(f"delivery failed: {failed[0].last_error}")
            done = [j for j in jobs if j.state == JobState.DONE]
            if len(done) >= expected:
                with Session(engine) as session:
                    attempts = list(session.scalars(
                        select(AuditEvent).where(AuditEvent.event == "delivery.attempt")))
                sent = {e.job_id: float((e.details or {}).get("duration_seconds", 0.0)) for e in attempts}
                return [DeliveryTimes(j.destination, j.created_at, j.finished_at,  # type: ignore[arg-type]
                                      sent.get(j.id, 0.0)) for j in done]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(done)} of {expected} deliveries done after {timeout:g} s")
            time.sleep(0.02)  # polling the database, not synchronisation: the job states decide
    finally:
        engine.dispose()


def wait_for_files(scp: StoreScp, count: int, timeout: float = 300.0) -> float:
    """Wait until storescp has written `count` files; the wall-clock time (time.time()) of the last
    one written (its mtime)."""
    deadline = time.monotonic() + timeout
    while True:
        files = scp.files()
        if len(files) >= count:
            return max(f.stat().st_mtime for f in files)
        if time.monotonic() > deadline:
            raise RuntimeError(f"storescp has {len(files)} of {count} files after {timeout:g} s")
        time.sleep(0.01)


# ---- Orthanc routing stable series to a modality ----

ROUTE_LUA = """
function OnStableSeries(seriesId, tags, metadata)
  RestApiPost('/modalities/{name}/store', seriesId)
end
"""


@contextlib.contextmanager
def routing_orthanc(work: Path, destination: StoreScp, stable_age: int = 1) -> Iterator[Orthanc]:
    """Orthanc (no DICOMweb) whose Lua OnStableSeries sends each stable series to `destination` (a
    storescp known as modality "dest"), with StableAge `stable_age` seconds."""
    work.mkdir(parents=True, exist_ok=True)
    lua = work / "route.lua"
    lua.write_text(ROUTE_LUA.format(name="dest"))
    with run_orthanc(
        work,
        known_modalities={"dest": (destination.ae_title, "127.0.0.1", destination.port)},
        dicomweb=False,
        extra_config={"StableAge": stable_age, "LuaScripts": [str(lua)]},
    ) as orthanc:
        yield orthanc


# ---- memory ----


class PeakRss:
    """Peak resident set size of process `pid`: the kernel's VmHWM, resettable (clear_refs 5), and a
    sampling thread (every 10 ms) as a cross-check where the reset is not allowed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(OSError, RuntimeError):
                self._sampled = max(self._sampled, self._status_kb("VmRSS"))

    def reset(self) -> None:
        """Start a new peak window (both the kernel's high-water mark and the sampled one)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self._sampled = 0

    def peak_mb(self) -> float:
        """The larger of the kernel's high-water mark and the sampled peak, in MB (10^6 bytes)."""
        return max(self._status_kb("VmHWM"), self._sampled) * 1024 / 1e6

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
