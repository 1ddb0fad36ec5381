"""UID validation. Only validated UIDs ever become parts of a file path."""

from __future__ import annotations

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
