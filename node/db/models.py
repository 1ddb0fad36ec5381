"""SQLAlchemy 2 typed models. The database is the source of truth for every series, job and audit row."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC everywhere (SQLite has no time zones) and hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    pass


class SeriesState:
    RECEIVING = "receiving"  # instances arriving; completion timer armed
    COMPLETE = "complete"  # complete; a route job is queued
    ROUTED = "routed"  # rules evaluated; delivery jobs created (possibly none)


class JobKind:
    ROUTE = "route"
    DELIVER = "deliver"


class JobState:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # dead letter: out of attempts or not retryable; `deliveries retry` requeues


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    # The AE title the first instance was sent to (A-ASSOCIATE-RQ called AE), as calling_ae.
    called_ae: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    # 1 for the first completion; each follow-up (instances after completion) adds one.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    expected_count: Mapped[int | None] = mapped_column(Integer)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    complete_reason: Mapped[str | None] = mapped_column(String(32))
    files_deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Consistency warnings (node.receive.consistency): instances of this series whose SOP Instance UID is
    # also stored in another series, and instances that arrived with another StudyInstanceUID than
    # study_uid. Stored as today, flagged for the rules (consistency.*) and the audit.
    sop_uid_conflicts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    study_uid_conflicts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("series_id", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    # Indexed alone too: the receive path looks for the same SOP Instance UID in other series.
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    # Relative to the spool root.
    path: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # The series generation in which this instance (or its latest replacement) arrived.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Who sent the stored bytes (calling AE title, IP address): a replacement from another sender is
    # refused or quarantined (receive.replacement_from_other_sender). None: unknown (indexed at start
    # from the spool, or stored before schema 0004).
    sender_ae: Mapped[str | None] = mapped_column(String(16))
    sender_host: Mapped[str | None] = mapped_column(String(64))

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """Durable work queue: route a completed series, or deliver it to one destination."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("kind", "series_id", "generation", "destination"),
        Index("ix_jobs_claim", "state", "next_run_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    # Destination name for delivery jobs; "" for route jobs (keeps the unique constraint meaningful).
    destination: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_run_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    # Which rules sent the series here (delivery jobs), for the audit and `deliveries list`.
    rules: Mapped[list[str] | None] = mapped_column(JSON)
    # Delivery jobs: the frozen plan (node.deliver.plan.DeliveryPlan.to_json) the deliverer executes.
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Route jobs: the analysis facts the decision was made on, so that a replan decides again on the
    # same facts without classifying the series again ({"facts": ..., "summary": ...}).
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    series: Mapped[Series] = relationship()


class SentInstance(Base):
    """An instance that a destination acknowledged; a retry of the same delivery skips it."""

    __tablename__ = "sent_instances"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class QuarantinedInstance(Base):
    """An instance that one delivery will not send: the destination refused it for what it is (a
    per-instance C-STORE or STOW-RS failure status) or the node could not read it back from its spool.
    A retry of the same delivery skips it, and it does not count as sent (docs/forwarding.md)."""

    __tablename__ = "quarantined_instances"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    # The peer's failure status, or None when the node could not read or convert the file.
    status: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    quarantined_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """One row per step. Written in the same transaction as the state change it records."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_series_at", "series_uid", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    event: Mapped[str] = mapped_column(String(48), index=True)
    series_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    destination: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
