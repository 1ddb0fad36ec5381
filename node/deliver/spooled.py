"""Can a spooled file still be sent as stored? A cheap check of its head, before a sender puts it in a
request where one bad file would spoil the others (a STOW-RS body of several instances); and a full
parse, for the rare moment when a destination lost the association on an instance (parse_problem).

It reads 144 bytes: the preamble, "DICM" and the File Meta group length, and checks that a data set
follows the File Meta (a File Meta that does not start with its group length is left to pynetdicom,
which parses it). It does not parse the data set (the receive side validated it, and parsing on
the delivery path would cost what the as-stored sending saves); damage further in is for the peer to
refuse, which quarantines the instance too (node.deliver.base.is_instance_refusal).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID
from pydicom.valuerep import VR

from node.deliver.wire import HEAD_BYTES, PREAMBLE_BYTES, offset_from_head


def unreadable_reason(path: Path) -> str | None:
    """None when `path` looks like a sendable Part 10 file, else why not (naming the file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        return f"cannot read spool file {path}: {exc.strerror or exc}"
    if head[PREAMBLE_BYTES : PREAMBLE_BYTES + 4] != b"DICM":
        return f"spool file {path} is not a DICOM Part 10 file (no 'DICM' after the preamble)"
    offset = offset_from_head(head)
    if offset is None:
        return None  # File Meta without its group length first: pynetdicom parses it (and says why not)
    if offset >= size:
        return f"spool file {path} has no data set after its File Meta ({size} bytes, data set at {offset})"
    return None


_KNOWN_VRS = frozenset(v.value for v in VR)
# What pydicom raises for a data set it cannot read (lengths past the end, garbage tags or VRs, values
# that do not decode); a reading problem, not a bug of ours.
_PARSE_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    EOFError,
    OverflowError,
    NotImplementedError,
    AttributeError,
    struct.error,
    OSError,
)


def parse_problem(path: Path, sop_instance_uid: str) -> str | None:
    """None when pydicom reads the whole file into a data set that is still this instance (its SOP
    Instance UID, every top-level element with a known VR, uncompressed pixel data as long as its header
    says); else why not, naming the file. pydicom reads damaged bytes leniently (warnings, elements
    swallowed by a bogus length), hence the checks of what came out. Element values other than those
    are not decoded: real files carry quirks (a private element of the wrong length) that peers accept.

    Costs a full read of the file, so it is not on the sending path: DimseSender calls it only after
    the destination lost an association on that instance."""
    try:
        ds = dcmread(path)
        found = str(ds.get("SOPInstanceUID", "") or "")
        if found != sop_instance_uid:
            return f"spool file {path} cannot be parsed: its SOP Instance UID reads {found or 'nothing'!r}"
        for tag in ds.keys():
            vr = ds.get_item(tag).VR  # the raw element: its value stays undecoded
            if vr is not None and vr not in _KNOWN_VRS:
                return f"spool file {path} cannot be parsed: element {tag} has VR {vr!r}"
        short = _pixel_data_short(ds)
    except _PARSE_ERRORS as exc:
        return f"spool file {path} cannot be parsed: {type(exc).__name__}: {exc}"
    if short:
        return f"spool file {path} cannot be parsed: {short}"
    return None


def _pixel_data_short(ds: Dataset) -> str | None:
    """Why uncompressed Pixel Data is shorter than Rows x Columns x Samples x Frames x BitsAllocated."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" not in ds or syntax is None or UID(syntax).is_compressed:
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    expected = int(ds.get("Rows", 0)) * int(ds.get("Columns", 0)) * int(ds.get("SamplesPerPixel", 1)) * frames
    expected = (expected * bits + 7) // 8
    have = len(ds.PixelData)
    return f"Pixel Data has {have} bytes, its header asks for {expected}" if have < expected else None
