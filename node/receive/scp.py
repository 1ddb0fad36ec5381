"""The DICOM SCP: C-ECHO and C-STORE, called- and calling-AE checks, graceful drain.

Handlers are plain functions with their dependencies bound (pynetdicom's evt_handlers args). The
C-STORE handler does only what must happen before the status: validate, spool with fsync, commit
the database row. Completion timers are re-armed through the tracker (a scheduler call, cheap).
"""

from __future__ import annotations

import logging
import ssl
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
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node import audit
from node.audit import Events
from node.config import ReceiveSettings
from node.errors import ListenError
from node.metrics import NodeMetrics
from node.pynetdicom_tuning import (
    EVT_PROTOCOL_ERROR,
    HostLimitedServer,
    abort_associations,
    close_unnegotiated,
    established,
    intercept_pdata,
    start_server,
    tune_association,
)
from node.receive import cstore
from node.receive.cstore import OnStored, StoreRequest
from node.receive.incoming import IncomingFile
from node.receive.ingest import Ingest
from node.receive.tls_listener import TlsServer
from node.receive.watchdog import AssociationWatchdog
from node.receive.wire import StoreReceiver
from node.tls import allowed_titles, server_context, subject_names

logger = logging.getLogger(__name__)


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
# The metrics' name for a connection to the TLS port whose handshake failed.
REJECT_TLS = "tls_handshake"


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


def _tls_socket(event: evt.Event) -> ssl.SSLSocket | None:
    """The association's socket when it came in on the TLS port."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    return sock if isinstance(sock, ssl.SSLSocket) else None


def _tls_details(sock: ssl.SSLSocket) -> dict[str, object]:
    """What an audit row tells of a TLS association: version, cipher, the client certificate's subject."""
    cipher = sock.cipher()
    return {
        "tls_version": sock.version(),
        "tls_cipher": cipher[0] if cipher else None,
        "client_subject": subject_names(sock.getpeercert())[1],
    }


def handle_echo(event: evt.Event) -> int:
    return 0x0000


def store_request(
    assoc: Association, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str
) -> StoreRequest:
    requestor = assoc.requestor
    primitive = requestor.primitive
    return StoreRequest(
        calling_ae=str(requestor.ae_title).strip(),
        called_ae=str(primitive.called_ae_title).strip() if primitive is not None else None,
        peer=f"{requestor.address}:{requestor.port}",
        transfer_syntax_uid=transfer_syntax,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
    )


def handle_store(event: evt.Event, ingest: Ingest, on_stored: OnStored) -> int | Dataset:
    """EVT_C_STORE: a C-STORE that came through pynetdicom's DIMSE layer (fast path off, or a request
    the fast path left to pynetdicom)."""
    request = cast(C_STORE, event.request)
    store_req = store_request(
        event.assoc,
        str(event.context.transfer_syntax),
        str(request.AffectedSOPClassUID),
        str(request.AffectedSOPInstanceUID),
    )
    data_set = request.DataSet.getvalue() if request.DataSet is not None else b""
    answer = cstore.store(ingest, on_stored, store_req, data_set)
    return answer.status if answer.comment is None else _status(answer.status, answer.comment)


def fast_path_handler(
    ingest: Ingest, on_stored: OnStored, settings: ReceiveSettings
) -> Callable[[evt.Event], None]:
    """An EVT_CONN_OPEN handler giving each association (plain or TLS) the C-STORE receive fast path."""

    def incoming(prefix: bytes) -> IncomingFile:
        return IncomingFile(
            prefix,
            max_bytes=settings.max_instance_bytes,
            spill_bytes=settings.spill_to_disk_bytes,
            writer=ingest.staging_writer,
            space=ingest.free_disk_refusal,
        )

    def on_open(event: evt.Event) -> None:
        receiver = StoreReceiver(
            event.assoc,
            store=lambda request, part10: cstore.store_part10(ingest, on_stored, request, part10),
            refuse=lambda request, rejected, size: cstore.refuse_dropped(ingest, request, rejected, size),
            incoming=incoming,
            request_for=store_request,
        )
        intercept_pdata(event.assoc, receiver.take)

    return on_open


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
        self._client_ae_titles = settings.tls.client_ae_titles if settings.tls is not None else {}
        self._sessions = session_factory
        self._draining = threading.Event()

    def drain(self) -> None:
        """Refuse new associations (transient rejection) while the ones in progress finish."""
        self._draining.set()

    def is_allowed(self, calling_ae: str, host: str) -> bool:
        if not self._allowed:
            return True
        return any(a.ae_title == calling_ae and (a.host is None or a.host == host) for a in self._allowed)

    def certificate_problem(self, event: evt.Event, calling_ae: str) -> str | None:
        """Why a TLS client's certificate may not use this calling AE title (receive.tls.client_ae_titles),
        or None. Plain associations and an empty mapping pass."""
        sock = _tls_socket(event)
        if sock is None or not self._client_ae_titles:
            return None
        common_name, subject = subject_names(sock.getpeercert())
        if calling_ae in allowed_titles(self._client_ae_titles, common_name, subject):
            return None
        if subject is None:
            return "no client certificate, and receive.tls.client_ae_titles is set"
        return f"calling AE title not allowed for certificate {subject!r} (receive.tls.client_ae_titles)"

    def on_requested(self, event: evt.Event) -> None:
        calling_ae = _calling_ae(event)
        called_ae = _called_ae(event)
        host = event.assoc.requestor.address
        certificate_problem = self.certificate_problem(event, calling_ae)
        if self._draining.is_set():
            reason, why = REJECT_BUSY, "node is shutting down"
        elif self._answers_to is not None and called_ae not in self._answers_to:
            reason, why = REJECT_CALLED_AE, f"called AE title {called_ae!r} is not the node's"
        elif not self.is_allowed(calling_ae, host):
            reason, why = REJECT_CALLING_AE, "calling AE title/host not in allowed_callers"
        elif certificate_problem is not None:
            reason, why = REJECT_CALLING_AE, certificate_problem
        else:
            return
        self._metrics.record_association_rejected(REJECT_NAMES[reason])
        tls_details = _tls_details_of(event)  # before the reject closes the connection
        event.assoc.acse.send_reject(*reason)
        logger.warning("association from %s (%s) to %s rejected: %s", calling_ae, host, called_ae, why)
        self._audit(
            Events.ASSOCIATION_REJECTED,
            why,
            calling_ae,
            _peer(event),
            {"result": reason[0], "source": reason[1], "diagnostic": reason[2], "called_ae": called_ae}
            | tls_details,
        )

    def on_tls_failed(self, peer: str, why: str) -> None:
        """A connection to the TLS port whose handshake failed (node.receive.tls_listener)."""
        self._metrics.record_association_rejected(REJECT_TLS)
        self._audit(Events.TLS_HANDSHAKE_FAILED, f"TLS handshake failed: {why}", None, peer, {"why": why})

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
        details: dict[str, object] = {"transfer_syntaxes": contexts} | _tls_details_of(event)
        self._audit(Events.ASSOCIATION_ACCEPTED, "", _calling_ae(event), _peer(event), details)

    def on_overlong(self, assoc: Association, why: str) -> None:
        """The watchdog aborted an association open longer than receive.max_association_seconds."""
        requestor = assoc.requestor
        primitive = requestor.primitive
        calling_ae = str(primitive.calling_ae_title).strip() if primitive is not None else None
        peer = f"{requestor.address}:{requestor.port}"
        details: dict[str, object] = {"answer": "A-ABORT", "limit": "max_association_seconds"}
        self._audit(Events.ASSOCIATION_ABORTED, why, calling_ae, peer, details)

    def _audit(
        self, event_name: str, message: str, calling_ae: str | None, peer: str, details: dict[str, object]
    ) -> None:
        try:
            with self._sessions() as session, session.begin():
                audit.record(session, event_name, message, calling_ae=calling_ae, peer=peer, details=details)
        except SQLAlchemyError:
            logger.exception("could not audit %s from %s", event_name, calling_ae)


def _tls_details_of(event: evt.Event) -> dict[str, object]:
    sock = _tls_socket(event)
    return _tls_details(sock) if sock is not None else {}


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
    """Owns the AE and its server threads: the plain port and/or the TLS port (receive.tls), one AE and
    one set of handlers for both. node.pynetdicom_tuning.install() must have run."""

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
        if settings.fast_path:
            self._handlers.append((evt.EVT_CONN_OPEN, fast_path_handler(ingest, on_stored, settings)))
        self._watchdog: AssociationWatchdog | None = None
        if settings.max_association_seconds:
            self._watchdog = AssociationWatchdog(
                self.ae, settings.max_association_seconds, self.policy.on_overlong
            )
            self._handlers.append((evt.EVT_ACCEPTED, self._watchdog.on_accepted))
        self._server: HostLimitedServer | None = None
        self._tls_server: HostLimitedServer | None = None
        # Built here so that an unusable certificate or key stops the node before it starts (ConfigError).
        self._tls_context = server_context(settings.tls) if settings.tls is not None else None
        self.port: int | None = None
        self.tls_port: int | None = None

    def start(self) -> int:
        """Start listening; returns the bound plain port, or the TLS port when tls_only (useful when the
        configured port is 0). OSError when the plain port cannot be opened, ListenError for the TLS port."""
        settings, tls = self._settings, self._settings.tls
        if tls is None or not tls.tls_only:
            self._server = start_server(
                self.ae,
                (settings.host, settings.port),
                self._handlers,
                settings.max_associations_per_host,
                log_refused_connection,
            )
            self.port = int(self._server.server_address[1])
            logger.info("listening as %s on %s:%d", settings.ae_title, settings.host, self.port)
        if tls is not None:
            try:
                self._tls_server = start_server(
                    self.ae,
                    (settings.host, tls.port),
                    self._handlers,
                    settings.max_associations_per_host,
                    log_refused_connection,
                    ssl_context=self._tls_context,
                    server_class=TlsServer,
                    handshake_timeout=settings.negotiation_timeout,
                    on_handshake_failed=self.policy.on_tls_failed,
                )
            except OSError as exc:
                self._shutdown_servers()
                raise ListenError(settings.host, tls.port, exc.strerror or str(exc)) from None
            self.tls_port = int(self._tls_server.server_address[1])
            logger.info(
                "listening as %s with TLS on %s:%d (client certificates %s)",
                settings.ae_title,
                settings.host,
                self.tls_port,
                "required" if tls.require_client_cert else "optional" if tls.ca_file else "not checked",
            )
        if self._watchdog is not None:
            self._watchdog.start()
        port = self.port if self.port is not None else self.tls_port
        assert port is not None
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
        self._shutdown_servers()

    def _shutdown_servers(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
