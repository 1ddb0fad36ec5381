"""DICOM TLS against dcmtk (Debian's dcmtk is built with OpenSSL): storescu +tls into the node's TLS
port, forwarded over TLS to storescp +tls; echoscu and storescp for the failures. Certificates are made
by tests/tlscerts.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.app import NodeService
from node.config import ForwardSettings
from node.deliver.destinations import DimseDestination, DimseTls
from node.deliver.dimse import DimseSender
from node.pynetdicom_tuning import install
from tests.interop.e2e import all_delivered, events, pixels_by_sop, storescu, write_rules
from tests.nodeutil import make_settings, running_node, wait_for
from tests.peers import StoreScp, ct_files, instance_files, require_binary, run_storescp
from tests.tlscerts import CLIENT_CN, Pki, make_pki

pytestmark = pytest.mark.interop

MODALITY_AE = "STORESCU"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_binary("openssl")  # absent: skipped here, a failure under CI (tests.conftest)
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_args(pki: Pki, cert: Path | None, ca: Path) -> tuple[str, ...]:
    """dcmtk's TLS options: +tls key cert (or +tla: no certificate), +cf the CA to verify the peer with."""
    identity = ("+tls", str(pki.key), str(cert)) if cert is not None else ("+tla",)
    return (*identity, "+cf", str(ca))


def receive_tls(pki: Pki) -> dict[str, object]:
    return {
        "port": 0,
        "cert_file": str(pki.server),
        "key_file": str(pki.key),
        "ca_file": str(pki.ca),
        "require_client_cert": True,
        "client_ae_titles": {CLIENT_CN: [MODALITY_AE, "ECHOSCU"]},
    }


def tls_destination(scp: StoreScp, pki: Pki, ca: Path | None = None) -> dict[str, object]:
    return {
        "ae_title": scp.ae_title,
        "host": "127.0.0.1",
        "port": scp.port,
        "tls": {"ca_file": str(ca or pki.ca), "cert_file": str(pki.client), "key_file": str(pki.key)},
    }


def test_real_ct_series_in_and_out_over_tls(tmp_path: Path, pki: Pki) -> None:
    files = ct_files("qa_ge_head_tilt")
    storescp_tls = tls_args(pki, pki.server, pki.ca)  # storescp requires and verifies our certificate
    with run_storescp(tmp_path / "storescp", extra_args=storescp_tls) as scp:
        rules = write_rules(tmp_path / "rules.yaml", {"archive": tls_destination(scp, pki)})
        settings = make_settings(
            tmp_path,
            rules_path=str(rules),
            completion={"quiet_seconds": 1.0},
            receive={"tls": receive_tls(pki), "negotiation_timeout": 5.0},
        )
        with running_node(settings) as node:
            assert node.tls_port is not None
            storescu(node.tls_port, files, calling_ae=MODALITY_AE, extra=tls_args(pki, pki.client, pki.ca))
            wait_for(lambda: all_delivered(node, 1), timeout=120, what="the series delivered over TLS")
            accepted = [e for e in events(node, "association.accepted") if e.calling_ae == MODALITY_AE]
            assert accepted and accepted[0].details["tls_version"] in ("TLSv1.2", "TLSv1.3")
        assert pixels_by_sop(scp.files()) == pixels_by_sop(files)
        assert len(scp.files()) == len(files) == 28


def echoscu(port: int, *extra: str, calling_ae: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("echoscu"), "-aet", calling_ae, "-aec", "NODE", *extra, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[NodeService]:
    settings = make_settings(
        tmp_path_factory.mktemp("node"), receive={"tls": receive_tls(pki), "negotiation_timeout": 2.0}
    )
    with running_node(settings) as service:
        yield service


@pytest.mark.parametrize(
    "case",
    [
        "client certificate from another CA",
        "expired client certificate",
        "no client certificate",
        "echoscu does not trust the node's CA",
        "plain TCP to the TLS port",
    ],
)
def test_echoscu_refused(node: NodeService, pki: Pki, case: str) -> None:
    assert node.tls_port is not None
    extra = {
        "client certificate from another CA": tls_args(pki, pki.other_client, pki.ca),
        "expired client certificate": tls_args(pki, pki.expired_client, pki.ca),
        "no client certificate": tls_args(pki, None, pki.ca),
        "echoscu does not trust the node's CA": tls_args(pki, pki.client, pki.other_ca),
        "plain TCP to the TLS port": (),
    }[case]
    seen = len(events(node, "tls.handshake_failed"))
    result = echoscu(node.tls_port, *extra)
    assert result.returncode != 0, result.stdout + result.stderr
    wait_for(
        lambda: events(node, "tls.handshake_failed")[seen:], timeout=10, what="a tls.handshake_failed row"
    )
    good = echoscu(node.tls_port, *tls_args(pki, pki.client, pki.ca))
    assert good.returncode == 0, good.stdout + good.stderr


def test_echoscu_with_an_unmapped_calling_ae_is_rejected(node: NodeService, pki: Pki) -> None:
    assert node.tls_port is not None
    result = echoscu(node.tls_port, *tls_args(pki, pki.client, pki.ca), calling_ae="NOTMAPPED")
    assert result.returncode != 0, result.stdout + result.stderr
    [rejected] = wait_for(
        lambda: [e for e in events(node, "association.rejected") if e.calling_ae == "NOTMAPPED"],
        timeout=10,
        what="an association.rejected row",
    )
    # The A-ASSOCIATE-RJ sent: rejected-permanent, service-user, calling AE title not recognised.
    assert (rejected.details["result"], rejected.details["source"], rejected.details["diagnostic"]) == (
        1,
        1,
        3,
    )
    assert "client_ae_titles" in rejected.message


@pytest.mark.parametrize(
    ("server_cert", "expected"),
    [("other_server", "certificate verify failed"), ("expired_server", "certificate has expired")],
)
def test_sender_refuses_a_storescp_it_cannot_verify(
    tmp_path: Path, pki: Pki, server_cert: str, expected: str
) -> None:
    install()
    cert = getattr(pki, server_cert)
    files = instance_files(ct_files("qa_ge_head_tilt")[:2])
    settings = ForwardSettings(dimse_timeout=10.0, acse_timeout=5.0, network_timeout=10.0)
    with run_storescp(tmp_path / "in", extra_args=tls_args(pki, cert, pki.ca)) as scp:
        destination = DimseDestination(
            name="storescp", **tls_destination(scp, pki) | {"tls": DimseTls(ca_file=pki.ca)}
        )
        outcome = DimseSender(settings, "NODE").send(destination, files, lambda f, s: None)
        assert outcome.error is not None and expected in outcome.error, outcome.error
        assert not outcome.sent and not scp.files()
