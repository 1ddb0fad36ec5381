"""DICOM TLS (PS3.15 Annex B): ssl.SSLContext objects built from the settings, and client identities.

Both sides: TLS 1.2 or newer only; for TLS 1.2 only suites with forward secrecy and authenticated
encryption (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305, as BCP 195 and PS3.15 B.9 recommend; the
TLS 1.3 suites are all of that kind); no compression, no renegotiation. Which certificates to make and
how: docs/security.md, "DICOM TLS".
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node.config import TlsReceiveSettings
from node.errors import ConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!PSK:!SRP"

# getpeercert() attribute names -> the short names of RFC 4514 (as `openssl -nameopt RFC2253` prints).
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path, where: str) -> None:
    for name, path in (("cert_file", cert_file), ("key_file", key_file)):
        if not path.is_file():
            raise ConfigError(f"{where}.{name}: no such file {path}")
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        # OpenSSL says "PEM lib" for a file that is no PEM certificate or key, or an encrypted key.
        pem_lib = exc.reason is None and "PEM lib" in str(exc)
        reason = "not a PEM certificate and its unencrypted PEM key" if pem_lib else _reason(exc)
        raise ConfigError(
            f"{where}: cannot use certificate {cert_file} with key {key_file}: {reason}"
        ) from None


def _load_cas(context: ssl.SSLContext, ca_file: Path, where: str) -> None:
    if not ca_file.is_file():
        raise ConfigError(f"{where}.ca_file: no such file {ca_file}")
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"{where}.ca_file {ca_file}: no usable CA: {_reason(exc)}") from None


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in words: KEY_VALUES_MISMATCH -> "key values mismatch"."""
    return str(exc.reason).replace("_", " ").lower() if exc.reason else str(exc)


def server_context(settings: TlsReceiveSettings, where: str = "receive.tls") -> ssl.SSLContext:
    """The SCP's context. Clients are verified against ca_file when one is given: a certificate is
    required (require_client_cert) or optional but checked when presented. Raises ConfigError naming
    the setting and file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, settings.cert_file, settings.key_file, where)
    if settings.ca_file is not None:
        _load_cas(context, settings.ca_file, where)
        context.verify_mode = ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(
    *,
    verify: bool = True,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    where: str = "destination tls",
) -> ssl.SSLContext:
    """An SCU's context: the server's certificate and name are verified unless `verify` is False,
    against ca_file or else the system's CAs; cert_file/key_file: our client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    if verify:
        if ca_file is not None:
            _load_cas(context, ca_file, where)
        else:
            context.load_default_certs()
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file is not None and key_file is not None:
        _load_chain(context, cert_file, key_file, where)
    return context


def subject_names(peercert: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(CN, full subject in RFC 4514 form, most specific first: "CN=ct1,O=Hospital") of a certificate
    as SSLSocket.getpeercert() gives it; (None, None) without a (verified) certificate."""
    if not peercert:
        return None, None
    rdns: Sequence[Sequence[tuple[str, str]]] = peercert.get("subject", ())
    common_name: str | None = None
    parts: list[str] = []
    for rdn in rdns:
        part = []
        for name, value in rdn:
            if name == "commonName":
                common_name = value
            part.append(f"{_SHORT_NAMES.get(name, name)}={_escape(value)}")
        parts.append("+".join(part))
    return common_name, ",".join(reversed(parts)) or None


def _escape(value: str) -> str:
    escaped = "".join(f"\\{c}" if c in ',+"\\<>;=' else c for c in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


def _normalised(subject: str) -> str:
    """A subject as written in the settings, without spaces around its separating (unescaped) commas."""
    return ",".join(part.strip() for part in re.split(r"(?<!\\),", subject))


def allowed_titles(
    mapping: Mapping[str, Sequence[str]], common_name: str | None, subject: str | None
) -> frozenset[str]:
    """The calling AE titles a client certificate may use under receive.tls.client_ae_titles: those
    listed under its CN and under its full subject."""
    titles: set[str] = set()
    for key, listed in mapping.items():
        if (common_name is not None and key == common_name) or (
            subject is not None and _normalised(key) == subject
        ):
            titles.update(listed)
    return frozenset(titles)


def describe_failure(exc: BaseException) -> str:
    """A handshake failure in words: the verification message or OpenSSL's reason."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return _reason(exc)
    if isinstance(exc, TimeoutError):
        return "no TLS handshake within the negotiation timeout"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
