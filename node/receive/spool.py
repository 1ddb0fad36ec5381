"""Durable instance store: write to a temp file, fsync, rename into place, fsync the directory.

Paths are built only from validated UIDs (node.uids), so no sender can choose where a file lands.
Layout: <root>/instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>[~<n>].dcm (~n: a replacement)
Quarantined instances (acknowledged, never forwarded nor indexed): <root>/quarantine/<same layout>, where
<n> is the first 16 hex digits of the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from node.errors import SpoolError
from node.uids import require_uid

logger = logging.getLogger(__name__)

_ADOPT_CHUNK = 2**20
# A received file's bytes: in memory, or a read-only map of a file written as it arrived.
FileBytes = bytes | bytearray | mmap.mmap


@dataclass
class StagedFile:
    """Bytes written and fdatasync'd under a temporary name, not yet in their place."""

    path: Path
    sha256: str
    size: int
    placed: bool = False


@dataclass(frozen=True)
class PendingFile:
    """A stage() in progress: `digest` resolves first, `staged` once the file is durable."""

    digest: Future[str]
    staged: Future[StagedFile]

    @classmethod
    def ready(cls, staged: StagedFile) -> PendingFile:
        """A file staged already (written as it arrived): both futures resolved."""
        digest: Future[str] = Future()
        digest.set_result(staged.sha256)
        done: Future[StagedFile] = Future()
        done.set_result(staged)
        return cls(digest, done)


class Spool:
    def __init__(self, root: Path, io_threads: int = 8) -> None:
        self.root = root
        self._io = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="spool-io")
        self.instances_dir = root / "instances"
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        # Anything left here was never acknowledged (a crash mid-write): safe to remove.
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)

    @staticmethod
    def relative_path(study_uid: str, series_uid: str, sop_uid: str, variant: int = 0) -> str:
        study = require_uid("StudyInstanceUID", study_uid)
        series = require_uid("SeriesInstanceUID", series_uid)
        sop = require_uid("SOPInstanceUID", sop_uid)
        suffix = f"~{variant}" if variant else ""
        return f"{study}/{series}/{sop}{suffix}.dcm"

    def free_bytes(self) -> int:
        """Bytes available to the node on the spool's file system."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def absolute(self, relative: str) -> Path:
        return self.instances_dir / relative

    def stage(self, data: FileBytes, digest: str | None = None) -> StagedFile:
        """Write `data` to a temporary file and fdatasync it; place() or discard() it next."""
        writer = self.staging_writer(hashed=digest is None)
        try:
            writer.write(data)
            return writer.finish(digest)
        except SpoolError:
            writer.abandon()
            raise

    def adopt(self, path: Path) -> StagedFile:
        """Stage a file written under the tmp dir by someone else (a STOW-RS part): hash it in chunks
        (no more than a chunk in memory) and fdatasync it."""
        digest = hashlib.sha256()
        try:
            with open(path, "rb+") as file:
                while chunk := file.read(_ADOPT_CHUNK):
                    digest.update(chunk)
                os.fdatasync(file.fileno())
                size = file.tell()
        except OSError as exc:
            raise SpoolError(f"cannot stage {path.name}: {exc.strerror or exc}") from exc
        return StagedFile(path, digest.hexdigest(), size)

    def staging_writer(self, hashed: bool = True) -> StagingWriter:
        """A temporary file to write in pieces (an instance received to disk as it arrives)."""
        return StagingWriter(self.tmp_dir, hashed)

    def stage_async(self, data: FileBytes) -> PendingFile:
        """Hash, then stage(), on the spool's I/O threads, so that the caller does its database work
        meanwhile (SHA-256, write and fdatasync all release the GIL). The digest is available as soon
        as it is computed, before the file is durable."""
        digest: Future[str] = Future()

        def work() -> StagedFile:
            value = sha256_hex(data)
            digest.set_result(value)
            return self.stage(data, value)

        return PendingFile(digest, self._io.submit(work))

    def place(self, staged: StagedFile, relative: str) -> None:
        """Rename a staged file to `relative` and make the rename durable (fsync of the folders)."""
        self._place_at(staged, self.absolute(relative), relative)

    def quarantine(self, staged: StagedFile, relative: str) -> None:
        """As place(), under quarantine_dir: start-up reconciliation and retention never look there."""
        self._place_at(staged, self.quarantine_dir / relative, f"quarantine/{relative}")

    def _place_at(self, staged: StagedFile, target: Path, relative: str) -> None:
        try:
            new_dir = not target.parent.exists()
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.path, target)
            staged.placed = True
            _fsync_dir(target.parent)
            if new_dir:
                _fsync_dir(target.parent.parent)
                _fsync_dir(target.parent.parent.parent)
        except OSError as exc:
            self.discard(staged)
            raise SpoolError(f"cannot write {relative}: {exc.strerror or exc}") from exc

    def discard(self, staged: StagedFile) -> None:
        if not staged.placed:
            staged.path.unlink(missing_ok=True)

    def write(self, relative: str, data: bytes) -> None:
        """Write `data` durably at `relative`; on any failure nothing is left behind."""
        self.place(self.stage(data), relative)

    def close(self) -> None:
        self._io.shutdown(wait=True)

    def remove(self, relative: str) -> None:
        self.absolute(relative).unlink(missing_ok=True)

    def remove_quarantined(self, relative: str) -> None:
        (self.quarantine_dir / relative).unlink(missing_ok=True)

    def prune_series_dir(self, study_uid: str, series_uid: str) -> None:
        """Remove the series folder (and its study folder) if empty; never touches files."""
        folder = (
            self.instances_dir
            / require_uid("StudyInstanceUID", study_uid)
            / require_uid("SeriesInstanceUID", series_uid)
        )
        for empty in (folder, folder.parent):
            try:
                empty.rmdir()
            except OSError:  # not empty (new instances arrived) or already gone
                return


class StagingWriter:
    """A file written in pieces under a temporary name in the spool's tmp dir, hashed as it is
    written (SHA-256 and the writes release the GIL); finish() fdatasyncs it and gives the StagedFile,
    abandon() removes it. A crash leaves only a tmp file, removed at the next start."""

    def __init__(self, tmp_dir: Path, hashed: bool = True) -> None:
        self._tmp_dir = tmp_dir
        self._hash = hashlib.sha256() if hashed else None
        self.size = 0
        try:
            self._fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
        except OSError as exc:
            raise self._error(exc) from exc
        self.path = Path(name)

    def _error(self, exc: OSError) -> SpoolError:
        return SpoolError(f"cannot write a temporary file in {self._tmp_dir}: {exc.strerror or exc}")

    def write(self, data: FileBytes | memoryview) -> None:
        view = memoryview(data)
        if self._hash is not None:
            self._hash.update(view)
        self.size += len(view)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise self._error(exc) from exc

    def finish(self, digest: str | None = None) -> StagedFile:
        """Make the bytes durable (fdatasync: the data and the size; mtime need not be) and close."""
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise self._error(exc) from exc
        finally:
            self._close()
        if digest is None:
            assert self._hash is not None, "a writer made with hashed=False needs the digest"
            digest = self._hash.hexdigest()
        return StagedFile(self.path, digest, self.size)

    def abandon(self) -> None:
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def sha256_hex(data: FileBytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
