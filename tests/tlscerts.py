"""Certificates for the TLS tests, made with the `openssl` command (no Python crypto package needed).

One CA ("Node Test CA") signs a server certificate for 127.0.0.1/localhost, a client certificate
(CN=ct-scanner-1, O=Test Hospital) and an expired client certificate; a second CA ("Other CA") signs
a client and a server certificate that the first CA's users must refuse. Three RSA keys in all (one
per CA, one shared by the leaf certificates) keep the set quick to make.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CLIENT_CN = "ct-scanner-1"
CLIENT_SUBJECT = f"CN={CLIENT_CN},O=Test Hospital"


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    other_ca: Path
    key: Path  # the private key of every leaf certificate below
    server: Path
    client: Path
    expired_client: Path
    other_client: Path
    other_server: Path
    expired_server: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {done.stderr}")


def _ca(work: Path, name: str, subject: str) -> tuple[Path, Path]:
    key, cert = work / f"{name}.key", work / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-subj", subject, "-days", "30", cwd=work)  # fmt: skip
    return cert, key


def _leaf(
    work: Path, name: str, subject: str, ca: tuple[Path, Path], key: Path, days: int, server: bool
) -> Path:
    csr, cert, ext = work / f"{name}.csr", work / f"{name}.crt", work / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    lines = ["basicConstraints=CA:FALSE", f"extendedKeyUsage={usage}"]
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    ext.write_text("\n".join(lines) + "\n")
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", subject, cwd=work)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", str(days), "-extfile", ext, cwd=work)  # fmt: skip
    return cert


def make_pki(work: Path) -> Pki:
    """Every certificate the tests need, under `work` (days=-1 makes a certificate that has expired)."""
    work.mkdir(parents=True, exist_ok=True)
    ca = _ca(work, "ca", "/CN=Node Test CA")
    other = _ca(work, "other-ca", "/CN=Other CA")
    key = work / "leaf.key"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key, cwd=work)
    client_subject = f"/O=Test Hospital/CN={CLIENT_CN}"
    return Pki(
        dir=work,
        ca=ca[0],
        other_ca=other[0],
        key=key,
        server=_leaf(work, "server", "/CN=localhost", ca, key, 30, server=True),
        client=_leaf(work, "client", client_subject, ca, key, 30, server=False),
        expired_client=_leaf(work, "expired-client", client_subject, ca, key, -1, server=False),
        other_client=_leaf(work, "other-client", client_subject, other, key, 30, server=False),
        other_server=_leaf(work, "other-server", "/CN=localhost", other, key, 30, server=True),
        expired_server=_leaf(work, "expired-server", "/CN=localhost", ca, key, -1, server=True),
    )
