"""Annotated copies for one delivery attempt, in a per-job folder under the spool.

    copies = prepare_copies(spool.root, job.id, files, plan.destination.writeback, plan.results)
    try:
        sender.send(destination, copies.files, on_sent)   # same instance ids, the copies' paths
    finally:
        copies.cleanup()

Each copy is made on its own (one instance in memory at a time): read with pydicom without decoding the
pixels (PixelData stays the bytes of the file, native or encapsulated), Body Part Examined set by the
policy (node.writeback.bodypart), the private block added (node.writeback.private), new UIDs for a
derived copy (node.writeback.derived), and written in the transfer syntax of the original, so the sender
negotiates (and transcodes when the peer refuses the stored syntax) exactly as for the original. The
spooled original is only ever read.

The folder is `<spool>/outgoing/job-<id>/`; it is removed after the attempt, also when it failed, and a
folder left by a crash is removed before the next attempt of that job writes into it.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from node.deliver.base import InstanceFile
from node.deliver.destinations import WriteBack
from node.writeback import bodypart, derived, private

logger = logging.getLogger(__name__)

OUTGOING_DIR = "outgoing"
# At most this many copy failures are named in the audit row.
AUDITED_FAILURES = 20


def outgoing_folder(spool_root: Path, job_id: int) -> Path:
    return spool_root / OUTGOING_DIR / f"job-{job_id}"


@dataclass
class WriteBackReport:
    """What the write-back decided in one attempt: the `delivery.writeback` audit row (docs/audit.md)."""

    settings: WriteBack
    answer: bodypart.BodyPartAnswer
    model: str
    actions: Counter[str] = field(default_factory=Counter)
    # The sender's values that stayed (if_empty) or were replaced (overwrite), term -> count.
    kept_values: Counter[str] = field(default_factory=Counter)
    replaced_values: Counter[str] = field(default_factory=Counter)
    derived_series_uid: str | None = None
    failures: dict[int, str] = field(default_factory=dict)
    # True when a copy could not be written (disk full ...): a later attempt may succeed. A spooled file
    # that cannot be read or parsed fails the same way every time.
    transient_failure: bool = False

    def message(self) -> str:
        a = self.answer
        if a.label is None:
            body = "Body Part Examined untouched (not classifiable)"
        elif not a.writable:
            body = f"Body Part Examined not written: {a.label} ({a.reason})"
        else:
            body = f"Body Part Examined {a.term}: written in {self.actions[bodypart.WRITTEN]}"
            if self.kept_values:
                kept = ", ".join(f"{v} x{n}" for v, n in sorted(self.kept_values.items()))
                body += f", sender's value kept in {sum(self.kept_values.values())} ({kept})"
        text = f"{sum(self.actions.values())} copies with private block {private.PRIVATE_CREATOR!r}; {body}"
        if self.derived_series_uid:
            text += f"; derived series {self.derived_series_uid}"
        if self.failures:
            text += f"; {len(self.failures)} copies could not be made"
        return text

    def details(self) -> dict[str, Any]:
        a = self.answer
        return {
            "mode": self.settings.mode,
            "body_part_policy": self.settings.body_part,
            "include_doubtful": self.settings.include_doubtful,
            "derived_copy": self.settings.derived_copy,
            "model": self.model,
            "body_part": {
                "label": a.label,
                "term": a.term,
                "low_confidence": a.low_confidence,
                "disputed": a.disputed,
                "writable": a.writable,
                "reason": a.reason,
            },
            "copies": sum(self.actions.values()),
            "actions": dict(sorted(self.actions.items())),
            "kept_values": dict(sorted(self.kept_values.items())),
            "replaced_values": dict(sorted(self.replaced_values.items())),
            "private_creator": private.PRIVATE_CREATOR,
            "private_group": f"0x{private.PRIVATE_GROUP:04X}",
            "derived_series_uid": self.derived_series_uid,
            "failed": len(self.failures),
            "transient_failure": self.transient_failure,
            "failures": {str(k): v for k, v in list(self.failures.items())[:AUDITED_FAILURES]},
        }


@dataclass
class PreparedCopies:
    folder: Path
    files: list[InstanceFile]
    report: WriteBackReport

    @property
    def failed(self) -> dict[int, str]:
        return self.report.failures

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def prepare_copies(
    spool_root: Path,
    job_id: int,
    files: Sequence[InstanceFile],
    settings: WriteBack,
    results: Mapping[str, Any],
) -> PreparedCopies:
    """Make the annotated copy of every file. A file that cannot be copied is left out and named in
    `report.failures` (instance id -> why); the others are returned in the same order."""
    private.register()
    folder = outgoing_folder(spool_root, job_id)
    if folder.exists():
        logger.info("delivery %d: removing copies left by an earlier attempt in %s", job_id, folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    answer = bodypart.answer_for(results, settings)
    model = derived.model_of(results)
    report = WriteBackReport(settings=settings, answer=answer, model=model)
    prepared = PreparedCopies(folder=folder, files=[], report=report)
    blocks: dict[str, dict[str, Any]] = {}  # action -> the private block's values (the same per series)

    def block_for(action: str) -> dict[str, Any]:
        if action not in blocks:
            blocks[action] = private.block_values(results, action)
        return blocks[action]

    try:
        for f in files:
            try:
                prepared.files.append(_copy(f, folder, settings, answer, block_for, report))
            except _WriteFailed as exc:
                report.failures[f.instance_id] = f"cannot write the write-back copy of {f.path.name}: {exc}"
                report.transient_failure = True
                logger.warning("delivery %d: %s", job_id, report.failures[f.instance_id])
            except (OSError, ValueError, InvalidDicomError) as exc:
                report.failures[f.instance_id] = f"cannot make the write-back copy of {f.path.name}: {exc}"
                logger.warning("delivery %d: %s", job_id, report.failures[f.instance_id])
    except BaseException:
        prepared.cleanup()
        raise
    return prepared


class _WriteFailed(Exception):
    """Writing a copy into the outgoing folder failed (an OSError: space, permissions)."""


def _copy(
    f: InstanceFile,
    folder: Path,
    settings: WriteBack,
    answer: bodypart.BodyPartAnswer,
    block_for: Callable[[str], dict[str, Any]],
    report: WriteBackReport,
) -> InstanceFile:
    # dcmread keeps PixelData as the file's bytes (decoding happens only on .pixel_array).
    ds = dcmread(f.path)
    before = bodypart.current_value(ds)
    action = bodypart.apply(ds, answer, settings)
    report.actions[action] += 1
    if before and before != answer.term and answer.writable:
        (report.replaced_values if action == bodypart.WRITTEN else report.kept_values)[before] += 1
    private.add_block(ds, block_for(action))
    sop_instance_uid = f.sop_instance_uid
    if settings.derived_copy:
        sop_instance_uid, report.derived_series_uid = derived.make_derived(ds, report.model)
    out = folder / f"{f.instance_id}.dcm"
    # The original's transfer syntax (file_meta) and encoding are kept: no transcoding here.
    try:
        ds.save_as(out, enforce_file_format=True)
    except OSError as exc:
        raise _WriteFailed(exc.strerror or str(exc)) from exc
    return InstanceFile(
        instance_id=f.instance_id,
        path=out,
        sop_class_uid=f.sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=f.transfer_syntax_uid,
    )


def wants_copies(writeback: WriteBack, results: Mapping[str, Any] | None) -> bool:
    """Whether a delivery sends annotated copies (attributes asked for, and results frozen to write)."""
    return writeback.mode == "attributes" and results is not None
