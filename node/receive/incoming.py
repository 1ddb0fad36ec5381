"""The Part 10 file of one C-STORE while its fragments arrive (the receive fast path, node/receive/wire.py).

Small instances (nearly every CT slice) are collected in one bytearray, the File Meta first: the spool
writes it on its I/O threads while Ingest does the database work. An instance that grows past
receive.spill_to_disk_bytes is written to a temporary file in the spool from then on, fragment by
fragment, hashed as it is written, so that the memory one association holds stays bounded whatever the
instance's size (issue 11: a 600 MiB instance once peaked the node at 3.2 times its size). The
validator and the header decoder then read it through a read-only memory map, which touches only the
pages they read (element headers, not pixel data), and Ingest renames the file into place.

Two refusals are decided while the data arrives, and the rest of the data set is then only counted:
past receive.max_instance_bytes (0xA700), and a spool disk falling below receive.min_free_disk_bytes
while a spilled instance is written (0xA700, checked every SPACE_CHECK_BYTES).
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable
from dataclasses import dataclass

from node.errors import SpoolError
from node.receive.ingest import STATUS_OUT_OF_RESOURCES, RejectedInstance, too_large
from node.receive.spool import StagedFile, StagingWriter

logger = logging.getLogger(__name__)

# How often (bytes written) a spilled instance checks the spool disk's free space.
SPACE_CHECK_BYTES = 64 * 2**20

# Says why an instance of this many more bytes cannot be written now (the free-disk floor), or None.
SpaceCheck = Callable[[int], RejectedInstance | None]
WriterFactory = Callable[[], StagingWriter]


@dataclass
class Part10:
    """A whole received file: `data` (in memory, or a read-only map of the staged file), the data
    set's offset in it, and `staged` when it is already durable under a temporary name."""

    data: bytearray | mmap.mmap
    data_set_at: int
    staged: StagedFile | None = None

    def release(self, discard: Callable[[StagedFile], None]) -> None:
        """Unmap, and remove the staged file unless Ingest placed it."""
        if isinstance(self.data, mmap.mmap):
            try:
                self.data.close()
            except BufferError:  # a view is still alive somewhere (a traceback): the GC unmaps it
                logger.debug("memory map of a received instance still in use; left to the GC")
        if self.staged is not None:
            discard(self.staged)


def mapped(staged: StagedFile, data_set_at: int) -> Part10:
    """A staged file as a Part10 read through a read-only memory map (pages are read as touched)."""
    with open(staged.path, "rb") as file:
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    return Part10(data, data_set_at, staged)


class IncomingFile:
    """Collects one data set's fragments behind `prefix` (the File Meta), in memory or spilled."""

    def __init__(
        self,
        prefix: bytes,
        *,
        max_bytes: int,
        spill_bytes: int,
        writer: WriterFactory,
        space: SpaceCheck,
    ) -> None:
        self._prefix_size = len(prefix)
        self._memory: bytearray | None = bytearray(prefix)
        self._max_bytes = max_bytes
        self._spill_bytes = spill_bytes
        self._new_writer = writer
        self._space = space
        self._writer: StagingWriter | None = None
        self._next_space_check = 0
        self.size = 0  # data set bytes received (counted on after a refusal)
        self.refusal: RejectedInstance | None = None

    def append(self, fragment: memoryview) -> None:
        self.size += len(fragment)
        if self.refusal is not None:
            return
        if self.size > self._max_bytes:
            self._refuse(too_large(self.size, self._max_bytes))
        elif self._writer is not None:
            self._write(fragment)
        else:
            assert self._memory is not None
            self._memory += fragment
            if self.size > self._spill_bytes:
                self._spill()

    def _spill(self) -> None:
        try:
            self._writer = self._new_writer()
        except SpoolError as exc:
            self._refuse(RejectedInstance(STATUS_OUT_OF_RESOURCES, str(exc)))
            return
        memory, self._memory = self._memory, None
        assert memory is not None
        self._write(memoryview(memory))

    def _write(self, data: memoryview) -> None:
        assert self._writer is not None
        if self._writer.size >= self._next_space_check:
            self._next_space_check = self._writer.size + SPACE_CHECK_BYTES
            if (refusal := self._space(SPACE_CHECK_BYTES)) is not None:
                self._refuse(refusal)
                return
        try:
            self._writer.write(data)
        except SpoolError as exc:
            self._refuse(RejectedInstance(STATUS_OUT_OF_RESOURCES, str(exc)))

    def _refuse(self, refusal: RejectedInstance) -> None:
        """Drop what came (memory and file); the rest is only counted."""
        self.refusal = refusal
        self._memory = None
        if self._writer is not None:
            self._writer.abandon()
            self._writer = None

    def finish(self) -> Part10:
        """The whole file; only when there is no refusal."""
        assert self.refusal is None
        if self._writer is None:
            assert self._memory is not None
            return Part10(self._memory, self._prefix_size)
        writer, self._writer = self._writer, None
        try:
            staged = writer.finish()
        except SpoolError:  # the caller answers 0xA700
            writer.abandon()
            raise
        return mapped(staged, self._prefix_size)

    def abandon(self) -> None:
        """The data set will not be finished (the association ended): remove what was written."""
        self._memory = None
        if self._writer is not None:
            self._writer.abandon()
            self._writer = None
