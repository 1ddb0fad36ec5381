"""StowSender against a scripted STOW-RS server on loopback (tests/stowpeer.py): per-instance outcomes,
HTTP failures, timeouts, auth secrets read at send time and never shown."""

from __future__ import annotations

import base64
import json
import logging
import tracemalloc
from pathlib import Path

import pytest

from node.deliver.base import InstanceFile, SendOutcome
from node.deliver.destinations import DicomwebDestination
from node.deliver.stow import MultipartBody, StowSender, parse_store_response
from tests.peers import free_port, make_series
from tests.stowpeer import StowAnswer, StowRequest, stow_peer

SECRET = "s3cr3t-Pa55word"


def destination(url: str, **settings: object) -> DicomwebDestination:
    return DicomwebDestination.model_validate(
        {"name": "web", "kind": "dicomweb", "url": url, "timeout_seconds": 10, **settings}
    )


def send(dest: DicomwebDestination, files: list[InstanceFile]) -> tuple[SendOutcome, list[tuple[int, int]]]:
    acknowledged: list[tuple[int, int]] = []
    outcome = StowSender().send(dest, files, lambda f, status: acknowledged.append((f.instance_id, status)))
    return outcome, acknowledged


def test_batches_carry_the_files_byte_for_byte(tmp_path: Path) -> None:
    files = make_series(tmp_path, 7)
    with stow_peer() as peer:
        outcome, acknowledged = send(destination(peer.url, batch_size=3), files)
    assert outcome.ok, outcome.error
    assert acknowledged == [(f.instance_id, 0) for f in files]
    assert [len(r.parts) for r in peer.requests] == [3, 3, 1]
    assert outcome.associations == 3
    assert {r.path for r in peer.requests} == {"/dicom-web/studies"}
    first = peer.requests[0]
    assert first.headers["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
    assert first.headers["Accept"] == "application/dicom+json"
    assert "Authorization" not in first.headers
    # Sent with its length known up front, not chunked (some servers refuse chunked uploads).
    assert "Transfer-Encoding" not in first.headers
    assert int(first.headers["Content-Length"]) == first.body_bytes > sum(len(p) for p in first.parts)
    sent_parts = [part for r in peer.requests for part in r.parts]
    assert sent_parts == [f.path.read_bytes() for f in files]


def test_multipart_body_length_matches_what_it_yields(tmp_path: Path) -> None:
    files = make_series(tmp_path, 3, size=64)
    body = MultipartBody([f.path for f in files], "b0undary")
    assert len(body) == len(b"".join(body))


def test_the_body_is_streamed_from_disk_not_built_in_memory(tmp_path: Path) -> None:
    files = make_series(tmp_path, 6, size=1024)  # 2 MB each, 12 MB in one request
    total = sum(f.path.stat().st_size for f in files)
    uids = [f.sop_instance_uid for f in files]
    classes = [f.sop_class_uid for f in files]
    with stow_peer(lambda r: StowAnswer.store_response_for(uids, classes), discard_bodies=True) as peer:
        tracemalloc.start()
        try:
            outcome, acknowledged = send(destination(peer.url, batch_size=6), files)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert outcome.ok, outcome.error
    assert len(acknowledged) == 6 and peer.requests[0].body_bytes > total
    # The sender holds a chunk (1 MiB) or two at a time, not the 12 MB body.
    assert peak < total / 3, f"peak {peak} bytes for a {total}-byte body"


def test_partial_failure_gives_per_instance_outcomes(tmp_path: Path) -> None:
    files = make_series(tmp_path, 6)
    busy, refused, warned = files[1].sop_instance_uid, files[4].sop_instance_uid, files[2].sop_instance_uid

    def answer(request: StowRequest) -> StowAnswer:
        return StowAnswer.store_response(
            request, failed={busy: 0xA700, refused: 0xC000}, warnings={warned: 0xB000}
        )

    with stow_peer(answer) as peer:
        outcome, acknowledged = send(destination(peer.url, batch_size=10), files)
    assert [uid for uid, _ in acknowledged] == [f.instance_id for f in files if f.sop_instance_uid
                                                not in (busy, refused)]
    assert dict(acknowledged)[files[2].instance_id] == 0xB000
    # Out of resources is the destination's trouble: failed, retried. Cannot understand is the instance's:
    # quarantined, it does not fail the attempt (node.deliver.base.is_instance_refusal).
    assert set(outcome.failed) == {files[1].instance_id}
    assert "0xA700 (out of resources)" in outcome.failed[files[1].instance_id]
    assert "HTTP 202" in outcome.failed[files[1].instance_id]
    assert set(outcome.quarantined) == {files[4].instance_id}
    assert "0xC000 (cannot understand)" in outcome.quarantined[files[4].instance_id]
    assert outcome.statuses[files[1].instance_id] == 0xA700
    assert outcome.statuses[files[4].instance_id] == 0xC000
    assert outcome.error is not None and "1 of 6 instances failed" in outcome.error
    assert outcome.retryable  # the 0xA700 one may pass next time


@pytest.mark.parametrize("reason", [0xC000, 0xA900, 0x0117])
def test_refusals_of_the_instance_quarantine_it_only(tmp_path: Path, reason: int) -> None:
    files = make_series(tmp_path, 3)
    refused = {files[0].sop_instance_uid: reason}
    with stow_peer(lambda r: StowAnswer.store_response(r, failed=refused)) as peer:
        outcome, acknowledged = send(destination(peer.url), files)
    assert [i for i, _ in acknowledged] == [files[1].instance_id, files[2].instance_id]
    assert outcome.ok, outcome.error
    assert list(outcome.quarantined) == [files[0].instance_id] and outcome.failed == {}
    assert f"FailureReason 0x{reason:04X}" in outcome.quarantined[files[0].instance_id]


def test_spool_file_without_part10_head_is_quarantined_before_the_request(tmp_path: Path) -> None:
    """Its bytes never reach the server, where they could spoil the request of the others."""
    files = make_series(tmp_path, 3)
    with open(files[1].path, "r+b") as f:
        f.write(b"\xff" * 200)  # preamble, DICM and File Meta overwritten on disk
    with stow_peer() as peer:
        outcome, acknowledged = send(destination(peer.url, batch_size=10), files)
    assert outcome.ok, outcome.error
    assert peer.received_uids() == [files[0].sop_instance_uid, files[2].sop_instance_uid]
    assert [i for i, _ in acknowledged] == [files[0].instance_id, files[2].instance_id]
    assert list(outcome.quarantined) == [files[1].instance_id]
    assert str(files[1].path) in outcome.quarantined[files[1].instance_id]
    assert "not a DICOM Part 10 file" in outcome.quarantined[files[1].instance_id]


def test_conflict_with_every_instance_refused(tmp_path: Path) -> None:
    files = make_series(tmp_path, 2)
    with stow_peer(lambda r: StowAnswer.store_response(r, failed=dict.fromkeys(r.sop_instance_uids, 0x0122))
                   ) as peer:
        outcome, acknowledged = send(destination(peer.url), files)
    assert acknowledged == []
    assert "HTTP 409" in outcome.failed[files[0].instance_id]
    assert "0x0122 (SOP class not supported)" in str(outcome.error)
    assert not outcome.retryable


def test_ok_without_the_instance_in_the_response_is_not_sent(tmp_path: Path) -> None:
    files = make_series(tmp_path, 3)
    missing = files[1].sop_instance_uid
    with stow_peer(lambda r: StowAnswer.store_response(r, omit=frozenset({missing}))) as peer:
        outcome, acknowledged = send(destination(peer.url), files)
    assert [i for i, _ in acknowledged] == [files[0].instance_id, files[2].instance_id]
    assert outcome.failed == {files[1].instance_id: "HTTP 200 OK without this instance in the response"}
    assert outcome.retryable


def test_bad_request_without_the_instance_quarantines_it(tmp_path: Path) -> None:
    """Orthanc's answer to a part it cannot parse: 400, the others referenced, the bad one nowhere."""
    files = make_series(tmp_path, 3)
    missing = files[1].sop_instance_uid
    with stow_peer(lambda r: StowAnswer.store_response(r, omit=frozenset({missing}), status=400)) as peer:
        outcome, acknowledged = send(destination(peer.url), files)
    assert [i for i, _ in acknowledged] == [files[0].instance_id, files[2].instance_id]
    assert outcome.ok, outcome.error
    assert outcome.quarantined == {
        files[1].instance_id: "HTTP 400 Bad Request without this instance in the response: "
        "the server could not read it"
    }


def test_bad_request_for_one_instance_alone_quarantines_it(tmp_path: Path) -> None:
    files = make_series(tmp_path, 2)
    bad = files[0].sop_instance_uid
    # What Orthanc answers for a request of one part it cannot parse: both sequences empty.
    empty = StowAnswer(400, json.dumps({"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ"}}).encode())

    def answer(request: StowRequest) -> StowAnswer:
        return empty if request.sop_instance_uids == [bad] else StowAnswer.store_response(request)

    with stow_peer(answer) as peer:
        outcome, acknowledged = send(destination(peer.url, batch_size=1), files)
    assert [i for i, _ in acknowledged] == [files[1].instance_id]
    assert list(outcome.quarantined) == [files[0].instance_id] and outcome.ok


def test_bad_request_naming_none_of_several_fails_them(tmp_path: Path) -> None:
    """Nothing says which part was bad (or whether our request was): no quarantine, the attempt fails."""
    files = make_series(tmp_path, 2)
    with stow_peer(lambda r: StowAnswer.store_response(r, omit=frozenset(r.sop_instance_uids), status=400)
                   ) as peer:
        outcome, acknowledged = send(destination(peer.url), files)
    assert acknowledged == [] and outcome.quarantined == {}
    assert set(outcome.failed) == {f.instance_id for f in files} and not outcome.ok


@pytest.mark.parametrize(
    ("answer", "retryable", "expected"),
    [
        (StowAnswer(500, b"database locked", "text/plain"), True, "HTTP 500 Internal Server Error: database"),
        (StowAnswer(503, b""), True, "HTTP 503 Service Unavailable"),
        (StowAnswer(429, b""), True, "HTTP 429"),
        (StowAnswer(401, b"go away", "text/plain"), False, "HTTP 401 Unauthorized: go away"),
        (StowAnswer(415, b""), False, "HTTP 415"),
        (StowAnswer(413, b""), False, "lower batch_size"),
        (StowAnswer(200, b"<html>proxy login</html>", "text/html"), True,
         "HTTP 200 OK but the body is not a Store Instances Response (not JSON"),
        (StowAnswer(200, b"{}"), True, "neither ReferencedSOPSequence nor FailedSOPSequence"),
        (StowAnswer(409, b""), False, "HTTP 409 Conflict"),
    ],
)
def test_request_level_failures_stop_the_attempt(
    tmp_path: Path, answer: StowAnswer, retryable: bool, expected: str
) -> None:
    files = make_series(tmp_path, 4)
    with stow_peer(lambda r: answer) as peer:
        outcome, acknowledged = send(destination(peer.url, batch_size=2), files)
    assert acknowledged == []
    assert len(peer.requests) == 1  # the second batch is not attempted
    assert outcome.retryable is retryable
    assert outcome.error is not None and expected in outcome.error, outcome.error
    assert "0 of 4 instances sent, 2 not attempted or unanswered" in outcome.error
    assert set(outcome.failed) == {files[0].instance_id, files[1].instance_id}


def test_connection_refused_is_retryable(tmp_path: Path) -> None:
    files = make_series(tmp_path, 2)
    outcome, acknowledged = send(destination(f"http://127.0.0.1:{free_port()}/dicom-web"), files)
    assert acknowledged == [] and outcome.retryable
    assert outcome.error is not None and "connection failed" in outcome.error
    assert "refused" in outcome.error.lower()


def test_a_peer_that_hangs_times_out(tmp_path: Path) -> None:
    files = make_series(tmp_path, 2)
    with stow_peer(lambda r: StowAnswer(hang=True)) as peer:
        outcome, acknowledged = send(destination(peer.url, timeout_seconds=0.5), files)
    assert acknowledged == [] and outcome.retryable
    assert outcome.error is not None and "no answer within timeout_seconds=0.5" in outcome.error


def test_basic_auth_password_read_from_file_at_send_time(tmp_path: Path) -> None:
    files = make_series(tmp_path / "dcm", 1)
    secret_file = tmp_path / "password"
    dest = destination(
        "http://placeholder", auth={"kind": "basic", "username": "node", "password_file": str(secret_file)}
    )
    with stow_peer() as peer:
        dest = dest.model_copy(update={"url": peer.url})
        secret_file.write_text("first\n")
        assert send(dest, files)[0].ok
        secret_file.write_text("rotated")
        assert send(dest, files)[0].ok
    sent = [r.headers["Authorization"] for r in peer.requests]
    assert sent == [
        "Basic " + base64.b64encode(b"node:first").decode(),
        "Basic " + base64.b64encode(b"node:rotated").decode(),
    ]


def test_bearer_token_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = make_series(tmp_path, 1)
    monkeypatch.setenv("STOW_TOKEN", "tok-123")
    with stow_peer() as peer:
        outcome, _ = send(destination(peer.url, auth={"kind": "bearer", "token_env": "STOW_TOKEN"}), files)
    assert outcome.ok
    assert peer.requests[0].headers["Authorization"] == "Bearer tok-123"


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"kind": "bearer", "token_env": "NODE_TEST_NO_SUCH_VAR"},
         "destination 'web': auth.token_env: environment variable NODE_TEST_NO_SUCH_VAR is not set"),
        ({"kind": "basic", "username": "u", "password_file": "/nonexistent/pw"},
         "destination 'web': auth.password_file '/nonexistent/pw' cannot be read "
         "(No such file or directory)"),
    ],
)
def test_a_missing_secret_is_a_precise_permanent_error(
    tmp_path: Path, auth: dict[str, str], expected: str
) -> None:
    files = make_series(tmp_path, 2)
    with stow_peer() as peer:
        outcome, acknowledged = send(destination(peer.url, auth=auth), files)
    assert peer.requests == [] and acknowledged == []
    assert not outcome.retryable
    assert outcome.error is not None and expected in outcome.error, outcome.error


def test_the_secret_never_shows_even_when_the_peer_echoes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = make_series(tmp_path, 2)
    monkeypatch.setenv("STOW_PASSWORD", SECRET)

    def echo(request: StowRequest) -> StowAnswer:
        header = request.headers["Authorization"]
        decoded = base64.b64decode(header.split()[1]).decode()
        return StowAnswer(401, f"bad credentials {header} ({decoded})".encode(), "text/plain")

    caplog.set_level(logging.DEBUG)
    auth = {"kind": "basic", "username": "node", "password_env": "STOW_PASSWORD"}
    with stow_peer(echo) as peer:
        outcome, _ = send(destination(peer.url, auth=auth), files)
    encoded = base64.b64encode(f"node:{SECRET}".encode()).decode()
    assert not outcome.retryable and outcome.error is not None
    assert "HTTP 401 Unauthorized: bad credentials Basic *** (node:***)" in outcome.error
    texts = [outcome.error, *outcome.failed.values(), caplog.text]
    for text in texts:
        assert SECRET not in text and encoded not in text


def test_store_response_parsing_rejects_malformed_items() -> None:
    with pytest.raises(ValueError, match="has no ReferencedSOPInstanceUID"):
        parse_store_response('{"00081199": {"vr": "SQ", "Value": [{}]}}')
    parsed = parse_store_response(
        '[{"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2"]}}]}}]'
    )
    assert parsed.failed == {"1.2": 0xC000}  # a failure without its reason is a permanent one


def test_credentials_in_the_url_are_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no user or password in the url: use auth"):
        destination(f"https://node:{SECRET}@pacs/dicom-web")


def test_credentials_in_the_url_of_an_old_plan_are_refused_without_showing_them(tmp_path: Path) -> None:
    files = make_series(tmp_path, 1)
    with stow_peer() as peer:
        url = peer.url.replace("://", f"://node:{SECRET}@")
        # A plan frozen before the check existed, say: built without validation.
        outcome, acknowledged = send(destination(peer.url).model_copy(update={"url": url}), files)
    assert peer.requests == [] and acknowledged == [] and not outcome.retryable
    assert outcome.error is not None and "credentials in the URL are refused, use auth:" in outcome.error
    assert SECRET not in outcome.error and f"({peer.url})" in outcome.error
