"""STOW-RS in: real uploads (curl, dicomweb-client) into a running node's endpoint served by uvicorn."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from requests import HTTPError
from sqlalchemy import select

from node.app import NodeService
from node.audit import Events
from node.db.models import AuditEvent, Series, SeriesState
from node.receive.senders import STATUS_NOT_AUTHORIZED
from node.web.auth import hash_password
from node.web.stow_response import FAILURE_CANNOT_UNDERSTAND, FAILURE_STUDY_MISMATCH
from tests.interop.e2e import events
from tests.nodeutil import make_settings, recording_sink, running_node, store, synthetic_ct, wait_for
from tests.peers import ct_files, require_binary
from tests.webutil import STOW_CONTENT_TYPE, multipart_body, part10, serve, stow_app

PASSWORD = "s3cret-Pa55"
TOKEN = "tok-0123456789abcdef"
MAX_REQUEST = 32 * 1024 * 1024


@dataclass
class Stow:
    service: NodeService
    url: str
    tmp: Path

    def audit_since(self, first_id: int, event: str) -> list[AuditEvent]:
        with self.service.sessions() as session:
            query = select(AuditEvent).where(AuditEvent.id > first_id, AuditEvent.event == event)
            return list(session.scalars(query.order_by(AuditEvent.id)))

    def last_audit_id(self) -> int:
        with self.service.sessions() as session:
            return session.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1)) or 0

    def series(self, series_uid: str) -> Series | None:
        with self.service.sessions() as session:
            return session.scalar(select(Series).where(Series.series_uid == series_uid))

    def curl(
        self,
        body: bytes,
        path: str = "/studies",
        content_type: str | None = STOW_CONTENT_TYPE,
        auth: list[str] | None = None,
        extra: list[str] | None = None,
    ) -> tuple[int, bytes, str]:
        """POST `body` with curl; returns (HTTP status, response body, response headers)."""
        body_file = self.tmp / f"body-{generate_uid()}.bin"
        body_file.write_bytes(body)
        out, headers = self.tmp / "out.bin", self.tmp / "headers.txt"
        command = [require_binary("curl"), "-sS", "-o", str(out), "-D", str(headers), "-w", "%{http_code}"]
        command += ["--data-binary", f"@{body_file}"]
        # curl asks "Expect: 100-continue" for a big body unless told not to; the tests that want it say so.
        if "Expect: 100-continue" not in (extra or []):
            command += ["-H", "Expect:"]
        if content_type is not None:
            command += ["-H", f"Content-Type: {content_type}"]
        command += auth if auth is not None else ["-u", f"alice:{PASSWORD}"]
        command += extra or []
        done = subprocess.run([*command, self.url + path], capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return int(done.stdout), out.read_bytes(), headers.read_text()


@pytest.fixture(scope="module")
def stow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stow]:
    tmp = tmp_path_factory.mktemp("stow")
    tokens = tmp / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    tokens.chmod(0o600)
    web = {
        "max_request_bytes": MAX_REQUEST,
        "auth": {
            "kind": "basic_or_bearer",
            "users": [{"username": "alice", "password_hash": hash_password(PASSWORD, iterations=1000)}],
            "tokens_file": str(tokens),
        },
    }
    settings = make_settings(tmp, web=web, completion={"quiet_seconds": 0.5})
    with running_node(settings) as service, serve(stow_app(service)) as url:
        yield Stow(service, url, tmp)


def _failures(body: bytes) -> list[int]:
    response = json.loads(body)
    return [item["00081197"]["Value"][0] for item in response.get("00081198", {}).get("Value", [])]


def _stored_uids(body: bytes) -> list[str]:
    response = json.loads(body)
    return [item["00081155"]["Value"][0] for item in response.get("00081199", {}).get("Value", [])]


def test_dicomweb_client_stores_a_real_ct_series_which_completes(stow: Stow) -> None:
    files = ct_files("qa_ge_head_tilt")
    datasets = [dcmread(path) for path in files]
    series_uid = str(datasets[0].SeriesInstanceUID)
    first = stow.last_audit_id()
    client = DICOMwebClient(url=stow.url)
    client.set_http_retry_params(retry=False)
    client._session.auth = ("alice", PASSWORD)
    response = client.store_instances(datasets)
    stored = {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence}
    assert stored == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in response
    assert response.RetrieveURL == f"{stow.url}/studies/{datasets[0].StudyInstanceUID}"
    row = wait_for(
        lambda: (s := stow.series(series_uid)) is not None and s.state != SeriesState.RECEIVING and s,
        what="the series to complete",
    )
    assert row.instance_count == len(files)
    assert row.calling_ae is None
    rows = stow.audit_since(first, Events.INSTANCE_STORED)
    assert len(rows) == len(files)
    assert {r.peer.split("@")[0] for r in rows if r.peer} == {"http:alice"}
    spooled = stow.service.spool.instances_dir / str(datasets[0].StudyInstanceUID) / series_uid
    assert sorted(p.read_bytes() for p in spooled.iterdir()) == sorted(p.read_bytes() for p in files)


def test_curl_with_a_bearer_token_stores_two_instances(stow: Stow) -> None:
    series_uid = generate_uid()
    datasets = [synthetic_ct(series_uid, number=n) for n in (1, 2)]
    status, body, _ = stow.curl(
        multipart_body([part10(ds) for ds in datasets]), auth=["-H", f"Authorization: Bearer {TOKEN}"]
    )
    assert status == 200, body
    assert sorted(_stored_uids(body)) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    row = stow.series(series_uid)
    assert row is not None and row.instance_count == 2


def _good_upload_still_works(stow: Stow) -> None:
    ds = synthetic_ct()
    status, body, _ = stow.curl(multipart_body([part10(ds)]))
    assert status == 200, body
    assert _stored_uids(body) == [str(ds.SOPInstanceUID)]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong content type", 415),
        ("type is not application/dicom", 415),
        ("missing boundary", 400),
        ("truncated body", 400),
        ("garbage instead of multipart", 400),
        ("over the size limit", 413),
        ("over the size limit, chunked", 413),
        ("over the size limit, Expect: 100-continue", 413),
        ("invalid study UID in the URL", 400),
    ],
)
def test_bad_request_gets_its_status_and_a_stow_rejected_row(stow: Stow, case: str, expected: int) -> None:
    good = part10(synthetic_ct())
    body, content_type, path = multipart_body([good]), STOW_CONTENT_TYPE, "/studies"
    if case == "wrong content type":
        content_type = "application/dicom"
    elif case == "type is not application/dicom":
        content_type = STOW_CONTENT_TYPE.replace("application/dicom", "application/dicom+json")
    elif case == "missing boundary":
        content_type = 'multipart/related; type="application/dicom"'
    elif case == "truncated body":
        body = multipart_body([good, good], close=False)[:-100]
    elif case == "garbage instead of multipart":
        body = b"this is not a multipart body at all\r\n" * 10
    elif case.startswith("over the size limit"):
        body = multipart_body([good, bytes(MAX_REQUEST)])
    elif case == "invalid study UID in the URL":
        path = "/studies/1.2.abc"
    first = stow.last_audit_id()
    extra = ["-H", "Transfer-Encoding: chunked"] if case.endswith("chunked") else []
    if case.endswith("100-continue"):
        extra = ["-H", "Expect: 100-continue"]  # refused on its Content-Length: the body is never sent
    status, answer, _ = stow.curl(body, path=path, content_type=content_type, extra=extra)
    assert status == expected, answer
    rows = stow.audit_since(first, Events.STOW_REJECTED)
    assert len(rows) == 1 and rows[0].details is not None
    assert rows[0].details["http_status"] == expected
    assert rows[0].message in answer.decode()
    assert stow.audit_since(first, Events.INSTANCE_STORED) == []  # nothing of the request was kept
    assert [p for p in stow.service.spool.tmp_dir.iterdir() if p.name.startswith("stow-")] == []
    _good_upload_still_works(stow)


@pytest.mark.parametrize(
    "auth", [[], ["-u", "alice:wrong"], ["-u", "mallory:x"], ["-H", "Authorization: Bearer nope"]]
)
def test_no_or_wrong_auth_is_401_with_a_challenge(stow: Stow, auth: list[str]) -> None:
    first = stow.last_audit_id()
    status, answer, headers = stow.curl(multipart_body([part10(synthetic_ct())]), auth=auth)
    assert status == 401, answer
    assert 'www-authenticate: basic realm="dicom-node"' in headers.lower()
    assert "bearer" in headers.lower()
    rows = stow.audit_since(first, Events.STOW_REJECTED)
    assert len(rows) == 1 and rows[0].details == {**rows[0].details, "http_status": 401}
    assert stow.audit_since(first, Events.INSTANCE_STORED) == []
    _good_upload_still_works(stow)


# pydicom warns about the invalid UID when the test writes it and when the node reads it.
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_instances_fail_with_their_reasons_beside_a_good_one(stow: Stow) -> None:
    good = synthetic_ct()
    invalid_uid = synthetic_ct()
    invalid_uid.SeriesInstanceUID = "1.2.03.abc"
    parts = [part10(good), b"not DICOM at all" * 50, part10(invalid_uid)]
    first = stow.last_audit_id()
    status, body, _ = stow.curl(multipart_body(parts))
    assert status == 202, body
    assert _stored_uids(body) == [str(good.SOPInstanceUID)]
    assert _failures(body) == [FAILURE_CANNOT_UNDERSTAND, 0xC220]
    rejected = stow.audit_since(first, Events.INSTANCE_REJECTED)
    # parts are stored in parallel: the audit rows come in any order
    assert sorted(r.details["status"] for r in rejected if r.details) == [FAILURE_CANNOT_UNDERSTAND, 0xC220]
    assert all(r.peer and r.peer.startswith("http:alice@") for r in rejected)


def test_study_url_that_differs_from_the_instance_is_409_with_a900(stow: Stow) -> None:
    ds = synthetic_ct()
    other_study = generate_uid()
    first = stow.last_audit_id()
    status, body, _ = stow.curl(multipart_body([part10(ds)]), path=f"/studies/{other_study}")
    assert status == 409, body
    assert _failures(body) == [FAILURE_STUDY_MISMATCH]
    failed = json.loads(body)["00081198"]["Value"][0]
    assert failed["00081155"]["Value"] == [str(ds.SOPInstanceUID)]
    rejected = stow.audit_since(first, Events.INSTANCE_REJECTED)
    assert len(rejected) == 1 and rejected[0].sop_instance_uid == str(ds.SOPInstanceUID)
    assert stow.series(str(ds.SeriesInstanceUID)) is None
    # The right study URL stores it.
    status, body, _ = stow.curl(multipart_body([part10(ds)]), path=f"/studies/{ds.StudyInstanceUID}")
    assert status == 200, body


def test_dicomweb_client_sees_a_conflict_as_an_http_error(stow: Stow) -> None:
    client = DICOMwebClient(url=stow.url)
    client.set_http_retry_params(retry=False)
    client._session.headers["Authorization"] = (
        "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    )
    with pytest.raises(HTTPError) as raised:
        client.store_instances([synthetic_ct()], study_instance_uid=generate_uid())
    assert raised.value.response.status_code == 409


def test_a_client_that_disconnects_mid_body_is_audited_and_nothing_is_kept(stow: Stow) -> None:
    body = multipart_body([part10(synthetic_ct()) for _ in range(3)])
    host, port = stow.url.removeprefix("http://").split(":")
    first = stow.last_audit_id()
    credentials = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    head = (
        f"POST /studies HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {credentials}\r\n"
        f"Content-Type: {STOW_CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body[: len(body) // 2])
    rows = wait_for(lambda: stow.audit_since(first, Events.STOW_REJECTED), what="the stow.rejected row")
    assert rows[0].message.startswith("truncated body: the client closed the connection")
    assert rows[0].details is not None and rows[0].details["http_status"] == 400
    assert stow.audit_since(first, Events.INSTANCE_STORED) == []
    wait_for(
        lambda: not [p for p in stow.service.spool.tmp_dir.iterdir() if p.name.startswith("stow-")],
        what="the staged parts to be removed",
    )
    _good_upload_still_works(stow)


def test_without_auth_and_with_a_small_instance_limit(stow: Stow) -> None:
    """`kind: none` (chosen explicitly) stores without credentials; a part over max_instance_bytes fails
    with 0xA700 and is never read into memory, its UIDs taken from its header."""
    from starlette.applications import Starlette

    from node.web.stow import stow_routes

    service = stow.service
    settings = service.settings.web.model_copy(
        update={"auth": service.settings.web.auth.model_copy(update={"kind": "none"})}
    )
    small, big = synthetic_ct(rows=8), synthetic_ct(rows=64)
    routes = stow_routes(
        service.ingest,
        service.spool,
        settings,
        on_stored=service.tracker.instance_stored,
        sessions=service.sessions,
        max_instance_bytes=len(part10(small)) + 100,
    )
    first = stow.last_audit_id()
    with serve(Starlette(routes=routes)) as url:
        other = Stow(service, url, stow.tmp)
        status, body, _ = other.curl(multipart_body([part10(small), part10(big)]), auth=[])
    assert status == 202, body
    assert _stored_uids(body) == [str(small.SOPInstanceUID)]
    assert _failures(body) == [0xA700]
    rejected = stow.audit_since(first, Events.INSTANCE_REJECTED)
    assert len(rejected) == 1 and rejected[0].sop_instance_uid == str(big.SOPInstanceUID)
    stored = stow.audit_since(first, Events.INSTANCE_STORED)
    assert len(stored) == 1 and stored[0].peer is not None and stored[0].peer.startswith("http:127.0.0.1:")


def test_a_stow_rs_series_is_routed_like_a_c_store_series(tmp_path: Path) -> None:
    """Completed and forwarded by the rules; `series.calling_ae` is missing for HTTP (docs/dicomweb.md)."""
    received: list[str] = []
    sink, port = recording_sink(received)
    rules = {
        "version": 1,
        "destinations": {"sink": {"kind": "dimse", "ae_title": "SINK", "host": "127.0.0.1", "port": port}},
        "rules": [
            {
                "name": "http-ct",
                "when": {
                    "all": [
                        {"attribute": "Modality", "equals": "CT"},
                        {"attribute": "series.calling_ae", "exists": False},
                    ]
                },
                "send_to": ["sink"],
            }
        ],
        "fallback": {"discard": True},
    }
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    settings = make_settings(tmp_path, rules_path=str(rules_path), web={"auth": {"kind": "none"}})
    files = ct_files("kits00072_arterial_slab")
    try:
        with running_node(settings) as service, serve(stow_app(service)) as url:
            client = DICOMwebClient(url=url)
            client.set_http_retry_params(retry=False)
            client.store_instances([dcmread(path) for path in files])
            wait_for(lambda: len(received) == len(files), what="the series to be forwarded")
            [decision] = events(service, Events.ROUTE_DECISION)
            assert decision.details is not None and "http-ct" in json.dumps(decision.details)
    finally:
        sink.shutdown()
    assert sorted(received) == sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files)


def test_an_unwritable_staging_folder_is_503_and_the_node_goes_on(stow: Stow) -> None:
    from types import SimpleNamespace

    from starlette.applications import Starlette

    from node.web.stow import stow_routes

    service = stow.service
    broken_spool = SimpleNamespace(tmp_dir=stow.tmp / "no-such-folder")
    routes = stow_routes(
        service.ingest,
        broken_spool,  # type: ignore[arg-type]
        service.settings.web,
        on_stored=service.tracker.instance_stored,
        sessions=service.sessions,
        max_instance_bytes=service.settings.receive.max_instance_bytes,
    )
    first = stow.last_audit_id()
    with serve(Starlette(routes=routes)) as url:
        status, answer, _ = Stow(service, url, stow.tmp).curl(multipart_body([part10(synthetic_ct())]))
    assert status == 503, answer
    assert b"cannot write the body" in answer
    [row] = stow.audit_since(first, Events.STOW_REJECTED)
    assert row.details is not None and row.details["http_status"] == 503
    _good_upload_still_works(stow)


def test_a_stow_replacement_of_an_instance_a_modality_sent_is_refused_with_0124(stow: Stow) -> None:
    ds = synthetic_ct()
    assert store(stow.service.port, [ds], ae_title="MODALITY") == [0]
    changed = synthetic_ct(ds.SeriesInstanceUID, ds.StudyInstanceUID, number=2)
    changed.SOPInstanceUID = ds.SOPInstanceUID
    changed.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    first = stow.last_audit_id()
    status, body, _ = stow.curl(multipart_body([part10(changed)]))
    assert status == 409, body
    assert _failures(body) == [STATUS_NOT_AUTHORIZED]
    (rejected,) = stow.audit_since(first, Events.INSTANCE_REJECTED)
    assert rejected.details["original_sender"] == {"calling_ae": "MODALITY", "host": "127.0.0.1"}
    assert rejected.details["sender"] == {"calling_ae": None, "host": "http:alice@127.0.0.1"}
