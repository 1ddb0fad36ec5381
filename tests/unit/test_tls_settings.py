"""receive.tls and destination tls settings, and how a client certificate's subject maps to AE titles."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from node.config import ConfigFileError, load_settings
from node.deliver.destinations import DimseTls, destination_from_json
from node.tls import allowed_titles, subject_names

TLS = {"cert_file": "node.crt", "key_file": "node.key"}


def settings_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = settings_file(
        tmp_path, "receive:\n  tls:\n    cert_file: tls/node.crt\n    key_file: tls/node.key\n"
    )
    tls = load_settings(path).receive.tls
    assert tls is not None and tls.cert_file == tmp_path / "tls/node.crt" and tls.port == 2762
    assert not tls.require_client_cert and not tls.tls_only and tls.ca_file is None


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"require_client_cert": True}, "require_client_cert needs ca_file"),
        ({"client_ae_titles": {"ct1": ["CT1"]}}, "client_ae_titles needs ca_file"),
        ({"ca_file": "ca.crt", "client_ae_titles": {"ct1": []}}, "subject 'ct1' has no calling AE titles"),
        ({"ca_file": "ca.crt", "client_ae_titles": {"ct1": ["A\\\\B"]}}, "invalid AE title"),
        ({"port": 11112}, "tls.port 11112 is receive.port too"),
        ({"cert_file": None}, "receive.tls.cert_file"),
    ],
)
def test_unusable_tls_settings_are_refused_with_the_field(
    tmp_path: Path, tls: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_settings(None, {"receive": {"port": 11112, "tls": {**TLS, **tls}}})
    assert message in str(caught.value)


def test_tls_only_may_share_the_plain_port_number() -> None:
    settings = load_settings(
        None, {"receive": {"port": 11112, "tls": {**TLS, "port": 11112, "tls_only": True}}}
    )
    assert settings.receive.tls is not None and settings.receive.tls.tls_only


def test_destination_tls_defaults_to_verification_and_pairs_cert_with_key() -> None:
    destination = destination_from_json(
        {"name": "pacs", "ae_title": "PACS", "host": "pacs", "port": 2762, "tls": {}}
    )
    assert destination.kind == "dimse" and destination.tls == DimseTls()
    assert destination.tls.verify and destination.address == "PACS@pacs:2762 (TLS)"
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        DimseTls(cert_file=Path("node.crt"))


PEERCERT = {
    "subject": (
        (("countryName", "CH"),),
        (("organizationName", "Hospital, Radiology"),),
        (("commonName", "ct-scanner-1"),),
    )
}


def test_subject_names_in_rfc4514_form() -> None:
    assert subject_names(PEERCERT) == ("ct-scanner-1", "CN=ct-scanner-1,O=Hospital\\, Radiology,C=CH")
    assert subject_names({}) == (None, None)
    assert subject_names(None) == (None, None)


def test_allowed_titles_by_cn_or_full_subject() -> None:
    cn, subject = subject_names(PEERCERT)
    mapping = {
        "ct-scanner-1": ["CT1"],
        "CN=ct-scanner-1, O=Hospital\\, Radiology, C=CH": ["CT1B"],
        "other": ["OTHER"],
        "CN=ct-scanner-1,O=Elsewhere,C=CH": ["NO"],
    }
    assert allowed_titles(mapping, cn, subject) == {"CT1", "CT1B"}
    assert allowed_titles(mapping, None, None) == frozenset()
