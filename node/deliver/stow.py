"""Forwarding to a DICOMweb server with STOW-RS (PS3.18 10.5), over requests.

One attempt sends the pending instances in requests of ``batch_size`` instances, POSTed to
``{url}/studies``. A delivery is one series, so one study: the study-less URL is used because it
needs no Study Instance UID read from the files, and a server cannot refuse the whole request for a
study mismatch we would have introduced. Each request is ``multipart/related; type="application/dicom"``,
one part per Part 10 file, the bytes as spooled: the body is streamed from disk in 1 MiB chunks with a
Content-Length computed up front (memory stays bounded whatever the batch size).

Per-instance outcome, from the Store Instances Response (``application/dicom+json``):
- in ReferencedSOPSequence: delivered (status 0, or its WarningReason: delivered with a warning);
- in FailedSOPSequence: quarantined when its FailureReason is the instance's (0xA9xx, 0xCxxx, 0x0117:
  node.deliver.base.is_instance_refusal), otherwise failed, retryable for 0xA7xx and 0x0110 only;
- in neither, after a 2xx: failed, retryable ("not acknowledged"): a 200 alone is never a delivery;
- in neither, after a 400 (bad syntax) whose body answers for other instances of the request, or for
  a request of that one instance: quarantined. The server could not read it, not even its UID (Orthanc
  answers so for a data set it cannot parse: 400, the others in ReferencedSOPSequence, an empty
  FailedSOPSequence), and the same bytes get the same answer. A 400 that names none of several
  instances says nothing about any one of them: they fail, as after a 2xx.

A spooled file whose head is not a Part 10 file's (node.deliver.spooled) is quarantined before the
request is built, so that it cannot spoil the request of the instances batched with it.

A request the server answered without a usable per-instance response fails as a whole, and the attempt
stops there (the instances not yet sent are left for the next attempt):
- retryable: connection refused or reset, timeouts, HTTP 408, 429 and 5xx, a 2xx body that is not a
  Store Instances Response;
- not retryable: TLS verification failures, 3xx, 401, 403, 404, 413, 415 and other 4xx, a secret that
  cannot be read. A 409 (the server refused every instance for what it is: PS3.18 "conflict", e.g. an
  unsupported SOP class) is judged by the FailureReasons of its body when it has one (an 0xA7xx in it
  stays retryable); without one it is not retryable, since the same bytes would get the same answer.

Secrets (node.deliver.http_auth) never reach a log record, an error text or an audit row: every text
built from a response or an exception goes through ``ResolvedAuth.redact``.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from node.deliver.base import (
    InstanceFile,
    OnSent,
    SendOutcome,
    is_instance_refusal,
    status_is_retryable,
    timed_send,
)
from node.deliver.destinations import Destination, DicomwebDestination
from node.deliver.dimse import describe_status
from node.deliver.http_auth import AuthSettingError, ResolvedAuth, resolve_auth
from node.deliver.spooled import unreadable_reason

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# How much of a response body is quoted in an error text.
QUOTED_BODY_CHARS = 200

# DICOM JSON tags of the Store Instances Response (PS3.18 Table 10.5.3-1).
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_SEQUENCE = "00081199"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_WARNING_REASON = "00081196"

_RETRYABLE_HTTP = frozenset({408, 429})

_warned_insecure: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


class MultipartBody:
    """A multipart/related body over files on disk: iterable in chunks, with its length known up front
    (requests then sends a Content-Length instead of chunked transfer encoding)."""

    def __init__(self, paths: Sequence[Path], boundary: str) -> None:
        self.boundary = boundary
        self._paths = list(paths)
        self._sizes = [p.stat().st_size for p in self._paths]
        self._part_head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        self._tail = f"--{boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __len__(self) -> int:
        per_part = len(self._part_head) + 2  # the CRLF after each file
        return sum(self._sizes) + per_part * len(self._paths) + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        for path, size in zip(self._paths, self._sizes, strict=True):
            yield self._part_head
            left = size
            with open(path, "rb") as f:
                while left:
                    chunk = f.read(min(CHUNK_BYTES, left))
                    if not chunk:
                        raise OSError(f"{path} shrank while being sent")
                    left -= len(chunk)
                    yield chunk
            yield b"\r\n"
        yield self._tail


@dataclass
class StoreResponse:
    """A parsed Store Instances Response: SOP Instance UID -> warning (0 if none) or failure reason."""

    referenced: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)


def _first_int(item: dict[str, object], tag: str) -> int | None:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if isinstance(values, list) and values and isinstance(values[0], int):
        return int(values[0])
    return None


def _sequence_items(dataset: dict[str, object], tag: str) -> list[dict[str, object]]:
    element = dataset.get(tag)
    if element is None:
        return []
    if not isinstance(element, dict):
        raise ValueError(f"({tag[:4]},{tag[4:]}) is not a DICOM JSON element")
    values = element.get("Value", [])
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise ValueError(f"({tag[:4]},{tag[4:]}) is not a sequence of items")
    return values


def parse_store_response(text: str) -> StoreResponse:
    """Parse an application/dicom+json Store Instances Response (an object, or a list of one object).
    Raises ValueError when the body is not one."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError("not a DICOM JSON dataset")
    if _REFERENCED_SOP_SEQUENCE not in data and _FAILED_SOP_SEQUENCE not in data:
        raise ValueError("neither ReferencedSOPSequence nor FailedSOPSequence in it")
    response = StoreResponse()
    for tag, target, reason_tag in (
        (_REFERENCED_SOP_SEQUENCE, response.referenced, _WARNING_REASON),
        (_FAILED_SOP_SEQUENCE, response.failed, _FAILURE_REASON),
    ):
        for item in _sequence_items(data, tag):
            uid_element = item.get(_REFERENCED_SOP_INSTANCE_UID)
            values = uid_element.get("Value") if isinstance(uid_element, dict) else None
            if not isinstance(values, list) or not values or not isinstance(values[0], str):
                raise ValueError(f"an item of ({tag[:4]},{tag[4:]}) has no ReferencedSOPInstanceUID")
            reason = _first_int(item, reason_tag)
            if tag == _FAILED_SOP_SEQUENCE:
                # A failed item without its FailureReason: 0xC000 ("cannot understand"), not retried.
                target[values[0]] = 0xC000 if reason is None else reason
            else:
                target[values[0]] = 0 if reason is None else reason
    return response


def describe_reason(reason: int, warning: bool = False) -> str:
    kind = "WarningReason" if warning else "FailureReason"
    return f"{kind} {describe_status(reason)}"


@dataclass
class _BatchProblem:
    """A request that failed as a whole: why, and whether a later attempt may help."""

    text: str
    retryable: bool
    instance_ids: tuple[int, ...] = ()


class StowSender:
    """The Sender for `kind: dicomweb` destinations (node.deliver.base.Sender)."""

    def __init__(self, user_agent: str = "dicom-node") -> None:
        self._user_agent = user_agent

    def send(self, destination: Destination, files: Sequence[InstanceFile], on_sent: OnSent) -> SendOutcome:
        assert isinstance(destination, DicomwebDestination), destination.kind
        where = f"destination {destination.name!r} ({_without_userinfo(destination.url)})"
        return timed_send(
            where,
            destination.name,
            files,
            lambda outcome: self._send_all(destination, files, on_sent, outcome, where),
            "STOW-RS request(s)",
        )

    # -- one attempt -----------------------------------------------------------------------------

    def _send_all(
        self,
        destination: DicomwebDestination,
        files: Sequence[InstanceFile],
        on_sent: OnSent,
        outcome: SendOutcome,
        where: str,
    ) -> None:
        problem = self._check_settings(destination)
        auth = ResolvedAuth()
        if problem is None:
            try:
                auth = resolve_auth(destination)
            except AuthSettingError as exc:
                problem = _BatchProblem(str(exc), retryable=False)
        if problem is None:
            problem = self._send_batches(destination, files, on_sent, outcome, auth)
        if problem is not None:
            unsent = len(files) - len(outcome.sent) - len(outcome.failed) - len(outcome.quarantined)
            outcome.error = f"{where}: {problem.text}; {len(outcome.sent)} of {len(files)} instances sent"
            if unsent:
                outcome.error += f", {unsent} not attempted or unanswered"
            outcome.retryable = problem.retryable
        # The instances of a request that failed as a whole are told by the problem's text and
        # follow its verdict; the others failed one by one, with their own reasons.
        stopped = set(problem.instance_ids) if problem else set()
        singly = [i for i in outcome.failed if i not in stopped]
        if singly:
            failures = _describe_failures(files, outcome, singly[0])
            outcome.error = f"{outcome.error}; {failures}" if outcome.error else f"{where}: {failures}"
            # Retried when any failure may go away: the next attempt re-sends only the failed ones,
            # and once only permanent refusals are left, the delivery is dead-lettered.
            permanent = self._permanent(outcome)
            outcome.retryable = outcome.retryable or any(i not in permanent for i in singly)
        if outcome.error is not None:
            outcome.error = auth.redact(outcome.error)
            outcome.failed = {k: auth.redact(v) for k, v in outcome.failed.items()}
        outcome.quarantined = {k: auth.redact(v) for k, v in outcome.quarantined.items()}

    @staticmethod
    def _permanent(outcome: SendOutcome) -> set[int]:
        """Failed instances that a later attempt would not fix: refused with a non-retryable reason
        that is not the instance's own (those are quarantined), e.g. 0x0122 SOP class not supported."""
        statuses = outcome.statuses
        return {i for i in outcome.failed if i in statuses and not status_is_retryable(statuses[i])}

    @staticmethod
    def _check_settings(destination: DicomwebDestination) -> _BatchProblem | None:
        if _without_userinfo(destination.url) != destination.url:
            # Credentials in the URL would end up in logs and exceptions: they belong in auth.
            return _BatchProblem("url: credentials in the URL are refused, use auth:", retryable=False)
        if destination.ca_bundle is not None and not destination.ca_bundle.is_file():
            return _BatchProblem(f"ca_bundle {str(destination.ca_bundle)!r} is not a file", retryable=False)
        if not destination.verify_tls and destination.url.startswith("https:"):
            key = (destination.name, destination.url)
            with _warned_lock:
                first = key not in _warned_insecure
                _warned_insecure.add(key)
            if first:
                logger.warning(
                    "destination %r (%s): TLS certificate verification is OFF (verify_tls: false)",
                    destination.name,
                    _without_userinfo(destination.url),
                )
                # Our warning above replaces urllib3's, which would repeat at every request.
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return None

    def _send_batches(
        self,
        destination: DicomwebDestination,
        files: Sequence[InstanceFile],
        on_sent: OnSent,
        outcome: SendOutcome,
        auth: ResolvedAuth,
    ) -> _BatchProblem | None:
        verify: bool | str = destination.verify_tls
        if destination.verify_tls and destination.ca_bundle is not None:
            verify = str(destination.ca_bundle)
        with requests.Session() as session:
            session.trust_env = False  # no proxies or .netrc credentials picked up behind our back
            for start in range(0, len(files), destination.batch_size):
                batch = files[start : start + destination.batch_size]
                readable = []
                for f in batch:
                    reason = unreadable_reason(f.path)
                    if reason is None:
                        readable.append(f)
                    else:
                        outcome.quarantined[f.instance_id] = reason
                if not readable:
                    continue
                outcome.associations += 1
                problem = self._post(session, destination, readable, on_sent, outcome, auth, verify)
                if problem is not None:
                    return problem
        return None

    def _post(
        self,
        session: requests.Session,
        destination: DicomwebDestination,
        batch: Sequence[InstanceFile],
        on_sent: OnSent,
        outcome: SendOutcome,
        auth: ResolvedAuth,
        verify: bool | str,
    ) -> _BatchProblem | None:
        """One STOW-RS request; records per-instance results. Returns a problem that stops the attempt."""
        try:
            body = MultipartBody([f.path for f in batch], uuid.uuid4().hex)
        except OSError as exc:
            return _BatchProblem(f"spool file cannot be read: {exc}", retryable=True)
        headers = {
            "Content-Type": body.content_type,
            "Accept": "application/dicom+json",
            "User-Agent": self._user_agent,
            **auth.headers,
        }
        url = destination.url.rstrip("/") + "/studies"
        try:
            response = session.post(
                url,
                data=body,
                headers=headers,
                timeout=destination.timeout_seconds,
                verify=verify,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            return _BatchProblem(f"TLS failure: {_reason(exc)}", retryable=False)
        except requests.exceptions.Timeout:
            return _BatchProblem(
                f"no answer within timeout_seconds={destination.timeout_seconds:g}", retryable=True
            )
        except requests.exceptions.ConnectionError as exc:
            return _BatchProblem(f"connection failed: {_reason(exc)}", retryable=True)
        except (requests.exceptions.RequestException, OSError) as exc:
            return _BatchProblem(f"request failed: {type(exc).__name__}: {_reason(exc)}", retryable=True)
        with response:
            return self._judge(response, batch, on_sent, outcome)

    def _judge(
        self,
        response: requests.Response,
        batch: Sequence[InstanceFile],
        on_sent: OnSent,
        outcome: SendOutcome,
    ) -> _BatchProblem | None:
        status = response.status_code
        http = f"HTTP {status} {response.reason or ''}".rstrip()
        parsed: StoreResponse | None = None
        parse_error = ""
        if 200 <= status < 300 or status in (400, 409):
            try:
                parsed = parse_store_response(response.text)
            except ValueError as exc:
                parse_error = str(exc)
        if parsed is None:
            retryable = 200 <= status < 300 or status >= 500 or status in _RETRYABLE_HTTP
            detail = _quote(response.text)
            if 200 <= status < 300:
                text = f"{http} but the body is not a Store Instances Response ({parse_error})"
            elif 300 <= status < 400:
                text = f"{http}: redirected to {response.headers.get('Location', '?')}; set url to the target"
            elif status == 413:
                text = f"{http}: the server refuses requests this large; lower batch_size"
            else:
                text = http
            if detail:
                text += f": {detail}"
            for f in batch:
                outcome.failed[f.instance_id] = text
            return _BatchProblem(text, retryable, tuple(f.instance_id for f in batch))
        # See the module docstring: after a 400, who is missing from the answer could not be read.
        named = parsed.referenced.keys() | parsed.failed.keys()
        answered = sum(f.sop_instance_uid in named for f in batch)
        unreadable = status == 400 and (answered > 0 or len(batch) == 1)
        for f in batch:
            uid = f.sop_instance_uid
            if uid in parsed.referenced:
                reason = parsed.referenced[uid]
                outcome.statuses[f.instance_id] = reason
                outcome.sent.append(f.instance_id)
                on_sent(f, reason)
            elif uid in parsed.failed:
                reason = parsed.failed[uid]
                outcome.statuses[f.instance_id] = reason
                refused = outcome.quarantined if is_instance_refusal(reason) else outcome.failed
                refused[f.instance_id] = f"{http}, {describe_reason(reason)}"
            elif unreadable:
                outcome.quarantined[f.instance_id] = (
                    f"{http} without this instance in the response: the server could not read it"
                )
            else:
                # Not acknowledged: whatever the status, the instance is not counted as delivered.
                outcome.failed[f.instance_id] = f"{http} without this instance in the response"
        return None


def _describe_failures(files: Sequence[InstanceFile], outcome: SendOutcome, first_id: int) -> str:
    by_id = {f.instance_id: f for f in files}
    return (
        f"{len(outcome.failed)} of {len(files)} instances failed, first: SOP Instance "
        f"{by_id[first_id].sop_instance_uid}: {outcome.failed[first_id]}"
    )


def _without_userinfo(url: str) -> str:
    """The URL without a `user:password@` part (the url setting must not carry one; never show it)."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def _reason(exc: BaseException) -> str:
    """The innermost useful text of a requests/urllib3 exception (they nest several layers deep)."""
    inner: BaseException | None = exc
    text = str(exc)
    while inner is not None:
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
            text = str(reason)
            continue
        args = getattr(inner, "args", ())
        if args and isinstance(args[0], BaseException):
            inner = args[0]
            text = str(inner)
            continue
        break
    return text[:QUOTED_BODY_CHARS * 2]


def _quote(text: str) -> str:
    one_line = " ".join(text.split())
    if len(one_line) > QUOTED_BODY_CHARS:
        one_line = one_line[:QUOTED_BODY_CHARS] + "..."
    return one_line
