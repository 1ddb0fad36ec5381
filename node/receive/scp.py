"""The DICOM SCP: C-ECHO and C-STORE, called- and calling-AE checks, graceful drain.

Handlers are plain functions with their dependencies bound (pynetdicom's evt_handlers args). The
C-STORE handler does only what must happen before the status: validate, spool with fsync, commit
the database row. Completion timers are re-armed through the tracker (a scheduler call, cheap).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node import audit
from node.audit import Events
from node.config import ReceiveSettings
from node.metrics import NodeMetrics
from node.pynetdicom_tuning import (
    EVT_PROTOCOL_ERROR,
    HostLimitedServer,
    abort_associations,
    close_unnegotiated,
    established,
    start_server,
    tune_association,
)
from node.receive.ingest import Ingest, Received, RejectedInstance

logger = logging.getLogger(__name__)

# (series UID, time of the last instance, expected count reached): re-arms the completion timer.
OnStored = Callable[[str, dt.datetime, bool], None]

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

# A-ASSOCIATE-RJ reasons: (result, source, diagnostic), PS3.8 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service-user, called AE not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit
# The metrics' names for them (dicom_node_associations_rejected_total{reason}).
REJECT_NAMES = {REJECT_CALLING_AE: "calling_ae", REJECT_CALLED_AE: "called_ae", REJECT_BUSY: "busy"}


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # ErrorComment is LO: at most 64 characters.
    status.ErrorComment = comment[:64]
    return status


def _peer(event: evt.Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.address}:{requestor.port}"


def _calling_ae(event: evt.Event) -> str:
    primitive = event.assoc.requestor.primitive
    title = primitive.calling_ae_title if primitive is not None else event.assoc.requestor.ae_title
    return str(title).strip()


def _called_ae(event: evt.Event) -> str | None:
    """The AE title the peer asked for in its A-ASSOCIATE-RQ."""
    primitive = event.assoc.requestor.primitive
    return str(primitive.called_ae_title).strip() if primitive is not None else None


def handle_echo(event: evt.Event) -> int:
    return 0x0000


def handle_store(
    event: evt.Event, ingest: Ingest, on_stored: Callable[[str, object, bool], None]
) -> int | Dataset:
    calling_ae = event.assoc.requestor.ae_title.strip()
    peer = _peer(event)
    try:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
    except Exception as exc:  # pydicom raises assorted errors on garbage; answer "cannot understand"
        undecodable = Received(
            event.encoded_dataset(), Dataset(), str(event.context.transfer_syntax), calling_ae, peer
        )
        rejected = ingest.refuse_undecodable(undecodable, exc)
        return _status(rejected.status, rejected.reason)
    request = cast(C_STORE, event.request)
    item = Received(
        data=event.encoded_dataset(),
        dataset=dataset,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        calling_ae=calling_ae,
        peer=peer,
        called_ae=_called_ae(event),
        command_sop_class_uid=str(request.AffectedSOPClassUID),
        command_sop_instance_uid=str(request.AffectedSOPInstanceUID),
    )
    try:
        accepted = ingest.accept(item)
    except RejectedInstance as exc:
        return _status(exc.status, exc.reason)
    on_stored(accepted.series_uid, accepted.last_received_at, accepted.expected_count_reached)
    return 0x0000


class AssociationPolicy:
    """Decides who may associate and audits the decision; also drains on shutdown."""

    def __init__(
        self,
        settings: ReceiveSettings,
        session_factory: sessionmaker[Session],
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._metrics = metrics or NodeMetrics()
        self._allowed = settings.allowed_callers
        self._answers_to = settings.answers_to if settings.check_called_ae else None
        self._sessions = session_factory
        self._draining = threading.Event()

    def drain(self) -> None:
        """Refuse new associations (transient rejection) while the ones in progress finish."""
        self._draining.set()

    def is_allowed(self, calling_ae: str, host: str) -> bool:
        if not self._allowed:
            return True
        return any(a.ae_title == calling_ae and (a.host is None or a.host == host) for a in self._allowed)

    def on_requested(self, event: evt.Event) -> None:
        calling_ae = _calling_ae(event)
        called_ae = _called_ae(event)
        host = event.assoc.requestor.address
        if self._draining.is_set():
            reason, why = REJECT_BUSY, "node is shutting down"
        elif self._answers_to is not None and called_ae not in self._answers_to:
            reason, why = REJECT_CALLED_AE, f"called AE title {called_ae!r} is not the node's"
        elif not self.is_allowed(calling_ae, host):
            reason, why = REJECT_CALLING_AE, "calling AE title/host not in allowed_callers"
        else:
            return
        self._metrics.record_association_rejected(REJECT_NAMES[reason])
        event.assoc.acse.send_reject(*reason)
        logger.warning("association from %s (%s) to %s rejected: %s", calling_ae, host, called_ae, why)
        self._audit(
            Events.ASSOCIATION_REJECTED,
            why,
            calling_ae,
            _peer(event),
            {"result": reason[0], "source": reason[1], "diagnostic": reason[2], "called_ae": called_ae},
        )

    def on_protocol_error(self, event: evt.Event) -> None:
        """EVT_PROTOCOL_ERROR (node.pynetdicom_tuning): a malformed or oversized PDU, a timeout, a
        refused DIMSE request. Audited as association.aborted or dimse.refused."""
        # evt.trigger sets the event's attributes from the dict that the tuning module passes.
        keys = ("answer", "why", "source", "reason", "status")
        found = {k: getattr(event, k) for k in keys if hasattr(event, k)}
        answer = str(found.pop("answer", ""))
        why = str(found.pop("why", ""))
        details: dict[str, object] = {"answer": answer, **{k: int(v) for k, v in found.items()}}
        name = Events.DIMSE_REFUSED if answer in ("status", "ignored") else Events.ASSOCIATION_ABORTED
        primitive = event.assoc.requestor.primitive
        calling_ae = _calling_ae(event) if primitive is not None else None
        self._audit(name, why, calling_ae, _peer(event), details)

    def on_accepted(self, event: evt.Event) -> None:
        contexts = sorted({str(cx.transfer_syntax[0]) for cx in event.assoc.accepted_contexts})
        self._audit(
            Events.ASSOCIATION_ACCEPTED, "", _calling_ae(event), _peer(event), {"transfer_syntaxes": contexts}
        )

    def _audit(
        self, event_name: str, message: str, calling_ae: str | None, peer: str, details: dict[str, object]
    ) -> None:
        try:
            with self._sessions() as session, session.begin():
                audit.record(session, event_name, message, calling_ae=calling_ae, peer=peer, details=details)
        except SQLAlchemyError:
            logger.exception("could not audit %s from %s", event_name, calling_ae)


def build_ae(settings: ReceiveSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    # Advertised and enforced (node.pynetdicom_tuning): large enough for a CT image in one PDU.
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.maximum_associations = settings.max_associations
    # On the acceptor, pynetdicom uses acse_timeout as the ARTIM timer: the A-ASSOCIATE-RQ must be
    # complete this long after the connection opened.
    ae.acse_timeout = settings.negotiation_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.require_called_aet = False
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None  # pynetdicom's list always names the class
        ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def log_refused_connection(host: str, open_connections: int) -> None:
    logger.warning(
        "connection from %s closed at once: %d connections from that host are open "
        "(receive.max_associations_per_host)",
        host,
        open_connections,
    )


class StorageSCP:
    """Owns the AE and its server thread. node.pynetdicom_tuning.install() must have run."""

    def __init__(
        self,
        settings: ReceiveSettings,
        ingest: Ingest,
        session_factory: sessionmaker[Session],
        on_stored: OnStored,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._settings = settings
        self.ae = build_ae(settings)
        self.policy = AssociationPolicy(settings, session_factory, metrics)
        self._handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, tune_association),
            (evt.EVT_REQUESTED, self.policy.on_requested),
            (evt.EVT_ACCEPTED, self.policy.on_accepted),
            (EVT_PROTOCOL_ERROR, self.policy.on_protocol_error),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [ingest, on_stored]),
        ]
        self._server: HostLimitedServer | None = None

    def start(self) -> int:
        """Start listening; returns the bound port (useful when the configured port is 0)."""
        self._server = start_server(
            self.ae,
            (self._settings.host, self._settings.port),
            self._handlers,
            self._settings.max_associations_per_host,
            log_refused_connection,
        )
        port = int(self._server.server_address[1])
        logger.info("listening as %s on %s:%d", self._settings.ae_title, self._settings.host, port)
        return port

    def active_associations(self) -> int:
        return len(self.ae.active_associations)

    def stop(self, drain_seconds: float, force: threading.Event | None = None) -> None:
        """Refuse new associations, close connections that have not negotiated, wait up to
        drain_seconds for the established ones (less if `force` is set), then abort what is left and
        close. An instance is acknowledged only once durable, so an abort loses nothing acknowledged."""
        self.policy.drain()
        force = force or threading.Event()
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and not force.is_set():
            close_unnegotiated(self.ae)
            if not established(self.ae):
                break
            force.wait(0.05)  # pynetdicom offers no event for "last association ended"
        aborted = abort_associations(self.ae)
        if aborted:
            logger.warning("aborted %d associations in progress", aborted)
        if self._server is not None:
            self._server.shutdown()
            self._server = None
