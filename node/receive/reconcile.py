"""At start: index every durable spool file whose database row was lost.

The receive path makes the file durable (fdatasync, rename, folder fsync) before it commits the row, and
on SQLite commits without an fsync (docs/receiving.md, "Durability"). A power loss can therefore lose
the last rows, never their files. This pass finds those files and records them as the receive path
would have; staging files that never became durable are removed by Spool itself when it opens.
It runs before the DICOM listener and the completion tracker start, so nothing races with it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import Instance, Series
from node.receive.ingest import Ingest, Received, RejectedInstance
from node.receive.spool import Spool
from node.uids import is_valid_uid

logger = logging.getLogger(__name__)


@dataclass
class Reconciled:
    """What one pass did; `indexed` and `obsolete` are spool-relative paths."""

    indexed: list[str] = field(default_factory=list)
    # Files superseded by a recorded replacement (a crash between the commit and their removal): removed.
    obsolete: list[str] = field(default_factory=list)
    # Files that could not be read or are refused as the receive path would refuse them: left in place.
    unreadable: list[str] = field(default_factory=list)


def variant_of(name: str) -> tuple[str, int]:
    """'<SOP UID>~<n>.dcm' -> (SOP UID, n); a first file has n = 0 (node.receive.spool's layout)."""
    stem = name.removesuffix(".dcm")
    sop, sep, counter = stem.partition("~")
    return sop, int(counter) if sep and counter.isdigit() else 0


def reconcile(sessions: sessionmaker[Session], spool: Spool, ingest: Ingest) -> Reconciled:
    """One pass over the spool: a query per series folder, a file read only where a row is missing."""
    done = Reconciled()
    for study_dir in _folders(spool.instances_dir):
        for series_dir in _folders(study_dir):
            _reconcile_series(sessions, spool, ingest, study_dir.name, series_dir, done)
    if done.indexed or done.obsolete or done.unreadable:
        logger.warning(
            "spool reconciliation: %d files indexed (their rows were lost), %d obsolete removed, "
            "%d unreadable left in place",
            len(done.indexed),
            len(done.obsolete),
            len(done.unreadable),
        )
    return done


def _folders(parent: Path) -> list[Path]:
    """Sub-folders named by a valid UID (the spool creates no others)."""
    with os.scandir(parent) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and is_valid_uid(e.name))


def _reconcile_series(
    sessions: sessionmaker[Session], spool: Spool, ingest: Ingest, study: str, folder: Path, done: Reconciled
) -> None:
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.is_file() and e.name.endswith(".dcm")]
    if not names:
        return
    with sessions() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.path)
            .join(Series, Series.id == Instance.series_id)
            .where(Series.series_uid == folder.name)
        ).all()
    recorded = {row.path for row in rows}
    newest = {row.sop_instance_uid: variant_of(row.path.rsplit("/", 1)[-1])[1] for row in rows}
    # Oldest variant first, so that a lost first row and a lost replacement are replayed in order.
    for name in sorted(names, key=variant_of):
        relative = f"{study}/{folder.name}/{name}"
        if relative in recorded:
            continue
        sop, variant = variant_of(name)
        if sop in newest and variant <= newest[sop]:
            spool.remove(relative)
            done.obsolete.append(relative)
            continue
        if _index(spool, ingest, relative):
            newest[sop] = variant
            done.indexed.append(relative)
        else:
            done.unreadable.append(relative)


def _index(spool: Spool, ingest: Ingest, relative: str) -> bool:
    path = spool.absolute(relative)
    try:
        data = path.read_bytes()
        dataset = dcmread(path, stop_before_pixels=True)
        item = Received(
            data=data,
            dataset=dataset,
            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
            calling_ae=None,
            peer=None,
            source="spool",
        )
        sop, _ = variant_of(path.name)
        where = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID))
        if where != (path.parent.parent.name, path.parent.name, sop):
            # Not a file the receive path wrote (it names files by their own UIDs): never guess.
            raise ValueError(f"its UIDs {where} do not match its path")
        ingest.index_spooled(relative, item)
    except (OSError, InvalidDicomError, AttributeError, ValueError, RejectedInstance) as exc:
        # Never removed: the file may be an acknowledged instance; an operator decides.
        logger.error("spool file %s not indexed: %s", relative, exc)
        return False
    return True
