"""Audit rows. Always added to the caller's session so they commit with the state change they record."""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, utcnow


class Events:
    """Every audit event name, in one place (docs/audit.md lists them with their fields)."""

    ASSOCIATION_ACCEPTED = "association.accepted"
    ASSOCIATION_REJECTED = "association.rejected"
    ASSOCIATION_ABORTED = "association.aborted"
    DIMSE_REFUSED = "dimse.refused"
    TLS_HANDSHAKE_FAILED = "tls.handshake_failed"
    INSTANCE_STORED = "instance.stored"
    INSTANCE_DUPLICATE = "instance.duplicate"
    INSTANCE_REPLACED = "instance.replaced"
    INSTANCE_REJECTED = "instance.rejected"
    # A replacement from another sender kept aside (receive.replacement_from_other_sender: quarantine).
    REPLACEMENT_QUARANTINED = "instance.replacement_quarantined"
    CONSISTENCY_SOP_IN_OTHER_SERIES = "consistency.sop_in_other_series"
    CONSISTENCY_SERIES_IN_OTHER_STUDY = "consistency.series_in_other_study"
    STOW_REJECTED = "stow.rejected"
    SERIES_FOLLOW_UP = "series.follow_up"
    SERIES_COMPLETE = "series.complete"
    SERIES_ANALYSED = "series.analysed"
    CLASSIFICATION_DISAGREEMENT = "classification.disagreement"
    ROUTE_DECISION = "route.decision"
    ROUTE_RETRY = "route.retry"
    ROUTE_FAILED = "route.failed"
    DELIVERY_QUEUED = "delivery.queued"
    DELIVERY_ATTEMPT = "delivery.attempt"
    INSTANCE_QUARANTINED = "instance.quarantined"
    DELIVERY_WRITEBACK = "delivery.writeback"
    DELIVERY_DONE = "delivery.done"
    DELIVERY_REPORT = "delivery.report"
    DELIVERY_RETRY = "delivery.retry"
    DELIVERY_DEAD_LETTER = "delivery.dead_letter"
    DELIVERY_REPLANNED = "delivery.replanned"
    DELIVERY_SUPERSEDED = "delivery.superseded"
    JOB_REQUEUED = "job.requeued"
    JOB_RECOVERED = "job.recovered"
    RULES_LOADED = "rules.loaded"
    RULES_RELOAD_FAILED = "rules.reload_failed"
    RETENTION_DELETED = "retention.deleted"
    NODE_STARTED = "node.started"
    NODE_STOPPED = "node.stopped"


class Where(TypedDict, total=False):
    """What an audit row is about; callers build one and pass it to several `record` calls."""

    series_uid: str | None
    sop_instance_uid: str | None
    job_id: int | None
    destination: str | None
    calling_ae: str | None
    peer: str | None


def record(
    session: Session,
    event: str,
    message: str = "",
    *,
    details: dict[str, Any] | None = None,
    **where: Unpack[Where],
) -> AuditEvent:
    row = AuditEvent(at=utcnow(), event=event, message=message, details=details, **where)
    session.add(row)
    return row


# Every column named, so that one compiled statement serves every row (the receive path's hot loop).
_INSERT_AUDIT = insert(AuditEvent)
_WHERE_KEYS = ("series_uid", "sop_instance_uid", "job_id", "destination", "calling_ae", "peer")


def record_core(
    connection: Connection,
    event: str,
    message: str = "",
    *,
    details: dict[str, Any] | None = None,
    **where: Unpack[Where],
) -> None:
    """As `record`, as one Core INSERT on the transaction's connection: no ORM unit of work (the
    receive path writes one per instance and this is several times cheaper). Same row, same commit."""
    values: dict[str, Any] = {key: where.get(key) for key in _WHERE_KEYS}
    connection.execute(
        _INSERT_AUDIT, dict(at=utcnow(), event=event, message=message, details=details, **values)
    )
