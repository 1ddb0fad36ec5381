"""STOW-RS in (PS3.18 10.5): POST /studies and POST /studies/{study}.

A request is authenticated, its media type checked, and its body streamed part by part into files in
the spool's staging folder (bounded memory; `web.max_request_bytes` answers 413 and stops reading).
Only a complete body is stored: a truncated or malformed one is refused as a whole (400) and nothing of
it is kept. Then every part goes through the same path as a C-STORE (node.receive.ingest: validation,
spool with fsync, duplicate policy, database row, audit, completion timer), and the answer is sent
once every accepted instance is durable.

Identity of these instances: calling_ae is None (HTTP has no AE titles), peer is
"http:<user>@<host>:<port>" ("http:<host>:<port>" with `web.auth.kind: none`). Request-level refusals
(401, 400, 413, 415) are audited as stow.rejected; refused instances as instance.rejected.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from node import audit
from node.audit import Events
from node.config import WebSettings
from node.metrics import NodeMetrics
from node.receive.cstore import MemoryReader
from node.receive.incoming import Part10, mapped
from node.receive.ingest import Ingest, Received, RejectedInstance
from node.receive.scp import ACCEPTED_TRANSFER_SYNTAXES
from node.receive.spool import Spool
from node.uids import is_valid_uid
from node.web.auth import Authenticator
from node.web.multipart import DICOM_MEDIA_TYPE, BadRequestBody, MediaType, Part, PartsWriter, dicom_boundary
from node.web.stow_response import (
    DICOM_JSON,
    FAILURE_CANNOT_UNDERSTAND,
    FAILURE_STUDY_MISMATCH,
    FAILURE_TRANSFER_SYNTAX,
    InstanceOutcome,
    http_status,
    response_json,
)

logger = logging.getLogger(__name__)

# (series UID, time of the last instance, expected count reached): the tracker's instance_stored.
OnStored = Callable[[str, dt.datetime, bool], None]

_STATUS_OUT_OF_RESOURCES = 0xA700
# Parts of one request stored in parallel (per endpoint, shared by all requests).
STORE_THREADS = 4
_ACCEPTED = {str(uid) for uid in ACCEPTED_TRANSFER_SYNTAXES}


def stow_routes(
    ingest: Ingest,
    spool: Spool,
    settings: WebSettings,
    *,
    on_stored: OnStored,
    sessions: sessionmaker[Session],
    max_instance_bytes: int,
    metrics: NodeMetrics | None = None,
) -> list[BaseRoute]:
    """The STOW-RS routes for the node's HTTP server. Raises ConfigError for unusable auth settings."""
    endpoint = StowEndpoint(ingest, spool, settings, on_stored, sessions, max_instance_bytes, metrics)
    return [
        Route("/studies", endpoint.store, methods=["POST"], name="stow_studies"),
        Route("/studies/{study}", endpoint.store, methods=["POST"], name="stow_study"),
    ]


class StowEndpoint:
    def __init__(
        self,
        ingest: Ingest,
        spool: Spool,
        settings: WebSettings,
        on_stored: OnStored,
        sessions: sessionmaker[Session],
        max_instance_bytes: int,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self._ingest = ingest
        self._metrics = metrics
        self._staging: Path = spool.tmp_dir
        self._max_request = settings.max_request_bytes
        self._max_instance = max_instance_bytes
        self._auth = Authenticator(settings.auth)
        self._on_stored = on_stored
        self._sessions = sessions
        self._workers = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="stow-store")

    async def store(self, request: Request) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "unknown"
        # PBKDF2 takes CPU time: off the event loop.
        auth = await run_in_threadpool(self._auth.check, request.headers.get("authorization"))
        if not auth.ok:
            who = (f"http:{auth.user}@{client}" if auth.user else f"http:{client}")[:64]
            headers = {"WWW-Authenticate": self._auth.challenge()}
            return await self._refuse(request, 401, f"authentication failed: {auth.problem}", who, headers)
        # audit_events.peer holds 64 characters
        peer = (f"http:{auth.user}@{client}" if auth.user else f"http:{client}")[:64]
        study = request.path_params.get("study")
        if study is not None and not is_valid_uid(study):
            return await self._refuse(request, 400, f"invalid Study Instance UID in the URL: {study!r}", peer)
        try:
            boundary = dicom_boundary(request.headers.get("content-type"))
        except BadRequestBody as exc:
            return await self._refuse(request, exc.status, exc.reason, peer)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_request:
            return await self._refuse(request, 413, self._too_large(f"Content-Length {declared}"), peer)

        writer = PartsWriter(boundary, self._staging)
        try:
            received = 0
            try:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > self._max_request:
                        return await self._refuse(request, 413, self._too_large(f"{received} bytes"), peer)
                    writer.feed(chunk)
            except ClientDisconnect:
                reason = f"truncated body: the client closed the connection after {received} bytes"
                return await self._refuse(request, 400, reason, peer)
            parts = writer.finish()
            outcomes = await run_in_threadpool(self._store_parts, parts, study, peer)
        except BadRequestBody as exc:
            return await self._refuse(request, exc.status, exc.reason, peer)
        except OSError as exc:  # the staging folder is full or unwritable: nothing was stored
            reason = f"cannot write the body to {self._staging}: {exc.strerror or exc}"
            return await self._refuse(request, 503, reason, peer)
        finally:
            writer.discard()
        status = http_status(outcomes)
        stored = sum(o.stored for o in outcomes)
        logger.info(
            "STOW-RS from %s: %d of %d instances stored (HTTP %d)", peer, stored, len(outcomes), status
        )
        return JSONResponse(
            response_json(outcomes, str(request.base_url), study), status_code=status, media_type=DICOM_JSON
        )

    def _too_large(self, what: str) -> str:
        return f"request body of {what} exceeds web.max_request_bytes {self._max_request}"

    def _store_parts(self, parts: list[Part], study: str | None, peer: str) -> list[InstanceOutcome]:
        """Several parts at once: each waits mostly for its fsyncs and its commit, which overlap (the
        receive path is safe for concurrent instances, as for concurrent associations)."""
        if len(parts) == 1:
            return [self._store_part(1, parts[0], study, peer)]
        return list(
            self._workers.map(
                lambda numbered: self._store_part(numbered[0], numbered[1], study, peer),
                enumerate(parts, start=1),
            )
        )

    def _store_part(self, index: int, part: Part, study: str | None, peer: str) -> InstanceOutcome:
        media = MediaType.parse(part.content_type)
        if media.type != DICOM_MEDIA_TYPE:
            reason = f"part {index} has Content-Type {media.type}, not {DICOM_MEDIA_TYPE}"
            return self._fail(FAILURE_CANNOT_UNDERSTAND, reason, Dataset(), peer)
        wanted_syntax = media.params.get("transfer-syntax")
        if wanted_syntax and wanted_syntax not in _ACCEPTED:
            reason = f"part {index}: transfer syntax {wanted_syntax} is not accepted"
            return self._fail(FAILURE_TRANSFER_SYNTAX, reason, Dataset(), peer)
        if part.size > self._max_instance:
            # Never read such a part into memory: its header (for the UIDs) is enough.
            header = _header_or_empty(part.path)
            reason = (
                f"part {index}: instance of {part.size} bytes exceeds max_instance_bytes {self._max_instance}"
            )
            return self._fail(_STATUS_OUT_OF_RESOURCES, reason, header, peer)
        part10 = self._part10(part)
        try:
            return self._store_part10(index, part10, study, peer)
        finally:
            part10.release(self._ingest.discard_staged)

    def _part10(self, part: Part) -> Part10:
        """The part's bytes: read into memory, or, past receive.spill_to_disk_bytes, staged where they
        are and read through a memory map (never all in memory)."""
        if part.size > self._ingest.spill_to_disk_bytes:
            return mapped(self._ingest.adopt_staged(part.path), 0)
        return Part10(bytearray(part.path.read_bytes()), 0)

    def _store_part10(self, index: int, part10: Part10, study: str | None, peer: str) -> InstanceOutcome:
        data = part10.data
        try:
            reader = MemoryReader(memoryview(data))
            dataset = dcmread(reader, stop_before_pixels=True)
        except InvalidDicomError as exc:
            reason = f"part {index} is not a DICOM Part 10 file: {exc}"
            return self._fail(FAILURE_CANNOT_UNDERSTAND, reason, Dataset(), peer)
        except Exception as exc:  # pydicom raises assorted errors on garbage
            reason = f"part {index}: cannot decode data set: {type(exc).__name__}"
            return self._fail(FAILURE_CANNOT_UNDERSTAND, reason, Dataset(), peer)
        meta = dataset.file_meta
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
        if syntax not in _ACCEPTED:
            reason = f"part {index}: transfer syntax {syntax or '(none)'} is not accepted"
            return self._fail(FAILURE_TRANSFER_SYNTAX, reason, dataset, peer)
        instance_study = dataset.get("StudyInstanceUID")
        if study is not None and is_valid_uid(instance_study) and instance_study != study:
            reason = f"part {index}: Study Instance UID {instance_study} differs from the URL's {study}"
            return self._fail(FAILURE_STUDY_MISMATCH, reason, dataset, peer)
        item = Received(
            data=data,
            staged=part10.staged,
            dataset=dataset,
            transfer_syntax_uid=syntax,
            calling_ae=None,
            peer=peer,
            source="stow",
            # The file meta plays the C-STORE request's part: its UIDs must match the data set's.
            command_sop_class_uid=_str_or_none(meta.get("MediaStorageSOPClassUID")),
            command_sop_instance_uid=_str_or_none(meta.get("MediaStorageSOPInstanceUID")),
        )
        try:
            accepted = self._ingest.accept(item)  # audits a rejection itself
        except RejectedInstance as exc:
            return _outcome(dataset, failure=exc.status, reason=exc.reason)
        self._on_stored(accepted.series_uid, accepted.last_received_at, accepted.expected_count_reached)
        return _outcome(dataset)

    def _fail(self, code: int, reason: str, dataset: Dataset, peer: str) -> InstanceOutcome:
        rejected = RejectedInstance(code, reason)
        self._ingest.audit_rejection(Received(b"", dataset, "", None, peer), rejected)
        return _outcome(dataset, failure=code, reason=reason)

    async def _refuse(
        self, request: Request, status: int, reason: str, peer: str, headers: dict[str, str] | None = None
    ) -> Response:
        logger.warning("STOW-RS request from %s refused (HTTP %d): %s", peer, status, reason)
        if self._metrics is not None:
            self._metrics.record_http_refused(status)
        details = {
            "http_status": status,
            "path": request.url.path,
            "content_type": (request.headers.get("content-type") or "")[:200],
        }
        await run_in_threadpool(self._audit_refusal, reason, peer, details)
        return PlainTextResponse(reason + "\n", status_code=status, headers=headers)

    def _audit_refusal(self, reason: str, peer: str, details: dict[str, object]) -> None:
        try:
            with self._sessions() as session, session.begin():
                audit.record(session, Events.STOW_REJECTED, reason, peer=peer, details=details)
        except SQLAlchemyError:
            logger.exception("could not audit a refused STOW-RS request")


def _outcome(dataset: Dataset, failure: int | None = None, reason: str = "") -> InstanceOutcome:
    def uid(keyword: str) -> str | None:
        try:
            value = dataset.get(keyword)
        except Exception:  # a malformed element, decoded lazily
            return None
        return value if is_valid_uid(value) else None

    return InstanceOutcome(
        sop_class_uid=uid("SOPClassUID"),
        sop_instance_uid=uid("SOPInstanceUID"),
        study_uid=uid("StudyInstanceUID"),
        series_uid=uid("SeriesInstanceUID"),
        failure=failure,
        reason=reason,
    )


def _header_or_empty(path: Path) -> Dataset:
    try:
        return dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM at all: the failure is reported without UIDs
        return Dataset()


def _str_or_none(value: object) -> str | None:
    return str(value) if value else None
