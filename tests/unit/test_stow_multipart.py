"""node.web.multipart and node.web.stow_response: media types, streamed parts, the PS3.18 response."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.web.multipart import BadRequestBody, MediaType, PartsWriter, dicom_boundary
from node.web.stow_response import InstanceOutcome, http_status, response_json

BODY = (
    b"preamble text is allowed\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\nFIRST\r\n"
    b"--XyZ\r\nContent-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n"
    b"SECOND\r\n\r\n--XyZ--\r\n"
)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_parts_are_streamed_into_files_whatever_the_chunking(tmp_path: Path, chunk: int) -> None:
    writer = PartsWriter(b"XyZ", tmp_path)
    for start in range(0, len(BODY), chunk):
        writer.feed(BODY[start : start + chunk])
    parts = writer.finish()
    assert [p.path.read_bytes() for p in parts] == [b"FIRST", b"SECOND\r\n"]
    assert [p.size for p in parts] == [5, 8]
    assert MediaType.parse(parts[1].content_type).params == {"transfer-syntax": "1.2.840.10008.1.2.1"}
    writer.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BODY[:-9], "truncated body"),
        (BODY[:20], "no boundary found"),
        (BODY[: BODY.index(b"FIRST") + 2], "truncated body"),
        (b"--Abc\r\n\r\n", "malformed"),
        (b"--XyZ--\r\n", "without any part"),
    ],
)
def test_bad_bodies_are_400_and_leave_no_file(tmp_path: Path, body: bytes, message: str) -> None:
    writer = PartsWriter(b"XyZ", tmp_path)
    with pytest.raises(BadRequestBody, match=message) as raised:
        writer.feed(body)
        writer.finish()
    assert raised.value.status == 400
    writer.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),
        ("application/dicom", 415),
        ("multipart/related; boundary=x", 415),
        ('multipart/related; type="application/dicom+xml"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
        ('multipart/related; type="application/dicom"; boundary=' + "b" * 71, 400),
    ],
)
def test_content_type_refusals(content_type: str | None, status: int) -> None:
    with pytest.raises(BadRequestBody) as raised:
        dicom_boundary(content_type)
    assert raised.value.status == status


def test_content_type_accepted_quoted_or_not() -> None:
    assert dicom_boundary('Multipart/Related; type="application/dicom"; boundary="a;b"') == b"a;b"
    assert dicom_boundary("multipart/related; type=application/dicom; boundary=plain") == b"plain"


def test_response_statuses_and_json() -> None:
    ok = InstanceOutcome("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.9", "1.9.1")
    failed = InstanceOutcome("1.2.840.10008.5.1.4.1.1.2", "1.2.4", failure=0xA900)
    warned = InstanceOutcome("1.2.840.10008.5.1.4.1.1.2", "1.2.5", "1.9", "1.9.1", warning=0xB000)
    assert http_status([ok]) == 200
    assert http_status([ok, failed]) == 202
    assert http_status([warned]) == 202
    assert http_status([failed]) == 409
    body = response_json([ok, failed], "http://node:8080/", None)
    assert body["00081190"] == {"vr": "UR", "Value": ["http://node:8080/studies/1.9"]}
    assert body["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [0xA900]}  # type: ignore[index]
    stored = body["00081199"]["Value"][0]  # type: ignore[index]
    assert stored["00081155"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert stored["00081190"]["Value"] == ["http://node:8080/studies/1.9/series/1.9.1/instances/1.2.3"]
    assert "00081196" not in stored
    warned_json = response_json([warned], "http://node:8080/", "1.9")["00081199"]["Value"][0]  # type: ignore[index]
    assert warned_json["00081196"] == {"vr": "US", "Value": [0xB000]}


def test_too_many_parts_is_413(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("node.web.multipart.MAX_PARTS", 3)
    writer = PartsWriter(b"B", tmp_path)
    body = b"--B\r\nContent-Type: application/dicom\r\n\r\nx\r\n" * 4 + b"--B--\r\n"
    with pytest.raises(BadRequestBody, match="more than 3 parts") as raised:
        writer.feed(body)
    assert raised.value.status == 413
    writer.discard()
    assert list(tmp_path.iterdir()) == []
