"""Mutations of a STOW-RS request (PS3.18 10.5): the multipart/related body, its part headers, the
request's Content-Type and Content-Length, and the DICOM bytes inside a part."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tests.fuzz.dataset_mutators import DATASET_MUTATORS, Encoded

BOUNDARY = "fuzz-boundary-4c1e"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass(frozen=True)
class StowRequest:
    """What the driver sends: the Content-Type header (None: none), the body, and the Content-Length
    to declare (None: the body's)."""

    content_type: str | None
    body: bytes
    declared_length: int | None = None


@dataclass(frozen=True)
class Part10:
    """One valid part: the Part 10 file, and where its data set starts (after preamble and meta)."""

    data: bytes
    dataset_at: int

    def with_dataset(self, dataset: bytes) -> bytes:
        return self.data[: self.dataset_at] + dataset


def body(
    parts: list[bytes],
    boundary: str = BOUNDARY,
    header: bytes = b"Content-Type: application/dicom",
    close: bool = True,
) -> bytes:
    out = b"".join(b"--" + boundary.encode() + b"\r\n" + header + b"\r\n\r\n" + p + b"\r\n" for p in parts)
    return out + (b"--" + boundary.encode() + b"--\r\n" if close else b"")


def part_dicom_mutated(rng: random.Random, parts: list[Part10]) -> StowRequest:
    """The data set inside one part mutated by a C-STORE data set mutator."""
    name = rng.choice(sorted(DATASET_MUTATORS))
    i = rng.randrange(len(parts))
    mutated = DATASET_MUTATORS[name](rng, Encoded(parts[i].data[parts[i].dataset_at :], explicit=True))
    files = [p.data for p in parts]
    files[i] = parts[i].with_dataset(mutated)
    return StowRequest(CONTENT_TYPE, body(files))


def part_truncated(rng: random.Random, parts: list[Part10]) -> StowRequest:
    """One part cut short, inside its data set or inside its file meta, with the multipart intact."""
    files = [p.data for p in parts]
    i = rng.randrange(len(files))
    files[i] = files[i][: rng.randrange(len(files[i]))]
    return StowRequest(CONTENT_TYPE, body(files))


def body_truncated(rng: random.Random, parts: list[Part10]) -> StowRequest:
    """The body cut at a random point (no final boundary), declared with the cut length."""
    whole = body([p.data for p in parts])
    return StowRequest(CONTENT_TYPE, whole[: rng.randrange(len(whole))])


def boundaries(rng: random.Random, parts: list[Part10]) -> StowRequest:
    """Boundaries wrong: none closing, a different one in the body, missing CRLFs, the boundary
    string inside the DICOM bytes, an empty body."""
    files = [p.data for p in parts]
    choice = rng.randrange(6)
    if choice == 0:
        return StowRequest(CONTENT_TYPE, body(files, close=False))
    if choice == 1:
        return StowRequest(CONTENT_TYPE, body(files, boundary="another-boundary"))
    if choice == 2:
        return StowRequest(CONTENT_TYPE, body(files).replace(b"\r\n", b"\n"))
    if choice == 3:
        files[0] = files[0][:200] + b"\r\n--" + BOUNDARY.encode() + b"\r\n" + files[0][200:]
        return StowRequest(CONTENT_TYPE, body(files))
    if choice == 4:
        return StowRequest(CONTENT_TYPE, b"")
    return StowRequest(CONTENT_TYPE, b"--" + BOUNDARY.encode() + b"--\r\n")


def part_headers(rng: random.Random, parts: list[Part10]) -> StowRequest:
    """Part headers wrong: another media type, none, garbage, a header line of 64 KiB, no blank line."""
    header = rng.choice(
        [
            b"Content-Type: application/dicom+json",
            b"Content-Type: text/plain",
            b"",
            b"\xff\xfe\x00garbage",
            b"Content-Type: application/dicom\r\nX-Long: " + b"a" * 65536,
            b"Content-Type application/dicom",
        ]
    )
    return StowRequest(CONTENT_TYPE, body([p.data for p in parts], header=header))


def content_type(rng: random.Random, parts: list[Part10]) -> StowRequest:
    """The request's Content-Type wrong: none, no boundary, another type, a boundary of 200 characters,
    quoted oddly."""
    value = rng.choice(
        [
            None,
            'multipart/related; type="application/dicom"',
            "application/dicom",
            f"multipart/form-data; boundary={BOUNDARY}",
            'multipart/related; type="application/dicom"; boundary=' + "b" * 200,
            f'multipart/related; type="application/dicom; boundary="{BOUNDARY}',
            f"multipart/related; type=application/octet-stream; boundary={BOUNDARY}",
        ]
    )
    return StowRequest(value, body([p.data for p in parts]))


def content_length(rng: random.Random, parts: list[Part10]) -> StowRequest:
    """Content-Length that lies: longer than the body (the driver then half-closes), or shorter."""
    whole = body([p.data for p in parts])
    return StowRequest(
        CONTENT_TYPE, whole, rng.choice([len(whole) + 1, len(whole) + 100000, len(whole) // 2])
    )


StowMutator = Callable[[random.Random, list[Part10]], StowRequest]

STOW_MUTATORS: dict[str, StowMutator] = {
    "part_dicom_mutated": part_dicom_mutated,
    "part_truncated": part_truncated,
    "body_truncated": body_truncated,
    "boundaries": boundaries,
    "part_headers": part_headers,
    "content_type": content_type,
    "content_length": content_length,
}
