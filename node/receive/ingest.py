"""Accept one received instance: validate, spool durably, record in the database, audit.

Used by the DIMSE SCP (and later STOW-RS). The caller sends its success status only after `accept`
returned, i.e. after the file is fsync'd and the database row committed.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import Connection, Row, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node import audit
from node.audit import Events, Where
from node.config import CompletionSettings, ReceiveSettings
from node.db.models import Instance, Series, SeriesState, utcnow
from node.db.session import commit_without_fsync
from node.errors import InvalidUIDError, SpoolError
from node.metrics import NodeMetrics
from node.receive import consistency
from node.receive.senders import STATUS_NOT_AUTHORIZED, Sender
from node.receive.spool import FileBytes, PendingFile, Spool, StagedFile, StagingWriter, sha256_hex
from node.receive.validate import STATUS_VALUE_TOO_LONG, InvalidInstance, check_instance
from node.uids import is_valid_uid, require_uid

logger = logging.getLogger(__name__)

Outcome = Literal["stored", "duplicate", "replaced", "kept_first", "quarantined"]


@dataclass(frozen=True)
class Received:
    """What a transport hands over: the encoded file (preamble + meta + dataset) and its decoded header."""

    data: FileBytes  # a map of `staged` when the file was written as it arrived
    dataset: Dataset
    transfer_syntax_uid: str
    calling_ae: str | None
    peer: str | None
    # The AE title the sender called (A-ASSOCIATE-RQ); None where the transport has none.
    called_ae: str | None = None
    # From the C-STORE request, when there is one, to check against the dataset.
    command_sop_class_uid: str | None = None
    command_sop_instance_uid: str | None = None
    # The transport, for the metrics: "dimse" or "stow".
    source: str = "dimse"
    # `data` already durable under a temporary name (node.receive.incoming: a large instance written to
    # the spool as it arrived); Ingest places it instead of writing `data`. Its owner removes it if not.
    staged: StagedFile | None = None


@dataclass(frozen=True)
class Accepted:
    outcome: Outcome
    series_uid: str
    last_received_at: dt.datetime
    expected_count_reached: bool
    # The consistency warnings recorded for this instance (node.receive.consistency.KINDS).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Identity:
    """The validated UIDs and counters of one instance."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    expected: int | None
    instance_number: int | None
    modality: str | None = None


_SERIES_COLUMNS = (
    Series.id,
    Series.state,
    Series.generation,
    Series.instance_count,
    Series.expected_count,
    Series.study_uid,
)
SeriesRow = Row[int, str, int, int, int | None, str]

# Statements of the receive path, built once: building them per instance (coercion, cache keys) cost
# more than executing them.
_TOUCH_SERIES = (
    update(Series)
    .where(Series.series_uid == bindparam("b_uid"))
    .values(last_received_at=bindparam("b_now"))
    .returning(*_SERIES_COLUMNS)
)
_FIND_INSTANCE = select(
    Instance.id, Instance.sha256, Instance.path, Instance.sender_ae, Instance.sender_host
).where(Instance.series_id == bindparam("b_series"), Instance.sop_instance_uid == bindparam("b_sop"))
_INSERT_INSTANCE = insert(Instance)
_COUNT_SERIES = (
    update(Series)
    .where(Series.id == bindparam("b_id"))
    .values(instance_count=bindparam("b_count"), expected_count=bindparam("b_expected"))
)


# The message of the audit row of an instance indexed at start from its spooled file.
RECOVERED = "indexed at start: the file was durable in the spool, its database row was lost (crash)"


class RejectedInstance(Exception):
    """The instance is refused; `status` is the DICOM status to answer, `reason` says why; `details`
    go into the audit row's details besides the status and size."""

    def __init__(self, status: int, reason: str, details: dict[str, object] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.details = details or {}


REPLACEMENT_REFUSED = "replacement of an instance stored by another sender refused"

# Status codes (PS3.4 Annex B): A700 out of resources, A900 data set does not match SOP class,
# C000-CFFF cannot understand (C210: cannot decode, as pynetdicom uses it; C220: invalid/missing UID).
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_MISMATCH = 0xA900
STATUS_CANNOT_DECODE = 0xC210
STATUS_INVALID_UID = 0xC220
# C230 (pixel data inconsistent) and C240 (STATUS_VALUE_TOO_LONG: a value longer or larger than its
# column holds) come from node.receive.validate.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def too_large(size: int, limit: int) -> RejectedInstance:
    """The refusal of an instance over receive.max_instance_bytes (whichever path measured it)."""
    reason = f"instance of {size} bytes exceeds max_instance_bytes {limit}"
    return RejectedInstance(STATUS_OUT_OF_RESOURCES, reason)


class Ingest:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        spool: Spool,
        receive: ReceiveSettings,
        completion: CompletionSettings,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NodeMetrics()
        self._sessions = session_factory
        self._spool = spool
        self._receive = receive
        self._completion = completion
        self._in_flight = _InFlight()

    def accept(self, item: Received) -> Accepted:
        """Store the instance durably or raise RejectedInstance (after auditing the rejection)."""
        try:
            accepted = self._accept(item)
        except RejectedInstance as exc:
            self.audit_rejection(item, exc)
            raise
        except Exception as exc:  # the instance's boundary: a bug must still get a status and an audit row
            who = item.calling_ae or item.peer
            logger.exception("unexpected error while receiving an instance from %s", who)
            rejected = RejectedInstance(STATUS_OUT_OF_RESOURCES, f"internal error: {type(exc).__name__}")
            self.audit_rejection(item, rejected)
            raise rejected from exc
        self._metrics.record_received(
            item.source, item.calling_ae, item.transfer_syntax_uid, len(item.data), accepted.outcome
        )
        for kind in accepted.warnings:
            self._metrics.record_consistency_warning(kind)
        return accepted

    def _identify(self, item: Received) -> _Identity:
        """The validated UIDs and counters, or RejectedInstance. In this order: size (0xA700), the bytes
        (node.receive.validate: 0xC210 undecodable, 0xC230 pixel data, 0xC240 value too long), the
        UIDs (0xC220), the request's SOP class and instance (0xA900)."""
        if len(item.data) > self._receive.max_instance_bytes:
            raise too_large(len(item.data), self._receive.max_instance_bytes)
        ds = item.dataset
        try:
            check_instance(item.data, item.transfer_syntax_uid, self._receive.max_instance_bytes)
        except InvalidInstance as exc:
            raise RejectedInstance(exc.status, exc.reason) from exc
        try:
            sop_uid = require_uid("SOPInstanceUID", _read(ds, "SOPInstanceUID"))
            sop_class = require_uid("SOPClassUID", _read(ds, "SOPClassUID"))
            series_uid = require_uid("SeriesInstanceUID", _read(ds, "SeriesInstanceUID"))
            study_uid = require_uid("StudyInstanceUID", _read(ds, "StudyInstanceUID"))
        except InvalidUIDError as exc:
            raise RejectedInstance(STATUS_INVALID_UID, str(exc)) from exc
        if item.command_sop_instance_uid and item.command_sop_instance_uid.strip() != sop_uid:
            raise RejectedInstance(
                STATUS_SOP_MISMATCH,
                f"SOPInstanceUID {sop_uid} differs from the request's {item.command_sop_instance_uid}",
            )
        if item.command_sop_class_uid and item.command_sop_class_uid.strip() != sop_class:
            raise RejectedInstance(STATUS_SOP_MISMATCH, f"SOPClassUID {sop_class} differs from the request's")
        # Read here, once, and checked for the columns (so that SQLite and PostgreSQL answer alike);
        # nothing reads the data set lazily after this.
        return _Identity(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            sop_class=sop_class,
            expected=self._expected_count(ds),
            instance_number=_column_int(ds, "InstanceNumber"),
            modality=_column_text(ds, "Modality"),
        )

    def _accept(self, item: Received) -> Accepted:
        ident = self._identify(item)
        # A staged file is on the disk already (its writer checked the floor as it wrote).
        if item.staged is None and (refusal := self.free_disk_refusal(len(item.data))) is not None:
            raise refusal
        for attempt in range(2):
            # The file is hashed, written and fdatasync'd on the spool's I/O threads while this thread
            # does the database work; both must finish before the success status.
            pending = PendingFile.ready(item.staged) if item.staged else self._spool.stage_async(item.data)
            try:
                with self._in_flight:
                    if self._in_flight.others_busy():
                        # Other instances are being stored: wait for this file to be durable before the
                        # transaction, so that it holds SQLite's single write lock only for its statements,
                        # not through this file's fdatasync (which would serialise every fdatasync).
                        pending.staged.exception()
                    return self._record(item, ident, pending)
            except IntegrityError:
                # Another association created the same series (or instance) at the same moment.
                if attempt == 1:
                    raise RejectedInstance(STATUS_OUT_OF_RESOURCES, "database conflict, retry") from None
            finally:
                if item.staged is None:  # a staged file is kept for the second attempt; its owner cleans up
                    _discard_unplaced(self._spool, pending)
        raise AssertionError("unreachable")

    def free_disk_refusal(self, size: int) -> RejectedInstance | None:
        """0xA700 before anything is written when the spool's file system would keep less than
        receive.min_free_disk_bytes free after `size` more bytes (statvfs: a few microseconds)."""
        floor = self._receive.min_free_disk_bytes
        if not floor:
            return None
        free = self._spool.free_bytes()
        if free - size >= floor:
            return None
        return RejectedInstance(
            STATUS_OUT_OF_RESOURCES,
            f"spool disk has {free // 2**20} MiB free, below receive.min_free_disk_bytes "
            f"({floor // 2**20} MiB) with this instance",
        )

    @property
    def spill_to_disk_bytes(self) -> int:
        """Instances larger than this are not held in memory (receive.spill_to_disk_bytes)."""
        return self._receive.spill_to_disk_bytes

    def adopt_staged(self, path: Path) -> StagedFile:
        """A file a transport wrote to the spool's tmp dir, made durable for accept() (Received.staged)."""
        return self._spool.adopt(path)

    def staging_writer(self) -> StagingWriter:
        """A temporary file in the spool for an instance written as it arrives."""
        return self._spool.staging_writer()

    def discard_staged(self, staged: StagedFile) -> None:
        """Remove a staged file that was not placed (the instance was refused, or stored as a duplicate)."""
        self._spool.discard(staged)

    def index_spooled(self, relative: str, item: Received) -> Accepted:
        """Record a file that is already durable in the spool at `relative` but has no database row
        (its commit was lost: node.receive.reconcile). As a new instance, or as a replacement of the
        row of the same SOP Instance UID (the caller has checked that the file is the newer one)."""
        return self._record(item, self._identify(item), None, spooled=relative)

    def _record(
        self, item: Received, ident: _Identity, pending: PendingFile | None, spooled: str | None = None
    ) -> Accepted:
        """One transaction, in SQLAlchemy Core statements (this is the hot path: the ORM's unit of work
        cost more than the fdatasync here). `pending`: the file being staged; None with `spooled`, the
        path of a file already in place."""
        now = utcnow()
        written: str | None = None
        obsolete: str | None = None
        quarantined: str | None = None
        sender = Sender.of(item.calling_ae, item.peer)
        series_uid, sop_uid = ident.series_uid, ident.sop_uid
        try:
            with self._sessions() as session, session.begin():
                # Core statements on the transaction's connection: the ORM's execute() path
                # (bulk-persistence hooks, identity map) cost more than the statements.
                conn = session.connection()
                # The file is durable before this commit, and a lost row is rebuilt from the file at
                # start (node.receive.reconcile): the commit need not be fsync'd (docs/receiving.md).
                commit_without_fsync(conn)
                series = self._lock_series(conn, item, ident, now)
                existing = conn.execute(_FIND_INSTANCE, {"b_series": series.id, "b_sop": sop_uid}).first()
                # The digest is ready long before the file is durable; the database work goes on meanwhile.
                digest = pending.digest.result() if pending is not None else sha256_hex(item.data)
                size = len(item.data)
                common = Where(
                    series_uid=series_uid,
                    sop_instance_uid=sop_uid,
                    calling_ae=item.calling_ae,
                    peer=item.peer,
                )
                if spooled is None and existing is not None and existing.sha256 == digest:
                    audit.record_core(
                        conn,
                        Events.INSTANCE_DUPLICATE,
                        "same bytes received again; acknowledged, not stored twice",
                        details={"size": size, "identical": True},
                        **common,
                    )
                    return Accepted("duplicate", series_uid, now, False)
                if (
                    spooled is None
                    and existing is not None
                    and self._receive.duplicate_policy == "keep_first"
                ):
                    audit.record_core(
                        conn,
                        Events.INSTANCE_DUPLICATE,
                        "different bytes for a stored SOP Instance UID; kept the first (keep_first)",
                        details={
                            "size": size,
                            "identical": False,
                            "sha256": digest,
                            "kept_sha256": existing.sha256,
                        },
                        **common,
                    )
                    return Accepted("kept_first", series_uid, now, False)
                if spooled is None and existing is not None:
                    original = Sender(existing.sender_ae, existing.sender_host)
                    if not original.same_as(sender):
                        quarantined = self._replacement_by_other_sender(
                            conn, item, ident, pending, original, sender, digest, existing.sha256, common
                        )
                        if quarantined is not None:
                            return Accepted("quarantined", series_uid, now, False)

                warnings = consistency.check(
                    conn,
                    series_id=series.id,
                    stored_study_uid=series.study_uid,
                    study_uid=ident.study_uid,
                    sop_uid=sop_uid,
                    new_instance=existing is None,
                )
                consistency.record(conn, series.id, warnings, common)
                generation = self._start_follow_up_if_needed(conn, series, common)
                file_columns = dict(
                    transfer_syntax_uid=item.transfer_syntax_uid,
                    size=size,
                    sha256=digest,
                    generation=generation,
                    received_at=now,
                )
                if spooled is None:  # a file indexed at start has no known sender: keep the row's
                    file_columns.update(sender_ae=sender.ae, sender_host=sender.host)
                outcome: Outcome
                count = series.instance_count
                if existing is None:
                    written = spooled or Spool.relative_path(ident.study_uid, series_uid, sop_uid)
                    conn.execute(
                        _INSERT_INSTANCE,
                        dict(
                            series_id=series.id,
                            sop_instance_uid=sop_uid,
                            sop_class_uid=ident.sop_class,
                            instance_number=ident.instance_number,
                            path=written,
                            **file_columns,
                        ),
                    )
                    count += 1
                    outcome = "stored"
                    audit.record_core(
                        conn,
                        Events.INSTANCE_STORED,
                        RECOVERED if spooled else "",
                        details={
                            "size": size,
                            "transfer_syntax": item.transfer_syntax_uid,
                            "sop_class": ident.sop_class,
                        },
                        **common,
                    )
                else:
                    # Replace: the new file goes to a new path; the old one is removed after commit.
                    written = spooled or Spool.relative_path(
                        ident.study_uid, series_uid, sop_uid, _next_variant(existing.path)
                    )
                    obsolete = existing.path
                    conn.execute(
                        update(Instance)
                        .where(Instance.id == existing.id)
                        .values(path=written, **file_columns)
                    )
                    outcome = "replaced"
                    audit.record_core(
                        conn,
                        Events.INSTANCE_REPLACED,
                        RECOVERED
                        if spooled
                        else "different bytes for a stored SOP Instance UID; replaced (policy replace)",
                        details={
                            "size": size,
                            "old_sha256": existing.sha256,
                            "sha256": digest,
                            "transfer_syntax": item.transfer_syntax_uid,
                            "original_sender": Sender(existing.sender_ae, existing.sender_host).to_audit(),
                            "sender": sender.to_audit(),
                        },
                        **common,
                    )
                expected = ident.expected if ident.expected is not None else series.expected_count
                # Safe read-modify-write: this transaction holds the series row's lock (_lock_series).
                conn.execute(_COUNT_SERIES, {"b_id": series.id, "b_count": count, "b_expected": expected})
                # Last: wait until the file is durable, then rename it into place; the commit follows.
                if pending is not None:
                    self._spool.place(pending.staged.result(), written)
                result = Accepted(
                    outcome,
                    series_uid,
                    now,
                    expected is not None and count >= expected,
                    tuple(w.kind for w in warnings),
                )
        except SpoolError as exc:
            logger.error("spool write failed for %s in series %s: %s", sop_uid, series_uid, exc)
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, str(exc)) from exc
        except SQLAlchemyError as exc:
            if written is not None and spooled is None:  # never remove a durable file found at start
                self._spool.remove(written)
            if quarantined is not None:
                self._spool.remove_quarantined(quarantined)
            if isinstance(exc, IntegrityError):
                raise
            logger.error("database write failed for %s in series %s: %s", sop_uid, series_uid, exc)
            raise RejectedInstance(STATUS_OUT_OF_RESOURCES, f"database error: {type(exc).__name__}") from exc
        if obsolete is not None:
            self._spool.remove(obsolete)
        return result

    def _replacement_by_other_sender(
        self,
        conn: Connection,
        item: Received,
        ident: _Identity,
        pending: PendingFile | None,
        original: Sender,
        newcomer: Sender,
        digest: str,
        stored_sha256: str,
        common: Where,
    ) -> str | None:
        """Other bytes for a stored instance from another sender (or over one whose sender is unknown).
        `refuse`: RejectedInstance 0x0124 (audited by accept with both senders); `quarantine`: the file
        is placed in the spool's quarantine folder and audited, its quarantine path returned; `allow`:
        None, the caller replaces as from the same sender."""
        policy = self._receive.replacement_from_other_sender
        if policy == "allow":
            return None
        senders = {"original_sender": original.to_audit(), "sender": newcomer.to_audit()}
        if policy == "refuse":
            raise RejectedInstance(
                STATUS_NOT_AUTHORIZED,
                # The ErrorComment (its first 64 characters) names neither sender; the audit row both.
                REPLACEMENT_REFUSED,
                {**senders, "sha256": digest, "stored_sha256": stored_sha256},
            )
        assert pending is not None  # only the receive path gets here, never the start-up index
        relative = (
            Spool.relative_path(ident.study_uid, ident.series_uid, ident.sop_uid, 0).removesuffix(".dcm")
            + f"~{digest[:16]}.dcm"
        )
        audit.record_core(
            conn,
            Events.REPLACEMENT_QUARANTINED,
            f"different bytes for a stored SOP Instance UID from {newcomer.describe()}, stored from "
            f"{original.describe()}: kept aside, not forwarded (receive.replacement_from_other_sender)",
            details={
                **senders,
                "path": f"quarantine/{relative}",
                "size": len(item.data),
                "sha256": digest,
                "stored_sha256": stored_sha256,
            },
            **common,
        )
        self._spool.quarantine(pending.staged.result(), relative)
        return relative

    def _lock_series(self, conn: Connection, item: Received, ident: _Identity, now: dt.datetime) -> SeriesRow:
        """The series row (id, state, generation, counts), created if new. An existing row is written
        first (UPDATE ... RETURNING) so that this transaction holds its lock (PostgreSQL row lock,
        SQLite's write lock) before its state is read. A completion racing with this instance then
        either happened before (this instance starts a follow-up) or sees the new last_received_at
        and does not complete."""
        touched = conn.execute(_TOUCH_SERIES, {"b_uid": ident.series_uid, "b_now": now}).first()
        if touched is not None:
            return touched
        return conn.execute(
            insert(Series)
            .values(
                series_uid=ident.series_uid,
                study_uid=ident.study_uid,
                modality=ident.modality,
                calling_ae=item.calling_ae,
                called_ae=item.called_ae,
                state=SeriesState.RECEIVING,
                generation=1,
                instance_count=0,
                first_received_at=now,
                last_received_at=now,
            )
            .returning(*_SERIES_COLUMNS)
        ).one()

    def _start_follow_up_if_needed(self, conn: Connection, series: SeriesRow, common: Where) -> int:
        """Returns the generation new instances belong to (a new one if the series had completed)."""
        if series.state == SeriesState.RECEIVING:
            return int(series.generation)
        generation = int(series.generation) + 1
        conn.execute(
            update(Series)
            .where(Series.id == series.id)
            .values(
                generation=generation,
                state=SeriesState.RECEIVING,
                completed_at=None,
                complete_reason=None,
                # retention may have removed earlier files; new ones arrive
                files_deleted_at=None,
            )
        )
        audit.record_core(
            conn,
            Events.SERIES_FOLLOW_UP,
            f"instance arrived after completion; follow-up generation {generation} started",
            details={"generation": generation},
            **common,
        )
        return generation

    def _expected_count(self, ds: Dataset) -> int | None:
        keyword = self._completion.expected_count_attribute
        if not keyword:
            return None
        value = _column_int(ds, keyword)
        return value if value and value > 0 else None

    def refuse_undecodable(self, item: Received, exc: Exception) -> RejectedInstance:
        """For a transport whose decoding of the data set failed (`item.dataset` is empty): the
        validator's precise reason where it finds one (0xC210 otherwise), audited."""
        try:
            check_instance(item.data, item.transfer_syntax_uid, self._receive.max_instance_bytes)
            rejected = RejectedInstance(STATUS_CANNOT_DECODE, f"cannot decode data set: {type(exc).__name__}")
        except InvalidInstance as invalid:
            rejected = RejectedInstance(invalid.status, invalid.reason)
        self.audit_rejection(item, rejected)
        return rejected

    def audit_rejection(self, item: Received, exc: RejectedInstance, size: int | None = None) -> None:
        """Record a refused instance; UIDs only if they are valid (never patient data). `size`: the
        bytes received, where `item.data` does not hold them (dropped while they arrived)."""

        def uid_or_none(keyword: str) -> str | None:
            try:
                value = item.dataset.get(keyword)
            except Exception:  # malformed data set: the UID cannot be read at all
                return None
            return value if isinstance(value, str) and len(value) <= 64 else None

        who = item.calling_ae or item.peer
        logger.warning("instance from %s rejected (0x%04X): %s", who, exc.status, exc.reason)
        self._metrics.record_refused(item.source, exc.status)
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
                    details={
                        "status": exc.status,
                        "size": len(item.data) if size is None else size,
                        **exc.details,
                    },
                )
        except SQLAlchemyError:
            logger.exception("could not audit the rejection")


class _InFlight:
    """How many instances this Ingest is storing at once (a context manager counts one)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> _InFlight:
        with self._lock:
            self._count += 1
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._count -= 1

    def others_busy(self) -> bool:
        return self._count > 1


def _valid_or_none(value: str | None) -> str | None:
    return value if is_valid_uid(value) else None


def _read(ds: Dataset, keyword: str) -> object:
    """An attribute's value, decoded now (pydicom decodes lazily): what node.receive.validate let
    through decodes, and should a value still fail, the answer names it instead of an exception escaping
    to pynetdicom (0xC211, no audit row)."""
    try:
        return ds.get(keyword)
    except Exception as exc:  # pydicom raises assorted types for a malformed value
        reason = f"{keyword} cannot be decoded: {type(exc).__name__}: {exc}"
        raise RejectedInstance(STATUS_CANNOT_DECODE, reason) from exc


def _column_text(ds: Dataset, keyword: str) -> str | None:
    """A single-valued text attribute for a column (its length was checked by node.receive.validate)."""
    value = _read(ds, keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        raise RejectedInstance(STATUS_VALUE_TOO_LONG, f"{keyword} has {len(value)} values, one expected")
    if not isinstance(value, str):  # pydicom keeps a value it could not convert as bytes (VR UN)
        raise RejectedInstance(STATUS_CANNOT_DECODE, f"{keyword} cannot be decoded as text")
    return value.strip() or None


def _column_int(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute for an INTEGER column: within PS3.5's IS range (32-bit signed), which both
    databases hold (SQLite would take a larger one, PostgreSQL would not)."""
    value = _int_or_none(_read(ds, keyword))
    if value is not None and not INT32_MIN <= value <= INT32_MAX:
        raise RejectedInstance(STATUS_VALUE_TOO_LONG, f"{keyword} {value} is outside the 32-bit range")
    return value


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


def _discard_unplaced(spool: Spool, pending: PendingFile) -> None:
    """Remove the temporary file of a staged write that did not end up in the spool."""
    try:
        spool.discard(pending.staged.result())
    except SpoolError:
        pass  # the write itself failed: there is nothing to remove
