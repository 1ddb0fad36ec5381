"""multipart/related request bodies (PS3.18 10.5, RFC 2387), streamed part by part into files.

Each part goes to its own temporary file in the spool's staging folder as its bytes arrive, so the
memory a request needs is bounded by the chunk size, whatever the body's size. The parsing itself is
python-multipart's (a maintained streaming parser); this module adds the media-type checks and the
files, and notices a body that ends before its closing boundary.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

DICOM_MEDIA_TYPE = "application/dicom"
_MAX_PREAMBLE = 64 * 1024
# Parts of one request: each is a file in the staging folder, so a body of tiny parts must not make
# millions of them. A whole CT study rarely has more than a few thousand instances.
MAX_PARTS = 50_000


class BadRequestBody(ValueError):
    """The request cannot be read as the multipart body it claims to be; `status` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class MediaType:
    """A Content-Type value: the media type (lower case) and its parameters (names lower case)."""

    type: str
    params: dict[str, str]

    @classmethod
    def parse(cls, value: str) -> MediaType:
        """Parameters may be quoted or not: `type=application/dicom` is common even though RFC 2045
        wants `/` quoted, so a bare value runs to the next `;`."""
        pieces = _split_outside_quotes(value)
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            name, sep, raw = piece.partition("=")
            if not sep:
                continue
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].replace('\\"', '"')
            params[name.strip().lower()] = raw
        return cls(pieces[0].strip().lower(), params)


def _split_outside_quotes(value: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def dicom_boundary(content_type: str | None) -> bytes:
    """The boundary of a `multipart/related; type="application/dicom"` body, or BadRequestBody:
    415 for another media type (or another type= parameter), 400 for a missing boundary."""
    if not content_type:
        raise BadRequestBody(415, 'no Content-Type: expected multipart/related; type="application/dicom"')
    media = MediaType.parse(content_type)
    if media.type != "multipart/related":
        raise BadRequestBody(415, f"Content-Type {media.type} is not multipart/related")
    part_type = media.params.get("type", "").strip().lower()
    if part_type != DICOM_MEDIA_TYPE:
        shown = part_type or "missing"
        raise BadRequestBody(
            415, f'multipart/related type={shown}: only type="application/dicom" is accepted'
        )
    boundary = media.params.get("boundary", "")
    if not boundary:
        raise BadRequestBody(400, "multipart/related without a boundary parameter")
    if len(boundary) > 70:  # RFC 2046 5.1.1
        raise BadRequestBody(400, "multipart boundary longer than 70 characters")
    return boundary.encode("latin-1", errors="replace")


@dataclass
class Part:
    """One body part on disk: its Content-Type (application/dicom if the part had none) and size."""

    path: Path
    content_type: str
    size: int = 0


@dataclass
class _Headers:
    name: bytearray = dataclasses.field(default_factory=bytearray)
    value: bytearray = dataclasses.field(default_factory=bytearray)
    found: dict[str, str] = dataclasses.field(default_factory=dict)


class PartsWriter:
    """Feed body chunks in order; `finish()` returns the parts, each in a file under `folder`.
    The caller removes the files (`discard()`) once it is done with them, also after an error."""

    def __init__(self, boundary: bytes, folder: Path) -> None:
        self._folder = folder
        self.parts: list[Part] = []
        self._file: IO[bytes] | None = None
        self._headers = _Headers()
        self._ended = False
        self._first_boundary = b"--" + boundary
        self._preamble: bytearray | None = bytearray()
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
            max_header_count=16,
        )

    def feed(self, chunk: bytes) -> None:
        if self._preamble is not None:
            # RFC 2046 allows text before the first boundary; python-multipart does not: skip it here.
            self._preamble += chunk
            start = self._preamble.find(self._first_boundary)
            if start < 0:
                if len(self._preamble) > _MAX_PREAMBLE:
                    raise BadRequestBody(400, "malformed multipart body: no boundary in the first bytes")
                return
            chunk, self._preamble = bytes(self._preamble[start:]), None
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise BadRequestBody(400, f"malformed multipart body: {exc}") from None

    def finish(self) -> list[Part]:
        if self._preamble is not None:
            raise BadRequestBody(400, "malformed multipart body: no boundary found")
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise BadRequestBody(400, f"malformed multipart body: {exc}") from None
        if not self._ended:
            done = len(self.parts) - (1 if self._file is not None else 0)
            raise BadRequestBody(
                400, f"truncated body: the closing boundary never came (after {done} complete parts)"
            )
        if not self.parts:
            raise BadRequestBody(400, "multipart body without any part")
        return self.parts

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for part in self.parts:
            part.path.unlink(missing_ok=True)

    def _part_begin(self) -> None:
        self._headers = _Headers()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._headers.name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers.value += data[start:end]

    def _header_end(self) -> None:
        name = self._headers.name.decode("latin-1").strip().lower()
        self._headers.found[name] = self._headers.value.decode("latin-1").strip()
        self._headers.name.clear()
        self._headers.value.clear()

    def _headers_finished(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise BadRequestBody(413, f"more than {MAX_PARTS} parts in one request: send them in several")
        fd, name = tempfile.mkstemp(dir=self._folder, prefix="stow-", suffix=".part")
        self._file = os.fdopen(fd, "wb")
        content_type = self._headers.found.get("content-type", DICOM_MEDIA_TYPE)
        self.parts.append(Part(Path(name), content_type))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:  # python-multipart calls this only after the headers; be safe
            raise BadRequestBody(400, "malformed multipart body: data before the part headers")
        self._file.write(data[start:end])
        self.parts[-1].size += end - start

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _end(self) -> None:
        self._ended = True
