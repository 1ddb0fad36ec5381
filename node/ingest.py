"""Accept one received instance: validate, spool durably, record in the database, audit.

Used by the DIMSE SCP (and later STOW-RS). The caller sends its success status only after `accept`
returned, i.e. after the file is fsync'd and the database row committed.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Literal

from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node import audit
from node.audit import Events, Where
from node.config import CompletionSettings, ReceiveSettings
from node.db.models import Instance, Series, SeriesState, utcnow
from node.errors import InvalidUIDError, SpoolError
from node.spool import Spool, sha256_hex
from node.uids import is_valid_uid, require_uid

logger = logging.getLogger(__name__)

Outcome = Literal["stored", "duplicate", "replaced", "kept_first"]


@dataclass(frozen=True)
class Received:
    """What a transport hands over: the encoded file (preamble + meta + dataset) and its decoded header."""

    data: bytes
    dataset: Dataset
    transfer_syntax_uid: str
    calling_ae: str | None
    peer: str | None
    # From the C-STORE request, when there is one, to check against the dataset.
    command_sop_class_uid: str | None = None
    command_sop_instance_uid: str | None = None


@dataclass(frozen=True)
class Accepted:
    outcome: Outcome
    series_uid: str
    last_received_at: dt.datetime
    expected_count_reached: bool


class RejectedInstance(Exception):
    """The instance is refused; `status` is the DICOM status to answer, `reason` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Status codes (PS3.4 Annex B): A700 out of resources, A900 data set does not match SOP class,
# C000-CFFF cannot understand (C210: cannot decode, as pynetdicom uses it; C220: invalid/missing UID).
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_MISMATCH = 0xA900
STATUS_CANNOT_DECODE = 0xC210
STATUS_INVALID_UID = 0xC220


class Ingest:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        spool: Spool,
        receive: ReceiveSettings,
        completion: CompletionSettings,
    ) -> None:
        self._sessions = session_factory
        self._spool = spool
        self._receive = receive
        self._completion = completion

    def accept(self, item: Received) -> Accepted:
        """Store the instance durably or raise RejectedInstance (after auditing the rejection)."""
        try:
            return self._accept(item)
        except RejectedInstance as exc:
            self.audit_rejection(item, exc)
            raise

    def _accept(self, item: Received) -> Accepted:
        ds = item.dataset
        try:
            sop_uid = require_uid("SOPInstanceUID", ds.get("SOPInstanceUID"))
            sop_class = require_uid("SOPClassUID", ds.get("SOPClassUID"))
            series_uid = require_uid("SeriesInstanceUID", ds.get("SeriesInstanceUID"))
            study_uid = require_uid("StudyInstanceUID", ds.get("StudyInstanceUID"))
        except InvalidUIDError as exc:
            raise RejectedInstance(STATUS_INVALID_UID, str(exc)) from exc
        except Exception as exc:  # pydicom raises many types while decoding a malformed element lazily
            raise RejectedInstance(STATUS_CANNOT_DECODE, f"cannot decode data set: {exc}") from exc
        if item.command_sop_instance_uid and item.command_sop_instance_uid.strip() != sop_uid:
            raise RejectedInstance(
                STATUS_SOP_MISMATCH,
                f"SOPInstanceUID {sop_uid} differs from the request's {item.command_sop_instance_uid}",
            )
        if item.command_sop_class_uid and item.command_sop_class_uid.strip() != sop_class:
            raise RejectedInstance(STATUS_SOP_MISMATCH, f"SOPClassUID {sop_class} differs from the request's")
        if len(item.data) > self._receive.max_instance_bytes:
            raise RejectedInstance(
                STATUS_OUT_OF_RESOURCES,
                f"instance of {len(item.data)} bytes exceeds max_instance_bytes "
                f"{self._receive.max_instance_bytes}",
            )
        digest = sha256_hex(item.data)
        expected = self._expected_count(ds)
        instance_number = _int_or_none(ds.get("InstanceNumber"))
        for attempt in range(2):
            try:
                return self._record(
                    item, study_uid, series_uid, sop_uid, sop_class, digest, expected, instance_number
                )
            except IntegrityError:
                # Another association created the same series (or instance) at the same moment.
                if attempt == 1:
                    raise RejectedInstance(STATUS_OUT_OF_RESOURCES, "database conflict, retry") from None
        raise AssertionError("unreachable")

    def _record(
        self,
        item: Received,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        sop_class: str,
        digest: str,
        expected: int | None,
        instance_number: int | None,
    ) -> Accepted:
        now = utcnow()
        written: str | None = None
        obsolete: str | None = None
        try:
            with self._sessions() as session, session.begin():
                series = session.scalar(select(Series).where(Series.series_uid == series_uid))
                if series is None:
                    series = Series(
                        series_uid=series_uid,
                        study_uid=study_uid,
                        modality=str(item.dataset.get("Modality", "") or "") or None,
                        calling_ae=item.calling_ae,
                        state=SeriesState.RECEIVING,
                        generation=1,
                        instance_count=0,
                        first_received_at=now,
                        last_received_at=now,
                    )
                    session.add(series)
                    session.flush()
                else:
                    # Write to the series row first: this takes its lock (PostgreSQL row lock, SQLite's
                    # write lock) so that the state read below cannot change before this commits. A
                    # completion racing with this instance either happened before (then this instance
                    # starts a follow-up) or sees the new last_received_at and does not complete.
                    session.execute(
                        update(Series)
                        .where(Series.id == series.id)
                        .values(last_received_at=now)
                        .execution_options(synchronize_session=False)
                    )
                    session.refresh(series)
                existing = session.scalar(
                    select(Instance).where(
                        Instance.series_id == series.id, Instance.sop_instance_uid == sop_uid
                    )
                )
                common = Where(
                    series_uid=series_uid,
                    sop_instance_uid=sop_uid,
                    calling_ae=item.calling_ae,
                    peer=item.peer,
                )
                if existing is not None and existing.sha256 == digest:
                    audit.record(
                        session,
                        Events.INSTANCE_DUPLICATE,
                        "same bytes received again; acknowledged, not stored twice",
                        details={"size": len(item.data), "identical": True},
                        **common,
                    )
                    return Accepted("duplicate", series_uid, series.last_received_at, False)
                if existing is not None and self._receive.duplicate_policy == "keep_first":
                    audit.record(
                        session,
                        Events.INSTANCE_DUPLICATE,
                        "different bytes for a stored SOP Instance UID; kept the first (keep_first)",
                        details={
                            "size": len(item.data),
                            "identical": False,
                            "sha256": digest,
                            "kept_sha256": existing.sha256,
                        },
                        **common,
                    )
                    return Accepted("kept_first", series_uid, series.last_received_at, False)

                self._start_follow_up_if_needed(session, series, common)
                if existing is None:
                    written = Spool.relative_path(study_uid, series_uid, sop_uid)
                    self._spool.write(written, item.data)
                    session.add(
                        Instance(
                            series_id=series.id,
                            sop_instance_uid=sop_uid,
                            sop_class_uid=sop_class,
                            transfer_syntax_uid=item.transfer_syntax_uid,
                            instance_number=instance_number,
                            path=written,
                            size=len(item.data),
                            sha256=digest,
                            generation=series.generation,
                            received_at=now,
                        )
                    )
                    series.instance_count += 1
                    outcome: Outcome = "stored"
                    audit.record(
                        session,
                        Events.INSTANCE_STORED,
                        "",
                        details={
                            "size": len(item.data),
                            "transfer_syntax": item.transfer_syntax_uid,
                            "sop_class": sop_class,
                        },
                        **common,
                    )
                else:
                    # Replace: the new file goes to a new path; the old one is removed after commit.
                    variant = _next_variant(existing.path)
                    written = Spool.relative_path(study_uid, series_uid, sop_uid, variant)
                    self._spool.write(written, item.data)
                    obsolete = existing.path
                    audit.record(
                        session,
                        Events.INSTANCE_REPLACED,
                        "different bytes for a stored SOP Instance UID; replaced (policy replace)",
                        details={
                            "size": len(item.data),
                            "old_sha256": existing.sha256,
                            "sha256": digest,
                            "transfer_syntax": item.transfer_syntax_uid,
                        },
                        **common,
                    )
                    existing.path = written
                    existing.size = len(item.data)
                    existing.sha256 = digest
                    existing.transfer_syntax_uid = item.transfer_syntax_uid
                    existing.generation = series.generation
                    existing.received_at = now
                    outcome = "replaced"
                series.last_received_at = now
                if expected is not None:
                    series.expected_count = expected
                reached = series.expected_count is not None and series.instance_count >= series.expected_count
                result = Accepted(outcome, series_uid, now, reached)
        except SpoolError as exc:
            logger.error("spool write failed for %s in series %s: %s", sop_uid, series_uid, exc)
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, str(exc)) from exc
        except SQLAlchemyError as exc:
            if written is not None:
                self._spool.remove(written)
            if isinstance(exc, IntegrityError):
                raise
            logger.error("database write failed for %s in series %s: %s", sop_uid, series_uid, exc)
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, f"database error: {type(exc).__name__}") from exc
        if obsolete is not None:
            self._spool.remove(obsolete)
        return result

    def _start_follow_up_if_needed(self, session: Session, series: Series, common: Where) -> None:
        if series.state == SeriesState.RECEIVING:
            return
        series.generation += 1
        series.state = SeriesState.RECEIVING
        series.completed_at = None
        series.complete_reason = None
        series.files_deleted_at = None  # retention may have removed earlier files; new ones arrive
        audit.record(
            session,
            Events.SERIES_FOLLOW_UP,
            f"instance arrived after completion; follow-up generation {series.generation} started",
            details={"generation": series.generation},
            **common,
        )

    def _expected_count(self, ds: Dataset) -> int | None:
        keyword = self._completion.expected_count_attribute
        if not keyword:
            return None
        value = _int_or_none(ds.get(keyword))
        return value if value and value > 0 else None

    def audit_rejection(self, item: Received, exc: RejectedInstance) -> None:
        """Record a refused instance; UIDs only if they are valid (never patient data)."""

        def uid_or_none(keyword: str) -> str | None:
            try:
                value = item.dataset.get(keyword)
            except Exception:  # malformed data set: the UID cannot be read at all
                return None
            return value if isinstance(value, str) and len(value) <= 64 else None

        logger.warning("instance from %s rejected (0x%04X): %s", item.calling_ae, exc.status, exc.reason)
        try:
            with self._sessions() as session, session.begin():
                audit.record(
                    session,
                    Events.INSTANCE_REJECTED,
                    exc.reason,
                    series_uid=_valid_or_none(uid_or_none("SeriesInstanceUID")),
                    sop_instance_uid=_valid_or_none(uid_or_none("SOPInstanceUID")),
                    calling_ae=item.calling_ae,
                    peer=item.peer,
                    details={"status": exc.status, "size": len(item.data)},
                )
        except SQLAlchemyError:
            logger.exception("could not audit the rejection")


def _valid_or_none(value: str | None) -> str | None:
    return value if is_valid_uid(value) else None


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _next_variant(path: str) -> int:
    """Replacement files are named <SOP UID>~<n>.dcm; the next replacement gets n + 1."""
    stem = path.rsplit("/", 1)[-1].removesuffix(".dcm")
    _, sep, counter = stem.partition("~")
    return int(counter) + 1 if sep and counter.isdigit() else 1
