"""One root exception; each subclass names what is wrong and where."""

from __future__ import annotations


class NodeError(Exception):
    """Root of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration file is missing, unreadable or invalid."""


class InvalidUIDError(NodeError):
    """A UID that is not a syntactically valid DICOM UID (and so never becomes a path)."""

    def __init__(self, field: str, value: object) -> None:
        super().__init__(f"invalid {field}: {_shown(value)}")
        self.field = field
        self.value = value


_UID_LIKE = frozenset("0123456789. \x00")


def _shown(value: object) -> str:
    """The bad value as a message may show it: quoted only when it is short and made of UID
    characters. A malformed data set's "UID" can run on over the elements after it (Patient Name,
    Patient ID), and this message goes to the log, the audit row and the ErrorComment."""
    if value is None:
        return "missing"
    if isinstance(value, str) and len(value) <= 70 and set(value) <= _UID_LIKE:
        return repr(value)
    size = f", {len(value)} characters" if isinstance(value, str) else ""
    return f"not a UID ({type(value).__name__}{size}; value not shown)"


class SpoolError(NodeError):
    """The spool could not store or read an instance."""


class RulesError(NodeError):
    """A rules file is invalid; the message names the file, the rule and the field."""

    def __init__(
        self,
        file: str,
        message: str,
        rule: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        where = file
        if line is not None:
            where += f":{line}"
        if rule is not None:
            where += f": rule {rule!r}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {message}")
        self.file = file
        self.rule = rule
        self.field = field
        self.line = line


class DeliveryError(NodeError):
    """A forward to a destination failed; the message says which instance and which status."""


class NotFoundError(NodeError):
    """A series, delivery or other object named on the command line does not exist."""


class DatabaseError(NodeError):
    """The database is absent, unreachable, or at a schema this version of the node cannot use.

    The message names the database URL (password hidden)."""


class ListenError(NodeError):
    """The DICOM port (section "receive") or the HTTP port ("web") cannot be opened (in use, not
    permitted, no such address)."""

    def __init__(self, host: str, port: int, reason: str, section: str = "receive") -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason
        self.section = section
