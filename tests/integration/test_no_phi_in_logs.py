"""No patient data in logs above DEBUG, none in the error comments sent back, and no secret at any
level (issue 11 item 5; docs/security.md `## Logs and patient data`).

One node, every logger captured at DEBUG (pynetdicom's included, with its standard handlers on), and a
series whose Patient Name and Patient ID are strings found nowhere else: received over C-STORE and
STOW-RS (basic and bearer auth), one instance rejected on each path, routed by a rule that looks at
PatientID, delivered to a DIMSE sink and refused by a STOW-RS destination whose error body echoes the
Authorization header it was sent.
"""

from __future__ import annotations

import base64
import logging
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.pynetdicom_tuning import CONN_OPEN_HANDLERS
from node.web.auth import hash_password
from tests.fuzz.campaign import STORE_REQUEST
from tests.fuzz.dataset_mutators import elements, encode
from tests.fuzz.driver import StoreChannel
from tests.interop.e2e import events
from tests.nodeutil import make_settings, recording_sink, running_node, scu, synthetic_ct, wait_for
from tests.peers import require_binary
from tests.rawpeer import CT_IMAGE_STORAGE, c_store_rq
from tests.stowpeer import StowAnswer, StowRequest, stow_peer
from tests.webutil import STOW_CONTENT_TYPE, multipart_body, part10

PATIENT_NAME = "Qzxwvkj^Phiprobe"
PATIENT_ID = "PHIPROBE7731X"
# Each piece on its own as well: a log line may print the family name or a DICOM PN's parts.
PHI = (PATIENT_NAME, "Qzxwvkj", "Phiprobe", PATIENT_ID)
WEB_PASSWORD = "webpw-Sekret-9f2c4e"
WEB_TOKEN = "tok-Sekret-55aa10bd77"
DEST_PASSWORD = "destpw-Sekret-31b7e0"


class Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def text_of(record: logging.LogRecord) -> str:
    """The record as any handler would write it: message, arguments, traceback."""
    text = record.getMessage()
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    return text


@pytest.fixture
def captured() -> Iterator[Everything]:
    handler = Everything()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", "pynetdicom")}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def patient(ds: Dataset) -> Dataset:
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.OtherPatientIDs = PATIENT_ID
    return ds


def echo_authorization(request: StowRequest) -> StowAnswer:
    """A destination that refuses and quotes back the header it got (some proxies do)."""
    header = request.headers.get("Authorization", "")
    return StowAnswer(401, f"unauthorized: {header}".encode(), "text/plain")


def c_store_with_comments(port: int, datasets: list[Dataset]) -> list[tuple[int, str]]:
    """(status, ErrorComment) of each C-STORE on one association."""
    assoc = scu("PHISCU").associate("127.0.0.1", port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS)
    assert assoc.is_established
    try:
        answers = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            answers.append((int(status.Status), str(status.get("ErrorComment", ""))))
        return answers
    finally:
        assoc.release()


def curl_stow(url: str, body: bytes, auth: list[str], tmp: Path) -> tuple[int, str]:
    body_file = tmp / f"body-{generate_uid()}.bin"
    body_file.write_bytes(body)
    command = [require_binary("curl"), "-sS", "--noproxy", "*", "-w", "\n%{http_code}", "-H", "Expect:"]
    command += ["-H", f"Content-Type: {STOW_CONTENT_TYPE}", "--data-binary", f"@{body_file}", *auth]
    done = subprocess.run(
        [*command, url + "/studies"], capture_output=True, text=True, timeout=60, check=True
    )
    response, _, status = done.stdout.rpartition("\n")
    return int(status), response


def uid_swallowing_the_patient(ds: Dataset) -> tuple[str, bytes]:
    """(SOP Instance UID, data set bytes) where the SOPInstanceUID element's length runs on over the
    elements after it up to the end of Patient ID, as a corrupted length does: the "UID" the node
    reads then holds the patient's name and ID."""
    encoded = encode(ds, explicit=True)
    found = elements(encoded)
    sop = next(e for e in found if e.tag == (0x0008, 0x0018))
    patient_id = next(e for e in found if e.tag == (0x0010, 0x0020))
    length = patient_id.value_at + patient_id.length - sop.value_at
    data = encoded.data
    return str(ds.SOPInstanceUID), data[: sop.length_at] + struct.pack("<H", length) + data[
        sop.length_at + 2 :
    ]


def write_rules(path: Path, sink_port: int, stow_url: str, password_file: Path) -> Path:
    rules = {
        "version": 1,
        "destinations": {
            "pacs": {"kind": "dimse", "ae_title": "SINK", "host": "127.0.0.1", "port": sink_port},
            "web": {
                "kind": "dicomweb",
                "url": stow_url,
                "auth": {"kind": "basic", "username": "node", "password_file": str(password_file)},
            },
        },
        "rules": [
            {
                "name": "probe-patients",
                "when": {"attribute": "PatientID", "regex": "PHIPROBE.*"},
                "send_to": ["pacs", "web"],
            }
        ],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def test_no_patient_data_above_debug_and_no_secret_at_all(tmp_path: Path, captured: Everything) -> None:
    password_file = tmp_path / "dest-password"
    password_file.write_text(DEST_PASSWORD + "\n")
    tokens = tmp_path / "tokens"
    tokens.write_text(WEB_TOKEN + "\n")
    received: list[str] = []
    sink, sink_port = recording_sink(received)
    dimse_series, stow_series, study = generate_uid(), generate_uid(), generate_uid()
    try:
        with stow_peer(echo_authorization) as destination:
            settings = make_settings(
                tmp_path,
                rules_path=str(
                    write_rules(tmp_path / "rules.yaml", sink_port, destination.url, password_file)
                ),
                forward={"max_attempts": 1},
                web={
                    "enabled": True,
                    "auth": {
                        "kind": "basic_or_bearer",
                        "users": [{"username": "alice", "password_hash": hash_password(WEB_PASSWORD, 1000)}],
                        "tokens_file": str(tokens),
                    },
                },
            )
            with running_node(settings) as node:
                assert node.port is not None and node.web_port is not None
                good = [patient(synthetic_ct(dimse_series, study, n)) for n in (1, 2)]
                bad = patient(synthetic_ct(dimse_series, study, 3))
                bad.SOPInstanceUID = "1.2.3.PHI"  # rejected: not a valid UID
                answers = c_store_with_comments(node.port, [*good, bad])
                assert [status for status, _ in answers][:2] == [0, 0]
                assert answers[2][0] != 0
                sop_uid, swallowing = uid_swallowing_the_patient(
                    patient(synthetic_ct(dimse_series, study, 4))
                )
                channel = StoreChannel(node.port, STORE_REQUEST)
                try:
                    swallowed = channel.store(1, c_store_rq(9, CT_IMAGE_STORAGE, sop_uid), swallowing, 10.0)
                finally:
                    channel.close()
                assert swallowed.statuses and swallowed.statuses[0] != 0, swallowed
                answers.append((swallowed.statuses[0], swallowed.comment))

                url = f"http://127.0.0.1:{node.web_port}"
                stowed = [patient(synthetic_ct(stow_series, study, n)) for n in (1, 2)]
                basic = ["-u", f"alice:{WEB_PASSWORD}"]
                bearer = ["-H", f"Authorization: Bearer {WEB_TOKEN}"]
                status_basic, body_basic = curl_stow(
                    url, multipart_body([part10(stowed[0])]), basic, tmp_path
                )
                status_bearer, body_bearer = curl_stow(
                    url, multipart_body([part10(stowed[1])]), bearer, tmp_path
                )
                assert (status_basic, status_bearer) == (200, 200), (body_basic, body_bearer)
                other_study = patient(synthetic_ct(stow_series, generate_uid(), 3))
                other_study.SOPInstanceUID = "1.2.3.PHI"
                status_bad, body_bad = curl_stow(url, multipart_body([part10(other_study)]), basic, tmp_path)
                assert status_bad >= 400 or "FailedSOPSequence" in body_bad or "00081198" in body_bad
                status_wrong, body_wrong = curl_stow(
                    url, multipart_body([part10(stowed[0])]), ["-u", "alice:wrong-" + WEB_PASSWORD], tmp_path
                )
                assert status_wrong == 401

                # Two series, each to the sink (delivered) and to the refusing STOW-RS destination.
                wait_for(lambda: len(received) >= 4, timeout=60, what="deliveries to the DIMSE sink")
                wait_for(
                    lambda: len(events(node, "delivery.dead_letter")) >= 2,
                    timeout=60,
                    what="the refused STOW-RS deliveries",
                )
                assert destination.requests, "the STOW-RS destination was never tried"
    finally:
        sink.shutdown()

    records = captured.records
    assert any(r.name.startswith("pynetdicom") for r in records), "pynetdicom's records were not captured"
    phi_lines = [
        f"{r.levelname} {r.name}: {text_of(r)[:300]}"
        for r in records
        if r.levelno >= logging.INFO and any(p in text_of(r) for p in PHI)
    ]
    assert phi_lines == [], "\n".join(phi_lines)
    encoded = [
        base64.b64encode(f"node:{DEST_PASSWORD}".encode()).decode(),
        base64.b64encode(f"alice:{WEB_PASSWORD}".encode()).decode(),
    ]
    secrets = (WEB_PASSWORD, WEB_TOKEN, DEST_PASSWORD, *encoded)
    secret_lines = [
        f"{r.levelname} {r.name}: {text_of(r)[:300]}"
        for r in records
        if any(s in text_of(r) for s in secrets)
    ]
    assert secret_lines == [], "\n".join(secret_lines)
    comments = [comment for _, comment in answers] + [body_basic, body_bearer, body_bad, body_wrong]
    assert not [c for c in comments if any(p in c for p in PHI)], comments
