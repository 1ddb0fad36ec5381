"""Forwarding to a DICOM peer with C-STORE (pynetdicom SCU).

Presentation contexts: for every SOP class in the batch, one context per transfer syntax, so the peer
accepts or refuses each syntax separately: the stored syntaxes first, then Explicit and Implicit VR
Little Endian (or exactly the destination's ``transfer_syntaxes`` when configured). pynetdicom allows
128 contexts per association; a batch needing more is split over several associations by SOP class.

An instance whose stored syntax was accepted is sent from its file as stored, without decoding: the
bytes after the File Meta Information go out as they are on disk (pynetdicom's chunked sending,
``_config.STORE_SEND_CHUNKED_DATASET``, set by ``node.pynetdicom_tuning.install()``, which must have run;
it only applies when a path is passed to ``send_c_store``). An
instance whose syntax was refused is decompressed (node.deliver.transcode) and sent uncompressed.

Stalls: pynetdicom's SCU sometimes loses a C-STORE response and waits for ``dimse_timeout`` before
aborting (pynetdicom issue #875). When a response does not come within ``dimse_timeout``, the sender
opens a new association and carries on with the instances not yet acknowledged, at most
``stall_retries`` times per association plan within one ``send()`` call.

The stall has a cause that ``guard_responses`` removes on our associations (see there); the
reconnect stays as the safety net.

DICOM TLS (``tls:`` on the destination): pynetdicom's ``tls_args``, with a context from node.tls (server
verification on unless ``verify: false``). node.deliver.wire is not used on TLS associations: every
instance goes through ``send_c_store``. A failed handshake is told in words (certificate verify
failed: ..., wrong version number) by one more handshake attempt, as for a failed TCP connection.

Per-instance outcome (node.deliver.base): a failure status that is the instance's (A9xx, Cxxx, 0117)
and a spooled file that cannot be read, parsed or transcoded quarantine that instance, and the send goes
on with the next one; any other failure status is recorded in ``failed`` and fails the attempt.

Network trouble never escapes as an exception: it becomes ``SendOutcome.error``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext

from node.config import ForwardSettings, validate_ae_title
from node.deliver.base import (
    InstanceFile,
    OnSent,
    SendOutcome,
    is_delivered,
    is_instance_refusal,
    status_is_retryable,
    timed_send,
)
from node.deliver.destinations import Destination, DimseDestination
from node.deliver.spooled import parse_problem, unreadable_reason
from node.deliver.transcode import TranscodeError, can_transcode, load_for_target
from node.deliver.wire import NotPlainPart10, UnreadableFile, WireError, WireStore
from node.errors import ConfigError
from node.pynetdicom_tuning import CONN_OPEN_HANDLERS, guard_responses, quiet_logging
from node.tls import client_context, describe_failure

logger = logging.getLogger(__name__)

MAX_CONTEXTS = 128
# A C-STORE without a response after at least this share of dimse_timeout counts as a stall.
_STALL_FRACTION = 0.9

_STATUS_NAMES = {
    0x0110: "processing failure",
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorised",
    0x0210: "duplicate invocation",
    0x0211: "unrecognised operation",
    0x0212: "mistyped argument",
}


def describe_status(status: int) -> str:
    """`0xA700 (out of resources)` and the like, for error texts and audit rows."""
    if status in _STATUS_NAMES:
        name = _STATUS_NAMES[status]
    elif 0xA700 <= status <= 0xA7FF:
        name = "out of resources"
    elif 0xA900 <= status <= 0xA9FF:
        name = "data set does not match SOP class"
    elif 0xC000 <= status <= 0xCFFF:
        name = "cannot understand"
    elif status in (0xB000, 0xB006, 0xB007):
        name = "warning"
    else:
        name = "failure"
    return f"0x{status:04X} ({name})"


def offered_syntaxes(destination: DimseDestination, stored: Sequence[str]) -> list[str]:
    """Transfer syntaxes proposed for one SOP class, in order of preference, without duplicates."""
    if destination.transfer_syntaxes:
        candidates = list(destination.transfer_syntaxes)
    else:
        candidates = [*stored, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return list(dict.fromkeys(str(uid) for uid in candidates))


@dataclass
class AssociationPlan:
    """The SOP classes, syntaxes and files of one association (before a stall forces a new one)."""

    syntaxes: dict[str, list[str]]  # SOP class UID -> proposed transfer syntaxes
    files: list[InstanceFile]

    def contexts(self) -> list[PresentationContext]:
        return [build_context(sop, ts) for sop, syntaxes in self.syntaxes.items() for ts in syntaxes]

    @property
    def context_count(self) -> int:
        return sum(len(s) for s in self.syntaxes.values())


def plan_associations(
    destination: DimseDestination, files: Sequence[InstanceFile], max_contexts: int = MAX_CONTEXTS
) -> list[AssociationPlan]:
    """Group the batch by SOP class into associations of at most `max_contexts` contexts each.

    One context per (SOP class, transfer syntax). Files keep their order within an association; SOP
    classes keep the order of their first file.
    """
    by_class: dict[str, list[InstanceFile]] = {}
    for f in files:
        by_class.setdefault(f.sop_class_uid, []).append(f)
    plans: list[AssociationPlan] = []
    current = AssociationPlan({}, [])
    for sop_class, class_files in by_class.items():
        stored = list(dict.fromkeys(f.transfer_syntax_uid for f in class_files))
        syntaxes = offered_syntaxes(destination, stored)[:max_contexts]
        if current.syntaxes and current.context_count + len(syntaxes) > max_contexts:
            plans.append(current)
            current = AssociationPlan({}, [])
        current.syntaxes[sop_class] = syntaxes
        current.files.extend(class_files)
    if current.syntaxes:
        plans.append(current)
    return plans


# _store_on_wire's answer for a file that pynetdicom must send (its File Meta needs a full parse).
_NOT_ON_WIRE = -1


class _Unsendable(Exception):
    """This instance cannot be sent on this association: no usable context (`quarantine` False: the
    destination's choice, which fails the attempt), or a file that cannot be transcoded (True)."""

    def __init__(self, message: str, quarantine: bool = False) -> None:
        super().__init__(message)
        self.quarantine = quarantine


@dataclass
class _Lost:
    """The association ended before every instance was answered; `instance`: the one being sent or
    waited for when it happened (None when it ended between two instances)."""

    text: str
    stalled: bool
    instance: InstanceFile | None = None


class DimseSender:
    """Sender for DimseDestination (see node.deliver.base.Sender).

    Thread safe: every send() builds its own AE and associations, so several delivery workers may
    share one DimseSender.
    """

    def __init__(self, settings: ForwardSettings, default_calling_ae: str, *, fast_path: bool = True) -> None:
        self._settings = settings
        self._fast_path = fast_path
        self._default_calling_ae = validate_ae_title(default_calling_ae)

    def send(self, destination: Destination, files: Sequence[InstanceFile], on_sent: OnSent) -> SendOutcome:
        assert isinstance(destination, DimseDestination), destination.kind
        where = f"destination {destination.name!r} ({destination.address})"
        return timed_send(
            where,
            destination.name,
            files,
            lambda outcome: self._send_all(destination, files, on_sent, outcome, where),
            "association(s)",
        )

    def _send_all(
        self,
        destination: DimseDestination,
        files: Sequence[InstanceFile],
        on_sent: OnSent,
        outcome: SendOutcome,
        where: str,
    ) -> None:
        ae = self._make_ae(destination)
        try:
            tls_args = _tls_args(destination)
        except ConfigError as exc:
            outcome.error = f"{where}: {exc}; 0 of {len(files)} instances sent"
            outcome.retryable = False
            return
        # Instances an association was lost on and whose file the node cannot parse: quarantined at the
        # end if the destination acknowledged anything in this call (it works, they do not), else they
        # are failures like any other loss (_quarantine_unparsable).
        suspects: dict[int, str] = {}
        for plan in plan_associations(destination, files):
            problem = self._send_plan(ae, destination, plan, on_sent, outcome, where, suspects, tls_args)
            if problem is not None:
                text, retryable = problem
                unsent = len(files) - len(outcome.sent) - len(outcome.failed) - len(outcome.quarantined)
                unsent -= len(suspects)
                outcome.error = f"{where}: {text}; {len(outcome.sent)} of {len(files)} instances sent"
                if unsent:
                    outcome.error += f", {unsent} not attempted or unanswered"
                outcome.retryable = retryable
                break
        if suspects and outcome.sent:
            outcome.quarantined.update(suspects)
        elif suspects:
            outcome.failed.update(suspects)
            if outcome.error is None:
                outcome.error = (
                    f"{where}: the association was lost on each of {len(suspects)} instance(s) whose file "
                    "the node cannot parse, and the destination acknowledged none: not quarantined"
                )
            outcome.retryable = True
        if outcome.failed:
            failures = self._describe_failures(files, outcome)
            outcome.error = f"{outcome.error}; {failures}" if outcome.error else f"{where}: {failures}"
            instance_retryable = any(
                status_is_retryable(outcome.statuses[i]) for i in outcome.failed if i in outcome.statuses
            )
            outcome.retryable = outcome.retryable or instance_retryable

    @staticmethod
    def _describe_failures(files: Sequence[InstanceFile], outcome: SendOutcome) -> str:
        by_id = {f.instance_id: f for f in files}
        first_id = next(iter(outcome.failed))
        first = by_id[first_id]
        return (
            f"{len(outcome.failed)} of {len(files)} instances failed, first: SOP Instance "
            f"{first.sop_instance_uid}: {outcome.failed[first_id]}"
        )

    def _make_ae(self, destination: DimseDestination) -> AE:
        ae = AE(ae_title=destination.calling_ae_title or self._default_calling_ae)
        ae.acse_timeout = self._settings.acse_timeout
        ae.dimse_timeout = self._settings.dimse_timeout
        ae.network_timeout = self._settings.network_timeout
        ae.connection_timeout = self._settings.acse_timeout
        return ae

    def _send_plan(
        self,
        ae: AE,
        destination: DimseDestination,
        plan: AssociationPlan,
        on_sent: OnSent,
        outcome: SendOutcome,
        where: str,
        suspects: dict[int, str],
        tls_args: tuple[ssl.SSLContext, str] | None = None,
    ) -> tuple[str, bool] | None:
        """Send the plan's files, reconnecting after stalls. Returns (error text, retryable) or None."""
        pending = list(plan.files)
        stalls = 0
        while pending:
            assoc, problem = self._associate(ae, destination, plan, tls_args)
            outcome.associations += 1
            if problem is not None:
                return problem
            assert assoc is not None
            lost: _Lost | None = None
            try:
                pending, lost = self._store_all(assoc, pending, on_sent, outcome)
            finally:
                if assoc.is_established:
                    if lost is None:
                        assoc.release()
                    else:
                        assoc.abort()
            if lost is None:
                return None
            if lost.instance is not None and self._quarantine_unparsable(lost, suspects, where):
                pending = [f for f in pending if f is not lost.instance]
                continue  # a new association for the others; each pass removes one instance
            if lost.stalled and stalls < self._settings.stall_retries:
                stalls += 1
                logger.warning(
                    "%s: %s; reconnecting for the %d unacknowledged instance(s) (stall %d of %d)",
                    where,
                    lost.text,
                    len(pending),
                    stalls,
                    self._settings.stall_retries,
                )
                continue
            if lost.stalled:
                return f"{lost.text} (after {stalls} reconnect(s))", True
            return lost.text, True
        return None

    @staticmethod
    def _quarantine_unparsable(lost: _Lost, suspects: dict[int, str], where: str) -> bool:
        """After an association was lost on an instance: a suspect if the node cannot parse its file
        either (True: go on with the others). Real peers do not answer a data set they cannot read
        with a failure status: Orthanc sends no response (a stall), dcmtk's storescp aborts. Only then
        is the file parsed in full (node.deliver.spooled.parse_problem), so the as-stored sending
        stays as cheap as it is; a file that parses keeps the loss the destination's trouble
        (reconnect or retry as before). A suspect is quarantined only if the destination acknowledged
        other instances in the same call (_send_all): a destination that aborts every association
        (e.g. Orthanc refusing an unknown caller) must not get a series quarantined."""
        assert lost.instance is not None
        reason = parse_problem(lost.instance.path, lost.instance.sop_instance_uid)
        if reason is None:
            return False
        suspects[lost.instance.instance_id] = f"{reason}; the destination: {lost.text}"
        logger.warning(
            "%s: %s; SOP Instance %s left out (%s), going on with the others",
            where,
            lost.text,
            lost.instance.sop_instance_uid,
            reason,
        )
        return True

    def _associate(
        self,
        ae: AE,
        destination: DimseDestination,
        plan: AssociationPlan,
        tls_args: tuple[ssl.SSLContext, str] | None = None,
    ) -> tuple[Association | None, tuple[str, bool] | None]:
        connected: list[bool] = []
        handlers: list[Any] = [
            *CONN_OPEN_HANDLERS,
            (evt.EVT_CONN_OPEN, _mark_connected, [connected]),
        ]
        assoc = ae.associate(
            destination.host,
            destination.port,
            contexts=plan.contexts(),
            ae_title=destination.ae_title,
            evt_handlers=handlers,
            tls_args=tls_args,
        )
        if assoc.is_established:
            guard_responses(assoc)
            quiet_logging(assoc)
            return assoc, None
        if not connected:
            if tls_args is not None:
                return None, (f"cannot connect with TLS: {_probe_tls(destination, ae, tls_args)}", True)
            return None, (f"cannot connect: {_probe(destination.host, destination.port, ae)}", True)
        rsp = assoc.acceptor.primitive
        if assoc.is_rejected and rsp is not None:
            transient = rsp.result == 0x02
            text = (
                f"association rejected: result {rsp.result_str}, source {rsp.source_str}, "
                f"reason {rsp.reason_str} (calling AE {ae.ae_title})"
            )
            return None, (text, transient)
        if rsp is not None and rsp.result == 0x00:
            return None, (
                f"peer accepted none of the {plan.context_count} proposed presentation contexts "
                f"(SOP classes {', '.join(UID(s).name for s in plan.syntaxes)})",
                False,
            )
        if rsp is None:
            return None, (f"no association response within acse_timeout {ae.acse_timeout:g} s", True)
        return None, ("association aborted during negotiation", True)

    def _store_all(
        self,
        assoc: Association,
        pending: list[InstanceFile],
        on_sent: OnSent,
        outcome: SendOutcome,
    ) -> tuple[list[InstanceFile], _Lost | None]:
        accepted: dict[str, list[str]] = {}
        context_ids: dict[tuple[str, str], int] = {}
        for cx in assoc.accepted_contexts:
            sop, ts = str(cx.abstract_syntax), str(cx.transfer_syntax[0])
            accepted.setdefault(sop, []).append(ts)
            context_ids.setdefault((sop, ts), int(cx.context_id or 0))
        wire = self._wire_for(assoc)
        msg_id = 0
        for index, f in enumerate(pending):
            if not assoc.is_established:
                return pending[index:], _Lost("association ended by the peer", stalled=False)
            try:
                payload = _payload(f, accepted.get(f.sop_class_uid, []))
            except _Unsendable as exc:
                (outcome.quarantined if exc.quarantine else outcome.failed)[f.instance_id] = str(exc)
                continue
            msg_id = msg_id % 65535 + 1
            answer: int | _Lost | None = _NOT_ON_WIRE
            if wire is not None and isinstance(payload, Path):
                context_id = context_ids[(f.sop_class_uid, f.transfer_syntax_uid)]
                answer = self._store_on_wire(assoc, wire, context_id, f, msg_id, outcome)
            if answer is _NOT_ON_WIRE:
                answer = self._store_with_pynetdicom(assoc, payload, f, msg_id, outcome)
            if answer is None:
                continue
            if isinstance(answer, _Lost):
                return pending[index:], answer
            outcome.statuses[f.instance_id] = answer
            if is_delivered(answer):
                outcome.sent.append(f.instance_id)
                on_sent(f, answer)
                continue
            refusal = f"status {describe_status(answer)}"
            if is_instance_refusal(answer):
                outcome.quarantined[f.instance_id] = refusal
            else:
                outcome.failed[f.instance_id] = refusal
            logger.warning("C-STORE of %s refused with %s", f.sop_instance_uid, describe_status(answer))
        return [], None

    def _wire_for(self, assoc: Association) -> WireStore | None:
        if not (self._fast_path and WireStore.usable()):
            return None
        try:
            return WireStore(assoc, timeout=self._settings.dimse_timeout)
        except WireError as exc:
            logger.info("C-STORE fast path not used on this association: %s", exc)
            return None

    def _no_response(self, asked: float, f: InstanceFile) -> _Lost:
        if time.monotonic() - asked >= _STALL_FRACTION * self._settings.dimse_timeout:
            return _Lost(
                f"no C-STORE response within dimse_timeout {self._settings.dimse_timeout:g} s "
                f"for SOP Instance {f.sop_instance_uid}",
                stalled=True,
                instance=f,
            )
        return _Lost(
            f"association aborted while waiting for the C-STORE response for SOP Instance "
            f"{f.sop_instance_uid}",
            stalled=False,
            instance=f,
        )

    def _store_on_wire(
        self,
        assoc: Association,
        wire: WireStore,
        context_id: int,
        f: InstanceFile,
        msg_id: int,
        outcome: SendOutcome,
    ) -> int | _Lost | None:
        """Send one as-stored instance with node.deliver.wire.

        Returns the status, why the association is lost, None when the file cannot be read (recorded
        in outcome.quarantined, nothing was sent), or _NOT_ON_WIRE for a file to send with pynetdicom.
        """
        asked = time.monotonic()
        try:
            wire.send(context_id, f.sop_class_uid, f.sop_instance_uid, msg_id, f.path)
        except NotPlainPart10:
            return _NOT_ON_WIRE
        except UnreadableFile as exc:
            outcome.quarantined[f.instance_id] = str(exc)
            return None
        except WireError as exc:
            # Part of a message may be on the wire: the association cannot be used any more.
            assoc.abort()
            if exc.closed:
                text = "association aborted by the peer (or connection closed) while sending SOP Instance"
            else:
                text = "sending stalled (the peer stopped reading) at SOP Instance"
            return _Lost(f"{text} {f.sop_instance_uid}: {exc}", stalled=False, instance=f)
        except OSError as exc:  # reading the spool file
            assoc.abort()
            return _Lost(f"cannot read {f.path}: {exc.strerror or exc}", stalled=False, instance=f)
        _, rsp = assoc.dimse.get_msg(block=True)
        if rsp is None:
            if assoc.is_established:
                assoc.abort()
            return self._no_response(asked, f)
        status = getattr(rsp, "Status", None)
        if not isinstance(rsp, C_STORE) or rsp.MessageIDBeingRespondedTo != msg_id or status is None:
            assoc.abort()
            return _Lost(
                f"unexpected {type(rsp).__name__} from the peer in answer to the C-STORE of "
                f"SOP Instance {f.sop_instance_uid}",
                stalled=False,
                instance=f,
            )
        return int(status)

    def _store_with_pynetdicom(
        self, assoc: Association, payload: Path | Dataset, f: InstanceFile, msg_id: int, outcome: SendOutcome
    ) -> int | _Lost | None:
        """Send one instance with pynetdicom's send_c_store (transcoded data sets, unusual files).

        Returns the status, why the association is lost, or None when this instance failed locally
        (recorded in outcome.quarantined: pynetdicom raises before anything is sent) and the
        association can go on.
        """
        if isinstance(payload, Path):
            # pynetdicom would send an empty or headless file's bytes as they are: check its head first.
            reason = unreadable_reason(payload)
            if reason is not None:
                outcome.quarantined[f.instance_id] = reason
                return None
        asked = time.monotonic()
        try:
            rsp = assoc.send_c_store(payload, msg_id=msg_id)
        except InvalidDicomError as exc:
            outcome.quarantined[f.instance_id] = f"{f.path} is not a readable DICOM file: {exc}"
            return None
        except (ValueError, AttributeError) as exc:
            # Missing or unreadable File Meta, or a data set that cannot be encoded (the contexts were
            # matched before: _payload).
            outcome.quarantined[f.instance_id] = f"cannot send {f.path}: {exc}"
            return None
        except OSError as exc:
            outcome.quarantined[f.instance_id] = f"cannot read {f.path}: {exc.strerror or exc}"
            return None
        except RuntimeError:
            return _Lost("association ended by the peer", stalled=False, instance=f)
        status = rsp.get("Status")
        if status is None:
            return self._no_response(asked, f)
        return int(status)


def _payload(f: InstanceFile, accepted: list[str]) -> Path | Dataset:
    """The file path (send as stored) or a transcoded dataset, for the syntaxes the peer accepted."""
    if not accepted:
        raise _Unsendable(f"the peer accepted no presentation context for {UID(f.sop_class_uid).name}")
    if f.transfer_syntax_uid in accepted:
        return f.path
    for target in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        if target in accepted and can_transcode(f.transfer_syntax_uid, target):
            try:
                return load_for_target(f.path, f.transfer_syntax_uid)
            except TranscodeError as exc:
                raise _Unsendable(str(exc), quarantine=True) from exc
    names = ", ".join(UID(ts).name for ts in accepted)
    raise _Unsendable(
        f"stored as {UID(f.transfer_syntax_uid).name}, the peer accepted only {names} "
        f"for {UID(f.sop_class_uid).name}"
    )


def _tls_args(destination: DimseDestination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's tls_args for the destination, None for plain TCP. ConfigError for unusable files."""
    tls = destination.tls
    if tls is None:
        return None
    context = client_context(
        verify=tls.verify,
        ca_file=tls.ca_file,
        cert_file=tls.cert_file,
        key_file=tls.key_file,
        where=f"destination {destination.name!r} tls",
    )
    return context, tls.server_name or destination.host


def _probe_tls(destination: DimseDestination, ae: AE, tls_args: tuple[ssl.SSLContext, str]) -> str:
    """Why a TLS connection fails (pynetdicom only logs it): one connect and handshake attempt."""
    timeout = ae.connection_timeout or 10.0
    context, server_name = tls_args
    try:
        with socket.create_connection((destination.host, destination.port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=server_name):
                return "the handshake failed, but a second attempt succeeded (peer just came up?)"
    except (OSError, ValueError) as exc:
        return describe_failure(exc)


def _mark_connected(event: evt.Event, connected: list[bool]) -> None:
    connected.append(True)


def _probe(host: str, port: int, ae: AE) -> str:
    """Why a TCP connection to host:port fails (pynetdicom only logs it): one connect attempt."""
    timeout = ae.connection_timeout or 10.0
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "the connection failed, but a second attempt succeeded (peer just came up?)"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
