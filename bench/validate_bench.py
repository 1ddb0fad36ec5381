"""What the ingest validation (node/receive/validate.py) costs per instance, on real CT.

For each series: every file's bytes through `check_instance` (the walk over every element and the pixel
data checks), best of --repeat passes, in microseconds per instance; beside it, for scale, pynetdicom's
`decode` of the same data set as the receive path does it (lazy: the elements are not converted), and the
number of top-level elements. Then the same for a few of --compress-series' files compressed (JPEG-LS
lossless, RLE lossless: encapsulated fragments).

    python bench/validate_bench.py [--series qa_ge_head_tilt lidc0001_full] [--repeat 5] [--files 40]
                                   [--compress-series qa_ge_head_tilt]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom import dcmread  # noqa: E402
from pydicom.uid import UID, JPEGLSLossless, RLELossless  # noqa: E402
from pynetdicom.dsutils import decode  # noqa: E402

from node.receive.validate import check_instance  # noqa: E402
from tests.peers import DICOM_SERIES, ct_files  # noqa: E402

Item = tuple[bytes, str, int]  # Part 10 bytes, transfer syntax, offset of the data set


def best_per_item(items: list[Item], work: Callable[[Item], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            work(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best * 1e6


def load(paths: list[Path], compress: str | None = None) -> list[Item]:
    """The files' bytes as they are, or re-encoded compressed."""
    items = []
    for path in paths:
        ds = dcmread(path)
        data = path.read_bytes()
        if compress is not None:
            ds.compress(compress, generate_instance_uid=False)
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
        meta_length = int(ds.file_meta.FileMetaInformationGroupLength)
        items.append((data, str(ds.file_meta.TransferSyntaxUID), 132 + 12 + meta_length))
    return items


def decode_header(item: Item) -> object:
    data, syntax, start = item
    uid = UID(syntax)
    return decode(BytesIO(data[start:]), uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)


def elements(item: Item) -> int:
    """Top-level elements (not converted: one real series has a private FD holding text)."""
    return len(dcmread(BytesIO(item[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", nargs="+", default=list(DICOM_SERIES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--files", type=int, default=40, help="files per series (the first ones)")
    # itkelastix_chest has a private FD holding text, which pydicom cannot re-encode
    parser.add_argument("--compress-series", default="qa_ge_head_tilt")
    args = parser.parse_args()
    rows: list[tuple[str, str, int, int, float, float]] = []
    for name in args.series:
        items = load(ct_files(name)[: args.files])
        rows.append(row(name, items, args.repeat))
    first = ct_files(args.compress_series)[: min(args.files, 5)]
    for syntax in (JPEGLSLossless, RLELossless):
        rows.append(row(f"{args.compress_series} ({syntax.name})", load(first, syntax), args.repeat))
    header = ("series", "syntax", "files", "elements", "validate us", "decode us")
    print("{:56s} {:24s} {:>5s} {:>8s} {:>11s} {:>9s}".format(*header))
    for name, syntax, files, count, validate, decoded in rows:
        print(f"{name:56s} {syntax:24s} {files:5d} {count:8d} {validate:11.0f} {decoded:9.0f}")


def row(name: str, items: list[Item], repeat: int) -> tuple[str, str, int, int, float, float]:
    validate = best_per_item(items, lambda item: check_instance(item[0], item[1]), repeat)
    decoded = best_per_item(items, decode_header, repeat)
    return name, items[0][1], len(items), elements(items[0]), validate, decoded


if __name__ == "__main__":
    main()
