"""Can a spooled file still be sent as stored? A cheap check of its head, before a sender puts it in a
request where one bad file would spoil the others (a STOW-RS body of several instances).

It reads 144 bytes: the preamble, "DICM" and the File Meta group length, and checks that a data set
follows the File Meta (a File Meta that does not start with its group length is left to pynetdicom,
which parses it). It does not parse the data set (the receive side validated it, and parsing on
the delivery path would cost what the as-stored sending saves); damage further in is for the peer to
refuse, which quarantines the instance too (node.deliver.base.is_instance_refusal).
"""

from __future__ import annotations

import os
from pathlib import Path

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
