"""UID validation. Only validated UIDs ever become parts of a file path."""

from __future__ import annotations

import hashlib
import re

from node.errors import InvalidUIDError

# Digits and dots, no empty component, at most 64 characters. Leading zeros inside a component are
# not conformant but occur in real traffic; they are harmless in a path, so they are accepted.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def require_uid(field: str, value: object) -> str:
    """Return the UID with padding removed, or raise InvalidUIDError naming the field."""
    if isinstance(value, str):
        value = value.strip().rstrip("\x00")
    if not is_valid_uid(value):
        raise InvalidUIDError(field, value)
    assert isinstance(value, str)
    return value


def hashed_uid(*parts: str) -> str:
    """A deterministic UID under the 2.25 root (PS3.5 B.2): the decimal of 128 bits of the SHA-256 of
    `parts`, so that the same inputs always map to the same UID (at most 44 characters)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"
