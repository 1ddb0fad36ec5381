"""Checks on what the node acknowledged and on whether it still serves a good peer.

An acknowledged instance must read back completely: with pydicom (every element's value converted,
pixel data the length that rows x columns x frames x samples x bits says, or well-formed fragments
when encapsulated) and with dcmtk's dcmdump (which stops on a parse error).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.uid import UID

from node.pynetdicom_tuning import CONN_OPEN_HANDLERS
from tests.nodeutil import scu, synthetic_ct

GOOD_PEER_HOST = "127.0.0.2"


def _pixel_problem(ds: Dataset, transfer_syntax: UID) -> str | None:
    if "PixelData" not in ds:
        return None
    value = ds.PixelData
    if transfer_syntax.is_encapsulated:
        try:
            fragments = list(generate_fragments(value))
        except Exception as exc:  # pydicom raises ValueError / struct.error on broken items
            return f"encapsulated pixel data: {type(exc).__name__}: {exc}"
        return None if fragments else "encapsulated pixel data without fragments"
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * frames * int(ds.SamplesPerPixel) * int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        return f"pixel data without usable image attributes: {type(exc).__name__}: {exc}"
    expected_bytes = (expected + 7) // 8
    expected_bytes += expected_bytes % 2
    if len(value) != expected_bytes:
        return f"pixel data is {len(value)} bytes, the image attributes say {expected_bytes}"
    return None


def pydicom_problem(path: Path) -> str | None:
    """None when pydicom reads the file completely; otherwise what went wrong."""
    try:
        ds = pydicom.dcmread(path)
        for element in ds.iterall():
            _ = element.value
        return _pixel_problem(ds, UID(ds.file_meta.TransferSyntaxUID))
    except Exception as exc:  # a fuzz check: any exception is a finding, reported by name
        return f"pydicom: {type(exc).__name__}: {exc}"


def _dcmdump_command(path: Path) -> list[str] | None:
    dcmdump = shutil.which("dcmdump")
    return None if dcmdump is None else [dcmdump, "-E", "-Ep", str(path)]


def _dcmdump_verdict(returncode: int, stderr: str) -> str | None:
    errors = [line for line in stderr.splitlines() if line.startswith(("E:", "F:"))]
    if returncode != 0 or errors:
        return f"dcmdump rc={returncode}: {' '.join(errors)[:300]}"
    return None


def dcmtk_problem(path: Path) -> str | None:
    """None when dcmdump parses the file to its end without an error (skipped without dcmtk)."""
    command = _dcmdump_command(path)
    if command is None:
        return None
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, errors="replace")
    return _dcmdump_verdict(done.returncode, done.stderr)


class DcmdumpPool:
    """dcmdump runs in the background while the next cases go on; `done()` collects the verdicts."""

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self._running: list[tuple[object, subprocess.Popen[str]]] = []

    def start(self, key: object, path: Path) -> list[tuple[object, str]]:
        """Start checking `path`; returns the problems of checks finished to stay under the limit."""
        command = _dcmdump_command(path)
        if command is None:
            return []
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace"
        )
        self._running.append((key, process))
        found = []
        while len(self._running) > self.limit:
            found += self._finish(*self._running.pop(0))
        return found

    def done(self) -> list[tuple[object, str]]:
        found = []
        while self._running:
            found += self._finish(*self._running.pop(0))
        return found

    @staticmethod
    def _finish(key: object, process: subprocess.Popen[str]) -> list[tuple[object, str]]:
        _, stderr = process.communicate(timeout=60)
        problem = _dcmdump_verdict(process.returncode, stderr)
        return [] if problem is None else [(key, problem)]


def unreadable(path: Path) -> str | None:
    """Why an acknowledged file cannot be read back (pydicom first, then dcmtk), or None."""
    return pydicom_problem(path) or dcmtk_problem(path)


def good_peer_problem(port: int, source: str = GOOD_PEER_HOST) -> str | None:
    """None when a well-behaved pynetdicom peer gets a C-ECHO and a C-STORE through; else what failed.
    It connects from another loopback address than the fuzzer (127.0.0.1), as a modality has its own:
    receive.max_associations_per_host may refuse the fuzzer's host, never this one."""
    try:
        assoc = scu("GOODPEER").associate(
            "127.0.0.1", port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS, bind_address=(source, 0)
        )
    except OSError as exc:
        return f"good peer: cannot connect: {exc}"
    if not assoc.is_established:
        return "good peer: association not established"
    try:
        echo = assoc.send_c_echo()
        if int(echo.get("Status", -1)) != 0:
            return f"good peer: C-ECHO status {echo.get('Status')}"
        stored = assoc.send_c_store(synthetic_ct())
        if int(stored.get("Status", -1)) != 0:
            return f"good peer: C-STORE status {stored.get('Status')}"
        return None
    finally:
        assoc.release()
