"""STOW-RS over https to a local scripted peer with a certificate made here (openssl CLI): verified
against the right CA, refused with a precise error against the wrong one, and verify_tls: false."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from node.deliver.destinations import DicomwebDestination
from node.deliver.stow import StowSender
from tests.peers import make_series, require_binary
from tests.stowpeer import stow_peer

EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_binary("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    _openssl("req", "-x509", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(folder, "test-ca")
    other_ca, _ = make_ca(folder, "other-ca")
    _openssl("req", *EC_KEY, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
             cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)
    return {"ca": ca, "other_ca": other_ca, "cert": folder / "server.pem", "key": folder / "server.key"}


def dest(url: str, **settings: object) -> DicomwebDestination:
    return DicomwebDestination.model_validate({"name": "tls", "kind": "dicomweb", "url": url, **settings})


def test_verified_with_the_right_ca_bundle(tmp_path: Path, pki: dict[str, Path]) -> None:
    files = make_series(tmp_path, 3)
    with stow_peer(certificate=(pki["cert"], pki["key"])) as peer:
        assert peer.url.startswith("https://")
        outcome = StowSender().send(dest(peer.url, ca_bundle=str(pki["ca"])), files, lambda f, s: None)
    assert outcome.ok, outcome.error
    assert peer.received_uids() == [f.sop_instance_uid for f in files]


@pytest.mark.parametrize("bundle", ["other_ca", None])
def test_refused_with_the_wrong_ca(tmp_path: Path, pki: dict[str, Path], bundle: str | None) -> None:
    files = make_series(tmp_path, 2)
    settings = {"ca_bundle": str(pki[bundle])} if bundle else {}  # None: the system CAs
    with stow_peer(certificate=(pki["cert"], pki["key"])) as peer:
        outcome = StowSender().send(dest(peer.url, **settings), files, lambda f, s: None)
    assert peer.requests == []
    assert not outcome.ok and not outcome.retryable
    assert outcome.error is not None
    assert "TLS failure" in outcome.error and "certificate verify failed" in outcome.error, outcome.error


def test_a_missing_ca_bundle_is_named(tmp_path: Path) -> None:
    files = make_series(tmp_path, 1)
    outcome = StowSender().send(
        dest("https://localhost:1/dicom-web", ca_bundle=str(tmp_path / "nope.pem")), files, lambda f, s: None
    )
    assert not outcome.retryable
    assert outcome.error is not None and f"ca_bundle '{tmp_path / 'nope.pem'}' is not a file" in outcome.error


def test_verify_tls_false_works_and_warns_once(
    tmp_path: Path, pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    files = make_series(tmp_path, 2)
    caplog.set_level(logging.WARNING, logger="node.deliver.stow")
    with stow_peer(certificate=(pki["cert"], pki["key"])) as peer:
        # verify_tls: false wins over a ca_bundle that would refuse the certificate.
        destination = dest(peer.url, verify_tls=False, ca_bundle=str(pki["other_ca"])).model_copy(
            update={"name": "insecure-once"}
        )
        for _ in range(3):
            outcome = StowSender().send(destination, files, lambda f, s: None)
            assert outcome.ok, outcome.error
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 1
    assert "insecure-once" in warnings[0].getMessage()
