"""Real peers for tests: dcmtk storescp, Orthanc, CT test data, free ports.

Every helper skips the test with a clear reason when what it needs is absent (under CI=true a missing
program fails instead: tests.conftest.peer_missing; missing CT data always skips), and waits
for a peer by polling a condition with a deadline, never by sleeping a fixed time.

    port = free_port()
    with run_storescp(tmp_path / "in", accept="all") as scp: ...      # scp.port, scp.ae_title, scp.out_dir
    with run_orthanc(tmp_path / "orthanc") as orthanc: ...             # orthanc.dicom_port, orthanc.rest
    series_dir = unpack_ct("itkelastix_chest")                        # <repo>/.cache/ct/itkelastix_chest
    with in_process_scp(status_for=lambda uid: 0xA700) as scp: ...    # pynetdicom SCP, scp.received
    files = make_series(tmp_path, 5, RLELossless)                      # small CT files as InstanceFile
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event

from node.deliver.base import InstanceFile
from tests.conftest import peer_missing

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared data lives beside the checkout: <repo>/../shared/data/ct (override: NODE_CT_DATA).
CT_DATA_DIR = Path(os.environ.get("NODE_CT_DATA", REPO_ROOT.parent / "shared" / "data" / "ct"))
CACHE_DIR = REPO_ROOT / ".cache" / "ct"
# Every DICOM series of the shared data (manifest.csv rows of format dicom).
DICOM_SERIES = (
    "itkelastix_chest",
    "lidc0001_full",
    "cptacgbm_c3n01192_head",
    "qa_ge_head_tilt",
    "fltbreast001_petct_upper",
    "fltbreast001_petct_lower",
    "kits00072_arterial_slab",
)

DCMTK_TOOLS = frozenset({"storescp", "storescu", "echoscu", "dcmcrle", "dcmdrle", "dcmcjpls", "dcmdjpls",
                         "dcmcjpeg", "dcmdjpeg", "dcmcjp2k", "dcmdjp2k", "dcmdump", "dcmodify"})
# Debian's orthanc-dicomweb package puts the plugin in one of these.
ORTHANC_DICOMWEB_PLUGINS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)

STARTUP_SECONDS = 30.0


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@functools.cache
def _find_binary(name: str) -> str | None:
    """The path of `name`. For dcmtk tools, the dcmtk one: pynetdicom installs same-named Python apps
    (storescp, storescu, echoscu ...) that may come first on PATH."""
    candidates: list[str] = []
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/sbin"]:
        path = Path(directory) / name
        if path.is_file() and os.access(path, os.X_OK) and str(path) not in candidates:
            candidates.append(str(path))
    if name not in DCMTK_TOOLS:
        return candidates[0] if candidates else None
    for path in candidates:
        try:
            probe = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (probe.stdout + probe.stderr).lower():
            return path
    return None


def require_binary(name: str) -> str:
    """The path of an external program; absent: skipped, or failed under CI (tests.conftest.peer_missing),
    naming the package to install. dcmtk tools are checked to be dcmtk's, not pynetdicom's apps."""
    path = _find_binary(name)
    if path is None:
        package = "dcmtk" if name in DCMTK_TOOLS else name.lower()
        peer_missing(f"{name} is not installed (apt-get install {package})")
    return path


def tcp_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_started(condition: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    assert callable(condition)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if condition():
            return
        time.sleep(0.05)  # poll interval, not synchronisation: the condition decides
    raise RuntimeError(f"{what} not ready within {STARTUP_SECONDS:g} s: {_tail(log)}")


def _tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class StoreScp:
    port: int
    ae_title: str
    out_dir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def files(self) -> list[Path]:
        """Every file storescp wrote so far (it writes one file per instance)."""
        return sorted(p for p in self.out_dir.rglob("*") if p.is_file())


@contextlib.contextmanager
def run_storescp(
    out_dir: Path,
    port: int | None = None,
    ae_title: str = "STORESCP",
    accept: Literal["uncompressed", "all", "implicit"] = "uncompressed",
    extra_args: tuple[str, ...] = (),
) -> Iterator[StoreScp]:
    """dcmtk storescp writing into out_dir. accept: "uncompressed" (storescp's default: Explicit and
    Implicit VR Little Endian, Explicit Big Endian), "all" (+xa: every syntax dcmtk knows) or
    "implicit" (+xi: Implicit VR Little Endian only). TCP_NODELAY=1 is set for it."""
    binary = require_binary("storescp")
    out_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [binary, "-aet", ae_title, "-od", str(out_dir), "-dhl"]
    if accept == "all":
        args.append("+xa")
    elif accept == "implicit":
        args.append("+xi")
    args += [*extra_args, str(port)]
    log = out_dir.parent / f"storescp-{port}.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "TCP_NODELAY": "1"})
    try:
        wait_until_started(lambda: tcp_accepts(port), f"storescp on port {port}", proc, log)
        yield StoreScp(port=port, ae_title=ae_title, out_dir=out_dir, log=log, process=proc)
    finally:
        stop_process(proc)


@dataclass
class OrthancRest:
    """A small client for Orthanc's REST API (basic auth with `credentials` when run_orthanc got users)."""

    base_url: str
    credentials: tuple[str, str] | None = None

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(self.base_url + path)
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode("ascii")
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as rsp:
            return bytes(rsp.read())

    def get_json(self, path: str) -> object:
        return json.loads(self.get(path))

    def instances(self) -> list[str]:
        """Orthanc's identifiers of every stored instance."""
        ids = self.get_json("/instances")
        assert isinstance(ids, list)
        return [str(i) for i in ids]

    def instance_file(self, orthanc_id: str) -> bytes:
        """The DICOM file of an instance, as Orthanc stored it."""
        return self.get(f"/instances/{orthanc_id}/file")

    def sop_instance_uid(self, orthanc_id: str) -> str:
        tags = self.get_json(f"/instances/{orthanc_id}/simplified-tags")
        assert isinstance(tags, dict)
        return str(tags["SOPInstanceUID"])

    def files_by_sop_instance_uid(self) -> dict[str, bytes]:
        return {self.sop_instance_uid(i): self.instance_file(i) for i in self.instances()}

    def system(self) -> dict[str, object]:
        info = self.get_json("/system")
        assert isinstance(info, dict)
        return info


@dataclass
class Orthanc:
    aet: str
    dicom_port: int
    http_port: int
    work_dir: Path
    log: Path
    process: subprocess.Popen[bytes]
    users: dict[str, str] | None = None
    rest: OrthancRest = field(init=False)

    def __post_init__(self) -> None:
        # With users, the REST client logs in as the first of them.
        credentials = next(iter(self.users.items())) if self.users else None
        self.rest = OrthancRest(f"http://127.0.0.1:{self.http_port}", credentials)

    @property
    def dicomweb_root(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"


def find_dicomweb_plugin() -> Path | None:
    for path in ORTHANC_DICOMWEB_PLUGINS:
        if path.exists():
            return path
    return None


@contextlib.contextmanager
def run_orthanc(
    work_dir: Path,
    dicom_port: int | None = None,
    http_port: int | None = None,
    aet: str = "ORTHANC",
    known_modalities: dict[str, tuple[str, str, int]] | None = None,
    always_allow_store: bool = True,
    dicomweb: bool = True,
    users: dict[str, str] | None = None,
    extra_config: dict[str, object] | None = None,
) -> Iterator[Orthanc]:
    """Orthanc with its storage and SQLite index in work_dir. known_modalities: name -> (AE, host, port).
    With always_allow_store False, only known modalities may store. users: user name -> password:
    HTTP basic authentication on (REST and DICOMweb); off without. extra_config: more configuration keys
    (e.g. StableAge, LuaScripts). Waits for GET /system."""
    binary = require_binary("Orthanc")
    plugins: list[str] = []
    if dicomweb:
        plugin = find_dicomweb_plugin()
        if plugin is None:
            peer_missing("the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
        plugins.append(str(plugin))
    work_dir.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    config = {
        "Name": f"test-{aet}",
        "StorageDirectory": str(work_dir / "storage"),
        "IndexDirectory": str(work_dir / "index"),
        "StorageCompression": False,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": dict(users or {}),
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": always_allow_store,
        "DicomCheckModalityHost": False,
        "DicomModalities": {k: list(v) for k, v in (known_modalities or {}).items()},
        "SaveJobs": False,
        "Plugins": plugins,
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        **(extra_config or {}),
    }
    config_path = work_dir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = work_dir / "orthanc.log"
    with open(log, "wb") as log_file:
        # Orthanc's DICOM side is dcmtk, which reads TCP_NODELAY from the environment: without it,
        # Nagle's algorithm holds every C-STORE response (about 16 images/s instead of 80 here).
        proc = subprocess.Popen([binary, str(config_path)], stdout=log_file, stderr=subprocess.STDOUT,
                                cwd=work_dir, env={**os.environ, "TCP_NODELAY": "1"})
    orthanc = Orthanc(aet=aet, dicom_port=dicom_port, http_port=http_port, work_dir=work_dir, log=log,
                      process=proc, users=users)

    def ready() -> bool:
        try:
            orthanc.rest.system()
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return tcp_accepts(dicom_port)

    try:
        wait_until_started(ready, f"Orthanc (HTTP {http_port}, DICOM {dicom_port})", proc, log)
        yield orthanc
    finally:
        stop_process(proc)


def unpack_ct(name: str) -> Path:
    """The folder of DICOM files of CT series `name` (see ../shared/data/ct/manifest.csv), unpacked
    once into <repo>/.cache/ct/<name>/. Safe when several test processes ask at the same time."""
    target = CACHE_DIR / name
    if target.is_dir():
        return target
    archive = CT_DATA_DIR / f"{name}.tar.xz"
    if not archive.is_file():
        pytest.skip(f"CT test data {archive} is absent (see the data README)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE_DIR))
        try:
            with tarfile.open(archive, "r:xz") as tar:
                tar.extractall(staging, filter="data")
            inner = staging / name
            source = inner if inner.is_dir() else staging
            os.rename(source, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ct_files(name: str) -> list[Path]:
    """The DICOM files of CT series `name`, sorted by file name."""
    return sorted(p for p in unpack_ct(name).iterdir() if p.is_file())


# ---- in-process peers and synthetic instances ----


def make_ct(
    path: Path,
    index: int,
    series_uid: str,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_class: str = CTImageStorage,
    size: int = 16,
) -> Dataset:
    """Write a small CT image (pixels depend on `index`) as a Part 10 file and return the dataset."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.InstanceNumber = index + 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    pixels = (np.arange(size * size, dtype=np.int16).reshape(size, size) * 7 + index * 13 - 500)
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if UID(transfer_syntax).is_compressed:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    elif transfer_syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = UID(ImplicitVRLittleEndian)
    ds.save_as(path, enforce_file_format=True)
    return ds


def make_series(
    folder: Path,
    count: int,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_classes: Sequence[str] | None = None,
    size: int = 16,
) -> list[InstanceFile]:
    """`count` small CT files (size x size pixels) of one new series, as InstanceFile records."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    files = []
    for i in range(count):
        sop_class = sop_classes[i] if sop_classes else CTImageStorage
        path = folder / f"{i:04d}.dcm"
        ds = make_ct(path, i, series_uid, transfer_syntax, sop_class, size)
        files.append(InstanceFile(
            instance_id=1000 + i,
            path=path,
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax_uid=str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID),
        ))
    return files


@dataclass
class Received:
    sop_instance_uid: str
    transfer_syntax: str
    dataset: Dataset


@dataclass
class InProcessScp:
    """A pynetdicom storage SCP on a free loopback port. `status_for` chooses the status per
    SOP Instance UID (default success); `before_answer` runs before answering (a test can block)."""

    ae_title: str
    port: int
    received: list[Received] = field(default_factory=list)
    associations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def uids(self) -> list[str]:
        with self.lock:
            return [r.sop_instance_uid for r in self.received]


@contextlib.contextmanager
def in_process_scp(
    *,
    ae_title: str = "TESTSCP",
    transfer_syntaxes: Sequence[str] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian),
    sop_classes: Sequence[str] = (CTImageStorage,),
    status_for: Callable[[str], int] | None = None,
    before_answer: Callable[[str], None] | None = None,
    require_calling_aet: Sequence[str] = (),
    maximum_pdu_size: int = 0,
) -> Iterator[InProcessScp]:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = maximum_pdu_size
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class, list(transfer_syntaxes))
    if require_calling_aet:
        ae.require_calling_aet = list(require_calling_aet)
    scp = InProcessScp(ae_title=ae_title, port=free_port())

    def on_store(event: Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        if before_answer is not None:
            before_answer(uid)
        with scp.lock:
            scp.received.append(Received(uid, str(event.context.transfer_syntax), ds))
        return status_for(uid) if status_for else 0x0000

    def on_established(event: Event) -> None:
        with scp.lock:
            scp.associations += 1

    server = ae.start_server(
        ("127.0.0.1", scp.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_ESTABLISHED, on_established)],
    )
    try:
        yield scp
    finally:
        server.shutdown()


def instance_files(paths: Sequence[Path], first_id: int = 1) -> list[InstanceFile]:
    """InstanceFile records for DICOM Part 10 files, as the spool would list them."""
    out = []
    for i, path in enumerate(paths):
        ds = dcmread(path, stop_before_pixels=True)
        out.append(InstanceFile(
            instance_id=first_id + i,
            path=path,
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        ))
    return out
