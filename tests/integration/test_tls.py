"""DICOM TLS on loopback: the node's TLS port (mutual TLS, subject -> calling AE) beside its plain port,
the handshake failures (audited, the port keeps serving), the PDU caps and deadlines on TLS, and the
C-STORE sender over TLS (pynetdicom's sender, server verification). Certificates: tests/tlscerts.py."""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from sqlalchemy import select

from node.app import NodeService
from node.config import Settings
from node.db.models import AuditEvent, Instance
from node.deliver.base import InstanceFile
from node.deliver.destinations import DimseDestination, DimseTls
from node.deliver.dimse import DimseSender
from node.deliver.wire import WireError, WireStore
from node.errors import ConfigError
from node.pynetdicom_tuning import CONN_OPEN_HANDLERS, NEGOTIATION_PDU_LIMIT
from node.receive import scp as scp_module
from node.tls import client_context, server_context
from tests.nodeutil import make_settings, running_node, scu, store, synthetic_ct, wait_for
from tests.peers import require_binary
from tests.rawpeer import A_ASSOCIATE_RQ, RawPeer, p_data_tf, pdu
from tests.tlscerts import CLIENT_CN, CLIENT_SUBJECT, Pki, make_pki

ALLOWED_AE = "CT1"
NEGOTIATION_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_binary("openssl")  # absent: skipped here, a failure under CI (tests.conftest)
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_settings(tmp: Path, pki: Pki, **tls: object) -> Settings:
    receive = {
        "negotiation_timeout": NEGOTIATION_TIMEOUT,
        "tls": {
            "port": 0,
            "cert_file": str(pki.server),
            "key_file": str(pki.key),
            "ca_file": str(pki.ca),
            "require_client_cert": True,
            "client_ae_titles": {CLIENT_CN: [ALLOWED_AE]},
            **tls,
        },
    }
    return make_settings(tmp, receive=receive)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[NodeService]:
    with running_node(tls_settings(tmp_path_factory.mktemp("node"), pki)) as service:
        yield service


def events(node: NodeService, name: str) -> list[AuditEvent]:
    with node.sessions() as session:
        query = select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id)
        return list(session.scalars(query))


def tls_associate(
    port: int, pki: Pki, cert: Path | None, ae_title: str = ALLOWED_AE, ca: Path | None = None
) -> Association:
    context = client_context(ca_file=ca or pki.ca, cert_file=cert, key_file=pki.key if cert else None)
    return scu(ae_title).associate(
        "127.0.0.1", port, ae_title="NODE", evt_handlers=CONN_OPEN_HANDLERS, tls_args=(context, "127.0.0.1")
    )


def tls_store(port: int, pki: Pki, datasets: list[Dataset]) -> list[int]:
    assoc = tls_associate(port, pki, pki.client)
    assert assoc.is_established, "TLS association to the node was not established"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def good_peer_gets_in(node: NodeService, pki: Pki) -> bool:
    assert node.tls_port is not None
    assoc = tls_associate(node.tls_port, pki, pki.client)
    try:
        return bool(assoc.is_established) and int(assoc.send_c_echo().Status) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def handshake_failures_after(node: NodeService, seen: int) -> list[AuditEvent]:
    return wait_for(
        lambda: events(node, "tls.handshake_failed")[seen:], timeout=10, what="a tls.handshake_failed row"
    )


# -- receiving -------------------------------------------------------------------------------------


def test_mutual_tls_store_beside_the_plain_port(node: NodeService, pki: Pki) -> None:
    assert node.tls_port is not None and node.port is not None and node.tls_port != node.port
    series = "1.2.826.0.1.3680043.8.498.7001"
    assert tls_store(node.tls_port, pki, [synthetic_ct(series, number=n) for n in (1, 2)]) == [0, 0]
    assert store(node.port, [synthetic_ct(series, number=3)]) == [0]
    accepted = [e for e in events(node, "association.accepted") if e.details.get("tls_version")]
    assert accepted, "no association.accepted row for the TLS association"
    details = accepted[-1].details
    assert details["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert details["client_subject"] == CLIENT_SUBJECT and accepted[-1].calling_ae == ALLOWED_AE


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("client certificate from another CA", "certificate verify failed"),
        ("expired client certificate", "certificate has expired"),
        ("no client certificate", "peer did not return a certificate"),
        ("client does not trust the node's CA", "unknown ca"),
    ],
)
def test_failed_handshake_is_audited_and_the_port_keeps_serving(
    node: NodeService, pki: Pki, case: str, expected: str
) -> None:
    assert node.tls_port is not None
    cert, ca = {
        "client certificate from another CA": (pki.other_client, pki.ca),
        "expired client certificate": (pki.expired_client, pki.ca),
        "no client certificate": (None, pki.ca),
        "client does not trust the node's CA": (pki.client, pki.other_ca),
    }[case]
    seen = len(events(node, "tls.handshake_failed"))
    assoc = tls_associate(node.tls_port, pki, cert, ca=ca)
    assert not assoc.is_established, case
    [failed] = handshake_failures_after(node, seen)
    assert expected in failed.message, failed.message
    assert failed.peer is not None and failed.peer.startswith("127.0.0.1:")
    assert good_peer_gets_in(node, pki)


def test_plain_dicom_to_the_tls_port_is_closed_and_audited(node: NodeService, pki: Pki) -> None:
    assert node.tls_port is not None
    seen = len(events(node, "tls.handshake_failed"))
    with RawPeer(node.tls_port) as peer:
        answer = peer.associate(calling_ae=ALLOWED_AE)
        assert answer.kind == "closed", answer
    [failed] = handshake_failures_after(node, seen)
    assert "wrong version number" in failed.message, failed.message
    assert good_peer_gets_in(node, pki)


def test_a_silent_connection_does_not_hold_up_the_tls_port(node: NodeService, pki: Pki) -> None:
    """pynetdicom would run the handshake on the accepting thread, without a timeout."""
    assert node.tls_port is not None
    seen = len(events(node, "tls.handshake_failed"))
    with RawPeer(node.tls_port) as silent:
        assert good_peer_gets_in(node, pki)
        assert silent.closed_by_node(10 * NEGOTIATION_TIMEOUT)
    [failed] = handshake_failures_after(node, seen)
    assert "negotiation timeout" in failed.message


def test_subject_not_mapped_to_the_calling_ae_is_rejected(node: NodeService, pki: Pki) -> None:
    assert node.tls_port is not None
    assoc = tls_associate(node.tls_port, pki, pki.client, ae_title="NOTMAPPED")
    assert assoc.is_rejected
    rsp = assoc.acceptor.primitive
    assert rsp is not None and (rsp.result, rsp.result_source, rsp.diagnostic) == (1, 1, 3)
    rejected = wait_for(
        lambda: [e for e in events(node, "association.rejected") if e.calling_ae == "NOTMAPPED"],
        timeout=10,
        what="an association.rejected row",
    )
    assert CLIENT_SUBJECT in rejected[-1].message
    assert rejected[-1].details["client_subject"] == CLIENT_SUBJECT


def _tls_raw_peer(port: int, pki: Pki) -> RawPeer:
    peer = RawPeer(port)
    context = client_context(ca_file=pki.ca, cert_file=pki.client, key_file=pki.key)
    peer.sock = context.wrap_socket(peer.sock, server_hostname="127.0.0.1")
    return peer


def test_pdu_over_the_cap_on_the_tls_port_gets_a_abort(node: NodeService, pki: Pki) -> None:
    assert node.tls_port is not None
    seen = len(events(node, "association.aborted"))
    with _tls_raw_peer(node.tls_port, pki) as peer:
        peer.send(pdu(A_ASSOCIATE_RQ, b"\0" * 100, declared_length=NEGOTIATION_PDU_LIMIT + 1))
        answer = peer.answer(10)
        assert answer.abort == (2, 6), answer  # service-provider, invalid PDU parameter value
    aborted = wait_for(lambda: events(node, "association.aborted")[seen:], timeout=10, what="an abort row")
    assert str(NEGOTIATION_PDU_LIMIT + 1) in aborted[0].message
    assert good_peer_gets_in(node, pki)


def test_p_data_over_the_cap_inside_a_tls_association_gets_a_abort(node: NodeService, pki: Pki) -> None:
    assert node.tls_port is not None
    cap = node.settings.receive.max_pdu_bytes
    with _tls_raw_peer(node.tls_port, pki) as peer:
        assert peer.associate(calling_ae=ALLOWED_AE).is_accept
        peer.send(p_data_tf([(1, 0x00, b"\0" * 64)], declared_length=cap + 1))
        answer = peer.answer(10)
        assert answer.abort == (2, 6), answer
    assert wait_for(
        lambda: [e for e in events(node, "association.aborted") if str(cap + 1) in e.message],
        timeout=10,
        what="an abort row naming the declared length",
    )
    assert good_peer_gets_in(node, pki)


def test_pdu_cut_short_on_the_tls_port_is_closed_at_the_negotiation_deadline(
    node: NodeService, pki: Pki
) -> None:
    assert node.tls_port is not None
    with _tls_raw_peer(node.tls_port, pki) as peer:
        peer.send(pdu(A_ASSOCIATE_RQ, b"\0" * 100, declared_length=200))  # 100 bytes never come
        assert peer.closed_by_node(10 * NEGOTIATION_TIMEOUT)
    assert any("ARTIM" in e.message for e in events(node, "association.aborted"))
    assert good_peer_gets_in(node, pki)


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast_path", "pynetdicom"])
def test_tls_stores_take_the_receive_path_configured(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    """The C-STORE receive fast path (node/receive/wire.py) serves TLS associations too."""
    through_pynetdicom: list[str] = []
    original = scp_module.handle_store

    def counting(event: Any, *args: Any) -> Any:
        through_pynetdicom.append(str(event.request.AffectedSOPInstanceUID))
        return original(event, *args)

    monkeypatch.setattr(scp_module, "handle_store", counting)
    settings = tls_settings(tmp_path, pki)
    settings = settings.model_copy(
        update={"receive": settings.receive.model_copy(update={"fast_path": fast_path})}
    )
    datasets = [synthetic_ct("1.2.826.0.1.3680043.8.498.7003", number=n) for n in (1, 2)]
    with running_node(settings) as service:
        assert service.tls_port is not None
        assert tls_store(service.tls_port, pki, datasets) == [0, 0]
        with service.sessions() as session:
            stored = {i.sop_instance_uid: i.path for i in session.scalars(select(Instance))}
        assert set(stored) == {str(ds.SOPInstanceUID) for ds in datasets}
        for ds in datasets:
            path = service.spool.absolute(stored[str(ds.SOPInstanceUID)])
            assert dcmread(path).PixelData == ds.PixelData
    assert through_pynetdicom == ([] if fast_path else [str(ds.SOPInstanceUID) for ds in datasets])


def test_tls_only_opens_no_plain_port(tmp_path: Path, pki: Pki) -> None:
    with running_node(tls_settings(tmp_path, pki, tls_only=True)) as service:
        assert service.tls_port is not None and service.port == service.tls_port
        assert service.scp.port is None
        assert good_peer_gets_in(service, pki)


def test_unusable_certificate_stops_the_node_before_it_listens(tmp_path: Path, pki: Pki) -> None:
    settings = tls_settings(tmp_path, pki, key_file=str(pki.ca))  # a certificate is not a key
    with pytest.raises(ConfigError, match="receive.tls: cannot use certificate .* not a PEM certificate"):
        NodeService(settings)
    good = tls_settings(tmp_path, pki).receive.tls
    assert good is not None
    with pytest.raises(ConfigError, match="receive.tls.ca_file: no such file"):
        server_context(good.model_copy(update={"ca_file": tmp_path / "missing.pem"}))


# -- forwarding ------------------------------------------------------------------------------------


def _instance_files(tmp: Path, count: int) -> list[InstanceFile]:
    files = []
    for n in range(count):
        ds = synthetic_ct("1.2.826.0.1.3680043.8.498.7002", number=n + 1)
        path = tmp / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(
            InstanceFile(n + 1, path, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID)
        )
    return files


def _destination(node: NodeService, **tls: object) -> DimseDestination:
    assert node.tls_port is not None
    return DimseDestination(
        name="tls-node",
        ae_title="NODE",
        host="127.0.0.1",
        port=node.tls_port,
        calling_ae_title=ALLOWED_AE,
        tls=DimseTls.model_validate(tls),
    )


def test_sender_forwards_over_mutual_tls_with_pynetdicom(tmp_path: Path, node: NodeService, pki: Pki) -> None:
    settings = make_settings(tmp_path).forward
    destination = _destination(node, ca_file=pki.ca, cert_file=pki.client, key_file=pki.key)
    files = _instance_files(tmp_path, 3)
    sent: list[int] = []
    outcome = DimseSender(settings, "NODE").send(destination, files, lambda f, status: sent.append(status))
    assert outcome.error is None and sent == [0, 0, 0] and len(outcome.sent) == 3


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"ca": "other"}, "certificate verify failed"),
        ({"server_name": "pacs.example.org"}, "Hostname mismatch"),
    ],
)
def test_sender_refuses_a_server_it_cannot_verify(
    tmp_path: Path, node: NodeService, pki: Pki, tls: dict[str, str], expected: str
) -> None:
    ca = pki.other_ca if tls.pop("ca", None) == "other" else pki.ca
    destination = _destination(node, ca_file=ca, cert_file=pki.client, key_file=pki.key, **tls)
    outcome = DimseSender(make_settings(tmp_path).forward, "NODE").send(
        destination, _instance_files(tmp_path, 1), lambda f, status: None
    )
    assert outcome.error is not None and expected in outcome.error, outcome.error
    assert "TLS" in outcome.error and not outcome.sent


def test_sender_without_verification_still_speaks_tls(tmp_path: Path, node: NodeService, pki: Pki) -> None:
    destination = _destination(
        node, verify=False, ca_file=pki.other_ca, cert_file=pki.client, key_file=pki.key
    )
    outcome = DimseSender(make_settings(tmp_path).forward, "NODE").send(
        destination, _instance_files(tmp_path, 1), lambda f, status: None
    )
    assert outcome.error is None and len(outcome.sent) == 1


def test_wire_fast_path_declines_a_tls_association(node: NodeService, pki: Pki) -> None:
    assert node.tls_port is not None
    assoc = tls_associate(node.tls_port, pki, pki.client)
    assert assoc.is_established
    try:
        assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)
        with pytest.raises(WireError, match="TLS"):
            WireStore(assoc, timeout=5)
    finally:
        assoc.release()


def test_server_context_speaks_tls_1_2_and_newer_only(pki: Pki, node: NodeService) -> None:
    assert node.tls_port is not None
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="127.0.0.1")
