"""Turning a spooled file into something a peer accepted, when it did not accept the stored syntax.

Only the decompressing direction exists: a compressed instance (JPEG, JPEG-LS, JPEG 2000, RLE ...) is
decoded with pydicom's pixel backend (pylibjpeg plugins) and sent as Explicit VR Little Endian
(pynetdicom re-encodes it as Implicit VR Little Endian when that is all the peer accepted). An
uncompressed instance whose VR encoding differs from the accepted one (stored Implicit, peer accepts
only Explicit, or the reverse) is read without touching the pixels and re-encoded by pynetdicom.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

logger = logging.getLogger(__name__)

UNCOMPRESSED_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class TranscodeError(Exception):
    """A stored instance cannot be turned into any transfer syntax the peer accepted."""


def can_transcode(stored: str, target: str) -> bool:
    """Whether `stored` can be sent in `target` by this module (target is uncompressed little endian)."""
    stored_uid, target_uid = UID(stored), UID(target)
    if target_uid not in UNCOMPRESSED_LE:
        return False
    # Explicit VR Big Endian (retired) would need the pixel bytes swapped: not supported.
    return stored_uid.is_little_endian or stored_uid.is_compressed


def load_for_target(path: Path, stored: str) -> Dataset:
    """Read `path` and return a dataset encoded in an uncompressed little-endian syntax.

    The SOP Instance UID is kept (the copy is the same instance, decompressed). Raises TranscodeError
    naming the file when it cannot be read or its pixel data cannot be decoded.
    """
    try:
        ds = dcmread(path)
    except (OSError, ValueError, InvalidDicomError) as exc:
        raise TranscodeError(f"cannot read {path.name}: {exc}") from exc
    stored_uid = UID(stored)
    if stored_uid.is_compressed:
        try:
            ds.decompress(generate_instance_uid=False)
        # pydicom raises these when no plugin can decode the syntax or the data is corrupt.
        except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
            raise TranscodeError(f"cannot decompress {path.name} ({stored_uid.name}): {exc}") from exc
        logger.debug("decompressed %s from %s", ds.SOPInstanceUID, stored_uid.name)
    return ds
