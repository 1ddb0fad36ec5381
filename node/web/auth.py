"""Who may use the STOW-RS endpoint: HTTP basic (PBKDF2 hashes or password files) and/or bearer tokens.

Secrets are compared in constant time and never logged. A password hash is
`pbkdf2_sha256$<iterations>$<salt, base64>$<digest, base64>` (`dicom-node web hash-password` writes one).
Verifying such a hash costs a deliberate ~0.5 s of CPU, so a verified (user, password) pair is
remembered as a keyed HMAC (the key is random per process) and the next request of that client costs
one HMAC instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from node.config import WebAuthSettings, WebSettings
from node.errors import ConfigError

logger = logging.getLogger(__name__)

PBKDF2_ALGORITHM = "pbkdf2_sha256"
PBKDF2_ITERATIONS = 600_000  # OWASP's recommendation for PBKDF2-HMAC-SHA256
REALM = "dicom-node"
_VERIFIED_CACHE_SIZE = 256


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """The PBKDF2 hash to put in `web.auth.users[].password_hash`."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return "$".join((PBKDF2_ALGORITHM, str(iterations), _b64(salt), _b64(digest)))


@dataclass(frozen=True)
class _Pbkdf2:
    iterations: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, encoded: str, where: str) -> _Pbkdf2:
        parts = encoded.split("$")
        try:
            if len(parts) != 4 or parts[0] != PBKDF2_ALGORITHM:
                raise ValueError("not pbkdf2_sha256$<iterations>$<salt>$<digest>")
            iterations = int(parts[1])
            if iterations < 1:
                raise ValueError("iterations must be positive")
            return cls(
                iterations,
                base64.b64decode(parts[2], validate=True),
                base64.b64decode(parts[3], validate=True),
            )
        except (ValueError, binascii.Error) as exc:
            raise ConfigError(f"{where}: invalid password_hash ({exc})") from None

    def matches(self, password: str) -> bool:
        candidate = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), self.salt, self.iterations)
        return hmac.compare_digest(candidate, self.digest)


@dataclass(frozen=True)
class AuthResult:
    """`user` is who authenticated ("token:<line>" for a bearer token); `problem` says why not."""

    user: str | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class Authenticator:
    """Checks the Authorization header of a request against `web.auth`. Built once at start: every
    configuration mistake (no users for basic, an unreadable file, a malformed hash) is a ConfigError
    then, not a 500 later. The tokens file is re-read when it changes (token rotation without a restart)."""

    def __init__(self, settings: WebAuthSettings) -> None:
        self.kind = settings.kind
        self._basic = settings.kind in ("basic", "basic_or_bearer")
        self._bearer = settings.kind in ("bearer", "basic_or_bearer")
        self._hashes: dict[str, _Pbkdf2] = {}
        self._plain: dict[str, bytes] = {}
        for index, user in enumerate(settings.users):
            where = f"web.auth.users[{index}] ({user.username})"
            if (user.password_hash is None) == (user.password_file is None):
                raise ConfigError(f"{where}: give exactly one of password_hash and password_file")
            if user.password_hash is not None:
                self._hashes[user.username] = _Pbkdf2.parse(user.password_hash, where)
            else:
                assert user.password_file is not None
                self._plain[user.username] = _read_secret(user.password_file, where).encode("utf-8")
        self._tokens_file = settings.tokens_file
        self._tokens: list[bytes] = []
        self._tokens_stamp: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        # No users and no tokens is not an error (the node's DICOM side runs without the HTTP side):
        # every STOW-RS request is refused with 401, and auth_warnings says so at start.
        if self._bearer and self._tokens_file is not None:
            self._load_tokens()

    def challenge(self) -> str:
        """The WWW-Authenticate value of a 401 answer."""
        schemes = []
        if self._basic:
            schemes.append(f'Basic realm="{REALM}", charset="UTF-8"')
        if self._bearer:
            schemes.append(f'Bearer realm="{REALM}"')
        return ", ".join(schemes)

    def check(self, authorization: str | None) -> AuthResult:
        if self.kind == "none":
            return AuthResult(None)
        if not authorization:
            return AuthResult(None, "no Authorization header")
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and self._basic:
            return self._check_basic(credentials.strip())
        if scheme == "bearer" and self._bearer:
            return self._check_bearer(credentials.strip())
        return AuthResult(None, f"authorization scheme {scheme!r} is not accepted here")

    def _check_basic(self, credentials: str) -> AuthResult:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult(None, "malformed basic credentials")
        username, sep, password = decoded.partition(":")
        if not sep:
            return AuthResult(None, "malformed basic credentials")
        key = hmac.new(self._cache_key, decoded.encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return AuthResult(username)
        if username in self._hashes:
            good = self._hashes[username].matches(password)
        elif username in self._plain:
            good = hmac.compare_digest(password.encode("utf-8"), self._plain[username])
        else:
            # Same work for an unknown user as for a known one, so timing does not tell which exist.
            _DUMMY.matches(password)
            good = False
        if not good:
            return AuthResult(username, "wrong username or password")
        with self._lock:
            self._verified[key] = username
            while len(self._verified) > _VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return AuthResult(username)

    def _check_bearer(self, token: str) -> AuthResult:
        self._reload_tokens_if_changed()
        offered = token.encode("utf-8")
        found = 0
        for line, known in enumerate(self._tokens, start=1):
            # Every token is compared (no early exit), each in constant time.
            if hmac.compare_digest(offered, known):
                found = line
        if not found:
            return AuthResult(None, "unknown bearer token")
        return AuthResult(f"token:{found}")

    def _load_tokens(self) -> None:
        assert self._tokens_file is not None
        where = "web.auth.tokens_file"
        try:
            stat = self._tokens_file.stat()
            text = self._tokens_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read {self._tokens_file}: {exc}") from None
        self._tokens = [line.strip().encode("utf-8") for line in text.splitlines() if line.strip()]
        self._tokens_stamp = (stat.st_mtime, stat.st_size)
        if not self._tokens:
            logger.warning(
                "%s %s holds no tokens: every bearer request will be refused", where, self._tokens_file
            )

    def _reload_tokens_if_changed(self) -> None:
        if self._tokens_file is None:
            return
        try:
            stat = self._tokens_file.stat()
        except OSError:
            return  # keep the tokens we have; the file may be being replaced
        if (stat.st_mtime, stat.st_size) != self._tokens_stamp:
            with self._lock:
                try:
                    self._load_tokens()
                except ConfigError as exc:
                    logger.error("keeping the previous bearer tokens: %s", exc)


_DUMMY = _Pbkdf2(PBKDF2_ITERATIONS, b"\0" * 16, b"\0" * 32)


def auth_warnings(settings: WebSettings) -> list[str]:
    """Warnings to log when the HTTP server starts (the server calls this)."""
    warnings = []
    if settings.auth.kind == "none":
        warnings.append(
            "web.auth.kind is none: anyone who can reach "
            f"{settings.host}:{settings.port} may store DICOM instances over STOW-RS without authentication"
        )
    auth = settings.auth
    basic = auth.kind in ("basic", "basic_or_bearer") and auth.users
    bearer = auth.kind in ("bearer", "basic_or_bearer") and auth.tokens_file is not None
    if auth.kind != "none" and not basic and not bearer:
        warnings.append(
            f"web.auth.kind is {auth.kind} but no users or tokens_file are configured for it: "
            "every STOW-RS request will be refused with 401"
        )
    for user in settings.auth.users:
        if user.password_file is not None and _loose_mode(user.password_file):
            warnings.append(f"web.auth password_file {user.password_file} is readable by group or others")
    if settings.auth.tokens_file is not None and _loose_mode(settings.auth.tokens_file):
        warnings.append(f"web.auth.tokens_file {settings.auth.tokens_file} is readable by group or others")
    return warnings


def _loose_mode(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o077)
    except OSError:
        return False


def _read_secret(path: Path, where: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read password_file {path}: {exc}") from None
    if not value:
        raise ConfigError(f"{where}: password_file {path} is empty")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
