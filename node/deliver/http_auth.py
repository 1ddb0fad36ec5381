"""Credentials of a DICOMweb destination, read when a delivery runs, and kept out of every text we write.

The rules file names where a secret lives (`password_file`, `password_env`, `token_file`, `token_env`),
never the secret. ``resolve_auth`` reads it at send time (a rotated secret takes effect at the next
attempt) and returns the ``Authorization`` header with the strings to redact: the secret itself and
its encoded forms, since a peer may echo the header back in an error body that we quote.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path

from node.deliver.destinations import DicomwebDestination, HttpAuth


class AuthSettingError(Exception):
    """A secret that cannot be read: names the destination and the setting, never the secret."""


@dataclass(frozen=True)
class ResolvedAuth:
    headers: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """`text` with every known secret (and its encodings) replaced by `***`."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:  # never print the header values
        return f"ResolvedAuth(headers={sorted(self.headers)}, secrets=<{len(self.secrets)} hidden>)"


def _read_file(destination: DicomwebDestination, setting: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthSettingError(
            f"destination {destination.name!r}: auth.{setting} {str(path)!r} cannot be read "
            f"({exc.strerror or type(exc).__name__})"
        ) from None
    except UnicodeDecodeError:
        raise AuthSettingError(
            f"destination {destination.name!r}: auth.{setting} {str(path)!r} is not UTF-8 text"
        ) from None
    # A trailing newline (echo secret > file) is not part of the secret.
    secret = text.rstrip("\r\n")
    if not secret:
        raise AuthSettingError(f"destination {destination.name!r}: auth.{setting} {str(path)!r} is empty")
    return secret


def _read_env(destination: DicomwebDestination, setting: str, name: str) -> str:
    secret = os.environ.get(name)
    if secret is None:
        raise AuthSettingError(
            f"destination {destination.name!r}: auth.{setting}: environment variable {name} is not set"
        )
    if not secret:
        raise AuthSettingError(
            f"destination {destination.name!r}: auth.{setting}: environment variable {name} is empty"
        )
    return secret


def _secret(destination: DicomwebDestination, auth: HttpAuth, kind: str) -> str:
    file, env = (
        (auth.password_file, auth.password_env) if kind == "password" else (auth.token_file, auth.token_env)
    )
    if file is not None:
        return _read_file(destination, f"{kind}_file", file)
    assert env is not None  # HttpAuth's validator requires exactly one of them
    return _read_env(destination, f"{kind}_env", env)


def resolve_auth(destination: DicomwebDestination) -> ResolvedAuth:
    """The Authorization header for this destination, its secret read now. Raises AuthSettingError."""
    auth = destination.auth
    if auth.kind == "basic":
        assert auth.username is not None
        password = _secret(destination, auth, "password")
        encoded = base64.b64encode(f"{auth.username}:{password}".encode()).decode("ascii")
        return ResolvedAuth({"Authorization": f"Basic {encoded}"}, (encoded, password))
    if auth.kind == "bearer":
        token = _secret(destination, auth, "token")
        return ResolvedAuth({"Authorization": f"Bearer {token}"}, (token,))
    return ResolvedAuth()
