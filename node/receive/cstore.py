"""One C-STORE request, whichever receive path read it: pynetdicom's (node/receive/scp.py
`handle_store`) or the node's own (node/receive/wire.py). Both hand over the same things, the request's
identifiers and the encoded data set as sent, and get back the status to answer.

The Part 10 file is the data set as sent behind a File Meta Information group encoded here (what
pynetdicom's `event.encoded_dataset()` writes); the header is decoded lazily by pynetdicom's `decode`,
as `event.dataset` does, so both paths see the same Dataset. The Dataset gets no `file_meta`: Ingest
does not read it, and building it cost 0.3 ms per instance.
"""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from node.dimse_encoding import text_bytes, uid_bytes
from node.receive.incoming import Part10
from node.receive.ingest import Ingest, Received, RejectedInstance

# (series UID, time of the last instance, expected count reached): re-arms the completion timer.
OnStored = Callable[[str, dt.datetime, bool], None]

_PREAMBLE = b"\x00" * 128 + b"DICM"
# ErrorComment is LO: at most 64 characters.
ERROR_COMMENT_MAX = 64


@dataclass(frozen=True)
class StoreRequest:
    """What a C-STORE-RQ and its association say about the instance that follows."""

    calling_ae: str
    called_ae: str | None
    peer: str
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class StoreAnswer:
    status: int
    comment: str | None = None


SUCCESS = StoreAnswer(0x0000)


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """A group 0002 element, Explicit VR Little Endian (OB has a 4-byte length, the others 2)."""
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def part10_prefix(request: StoreRequest) -> bytes:
    """Preamble, 'DICM' and the File Meta Information for the request's data set (PS3.10 7.1)."""
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", uid_bytes(request.sop_class_uid)),
            _meta_element(0x0003, b"UI", uid_bytes(request.sop_instance_uid)),
            _meta_element(0x0010, b"UI", uid_bytes(request.transfer_syntax_uid)),
            _meta_element(0x0012, b"UI", uid_bytes(PYNETDICOM_IMPLEMENTATION_UID)),
            _meta_element(0x0013, b"SH", text_bytes(PYNETDICOM_IMPLEMENTATION_VERSION)),
        )
    )
    return _PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


class MemoryReader:
    """The file-like object pydicom's read_dataset needs, over a memoryview: reads copy only what
    is read (the header), never the whole instance (a BytesIO would copy it)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(self._position + size, len(self._view))
        chunk = bytes(self._view[self._position : end])
        self._position = end
        return chunk

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: len(self._view)}[whence]
        self._position = max(0, min(base + offset, len(self._view)))
        return self._position


# A header longer than this (after inflating a Deflated data set) is not decoded here; the validator
# then names the problem. Bounds what a deflate bomb can cost before validation.
_HEADER_INFLATE_LIMIT = 64 * 2**20


_PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # Float, Double Float, Pixel Data


def _at_pixel_data(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) in _PIXEL_DATA_TAGS


def decode_header(data_set: memoryview, transfer_syntax_uid: str) -> Dataset:
    """The data set's elements up to its pixel data, decoded lazily by pydicom (as pynetdicom's
    `event.dataset` does, without the pixel data, which Ingest does not read)."""
    syntax = UID(transfer_syntax_uid)
    view = data_set
    if syntax.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        view = memoryview(inflater.decompress(data_set, _HEADER_INFLATE_LIMIT))
    return read_dataset(
        MemoryReader(view),  # type: ignore[arg-type]
        syntax.is_implicit_VR,
        syntax.is_little_endian,
        stop_when=_at_pixel_data,
    )


def store(
    ingest: Ingest, on_stored: OnStored, request: StoreRequest, data_set: bytes | bytearray
) -> StoreAnswer:
    """`store_part10` for a data set received on its own (pynetdicom's path)."""
    prefix = part10_prefix(request)
    return store_part10(ingest, on_stored, request, Part10(bytearray(prefix) + data_set, len(prefix)))


def store_part10(ingest: Ingest, on_stored: OnStored, request: StoreRequest, part10: Part10) -> StoreAnswer:
    """Decode the header, store durably (Ingest.accept) and say what to answer; then release `part10`
    (the whole file: part10_prefix(request), then the data set). Never raises for bad input: a data
    set that cannot be decoded is 0xC210 (or the validator's precise reason), a refused one its
    RejectedInstance status; both are audited by Ingest."""
    try:
        return _store_part10(ingest, on_stored, request, part10)
    finally:
        part10.release(ingest.discard_staged)


def _store_part10(ingest: Ingest, on_stored: OnStored, request: StoreRequest, part10: Part10) -> StoreAnswer:
    data = part10.data
    try:
        dataset = decode_header(memoryview(data)[part10.data_set_at :], request.transfer_syntax_uid)
    except Exception as exc:  # pydicom raises assorted errors on garbage: answer "cannot understand"
        undecodable = Received(data, Dataset(), request.transfer_syntax_uid, request.calling_ae, request.peer)
        rejected = ingest.refuse_undecodable(undecodable, exc)
        return StoreAnswer(rejected.status, rejected.reason)
    item = Received(
        data=data,
        staged=part10.staged,
        dataset=dataset,
        transfer_syntax_uid=request.transfer_syntax_uid,
        calling_ae=request.calling_ae,
        peer=request.peer,
        called_ae=request.called_ae,
        command_sop_class_uid=request.sop_class_uid,
        command_sop_instance_uid=request.sop_instance_uid,
    )
    try:
        accepted = ingest.accept(item)
    except RejectedInstance as exc:
        return StoreAnswer(exc.status, exc.reason)
    on_stored(accepted.series_uid, accepted.last_received_at, accepted.expected_count_reached)
    return SUCCESS


def refuse_dropped(
    ingest: Ingest, request: StoreRequest, rejected: RejectedInstance, size: int
) -> StoreAnswer:
    """The answer to a data set of `size` bytes that was dropped while it arrived (node.receive.incoming:
    past max_instance_bytes, the free-disk floor), audited."""
    ingest.audit_rejection(Received(b"", Dataset(), "", request.calling_ae, request.peer), rejected, size)
    return StoreAnswer(rejected.status, rejected.reason)
