"""Memory and time of volume assembly: a real tilted head CT and a synthetic 1000-slice 512x512 series.

Each case runs in fresh subprocesses, so that their peaks are separate: one run for the wall time and the
peak resident set size (ru_maxrss), one under tracemalloc for the peak of traced allocations (numpy
registers its array buffers with tracemalloc, so this is the peak of numpy + Python objects). The
full-resolution float32 size of the series is printed beside them: that is what assembling without
slice-by-slice downsampling would need for the voxels alone.

A third case times a JPEG 2000 series (lidc0001_full re-encoded) decoded in process and on a process pool.

    python bench/assemble_memory.py [--slices 1000] [--size 512] [--max-in-plane 256] [--pool N]
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 1024 * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(folder: Path, max_in_plane: int, trace: bool, processes: int) -> int:
    """Assemble the series in `folder` once and print one JSON line of measurements."""
    import pydicom  # noqa: F401  (imported before the baseline, as the node has it loaded)

    from node.volume import Volume, assemble_series

    files = sorted(p for p in folder.iterdir() if p.is_file())
    pool = None
    if processes:
        # a warm pool, as a long-running node would keep one: workers started, node.volume imported
        pool = ProcessPoolExecutor(
            processes,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=importlib.import_module,
            initargs=("node.volume",),
        )
        list(pool.map(abs, range(processes)))
    baseline = current_rss()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    result = assemble_series(files, max_in_plane=max_in_plane, executor=pool)
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1] if trace else 0
    if pool is not None:
        pool.shutdown()
    assert isinstance(result, Volume), result
    print(
        json.dumps(
            {
                "seconds": seconds,
                "timing": result.report["timing_s"],
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
                "baseline_rss": baseline,
                "traced_peak": traced_peak,
                "source_shape": result.report["source_shape"],
                "shape": result.report["shape"],
                "voxels_bytes": result.voxels.nbytes,
            }
        )
    )
    return 0


@dataclass
class Run:
    seconds: float
    timing: dict[str, float]
    peak_rss: int
    baseline_rss: int
    traced_peak: int
    source_shape: list[int]
    shape: list[int]
    voxels_bytes: int


def run_child(folder: Path, max_in_plane: int, trace: bool, processes: int = 0) -> Run:
    command = [sys.executable, __file__, "--child", str(folder), "--max-in-plane", str(max_in_plane)]
    command += ["--processes", str(processes)]
    if trace:
        command.append("--trace")
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return Run(**json.loads(out.stdout.strip().splitlines()[-1]))


def write_synthetic(folder: Path, slices: int, size: int) -> None:
    """`slices` CT files of size x size int16 sharing one PixelData (a water disk in air), 1 mm apart."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    yy, xx = np.mgrid[:size, :size]
    disk = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    pixels = np.where(disk, 1024 + 40, 24).astype("<i2")  # 40 HU in -1000 HU air, intercept -1024
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.tobytes()  # the same bytes in every file
    for i in range(slices):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-0.35 * size, -0.35 * size, float(i)]
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)


def measure(label: str, folder: Path, max_in_plane: int) -> None:
    timed = run_child(folder, max_in_plane, trace=False)
    traced = run_child(folder, max_in_plane, trace=True)
    n, rows, cols = timed.source_shape
    full = n * rows * cols * 4
    growth = max(1, timed.peak_rss - timed.baseline_rss)
    shape = "x".join(str(v) for v in timed.shape)
    print(f"\n{label}: {n} x {rows}x{cols} -> {shape} float32 ({timed.voxels_bytes / MIB:.1f} MiB)")
    print(f"  time                      {timed.seconds:7.2f} s   {timed.timing}")
    print(
        f"  peak RSS (ru_maxrss)      {timed.peak_rss / MIB:7.1f} MiB"
        f" (after imports {timed.baseline_rss / MIB:.1f} MiB)"
    )
    print(f"  tracemalloc peak          {traced.traced_peak / MIB:7.1f} MiB")
    print(f"  full-resolution float32   {full / MIB:7.1f} MiB")
    print(
        f"  full-res / tracemalloc peak = {full / traced.traced_peak:.1f}x;"
        f"  full-res / RSS growth = {full / growth:.1f}x"
    )


def write_jpeg2000(folder: Path, sources: list[Path]) -> None:
    from pydicom import dcmread
    from pydicom.uid import JPEG2000Lossless

    for i, path in enumerate(sources):
        ds = dcmread(path)
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        ds.save_as(folder / f"{i:05d}.dcm")


def measure_pool(label: str, folder: Path, max_in_plane: int, processes: int) -> None:
    """Compressed data: decoding in this process against a process pool (the decoders hold the GIL)."""
    alone = run_child(folder, max_in_plane, trace=False)
    pooled = run_child(folder, max_in_plane, trace=False, processes=processes)
    print(f"\n{label}: {alone.source_shape[0]} slices")
    print(f"  in process                {alone.seconds:7.2f} s   {alone.timing}")
    print(f"  process pool of {processes:<2d}       {pooled.seconds:7.2f} s   {pooled.timing}")
    speed_up = alone.seconds / pooled.seconds
    print(f"  speed-up {speed_up:.2f}x; peak RSS of the parent {pooled.peak_rss / MIB:.1f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--max-in-plane", type=int, default=256)
    parser.add_argument(
        "--pool", type=int, default=os.cpu_count() or 1, help="processes for the JPEG 2000 case (0: skip it)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.max_in_plane, args.trace, args.processes)

    import pydicom

    print(
        f"volume assembly, max_in_plane={args.max_in_plane}; python {platform.python_version()}, "
        f"numpy {np.__version__}, pydicom {pydicom.__version__}, {os.cpu_count()} CPUs; files in page cache"
    )
    from tests.peers import CT_DATA_DIR, ct_files, unpack_ct

    if (CT_DATA_DIR / "qa_ge_head_tilt.tar.xz").is_file():
        measure("(a) qa_ge_head_tilt (real, GE, tilted)", unpack_ct("qa_ge_head_tilt"), args.max_in_plane)
    else:
        print(f"\n(a) skipped: {CT_DATA_DIR / 'qa_ge_head_tilt.tar.xz'} is absent")

    with tempfile.TemporaryDirectory(prefix="bench-assemble-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        write_synthetic(folder, args.slices, args.size)
        written = time.perf_counter() - start
        label = f"(b) synthetic {args.slices} x {args.size}^2 int16 (written in {written:.1f} s)"
        measure(label, folder, args.max_in_plane)

    if args.pool and (CT_DATA_DIR / "lidc0001_full.tar.xz").is_file():
        with tempfile.TemporaryDirectory(prefix="bench-assemble-j2k-") as tmp:
            write_jpeg2000(Path(tmp), ct_files("lidc0001_full"))
            measure_pool("(c) lidc0001_full as JPEG 2000 lossless", Path(tmp), args.max_in_plane, args.pool)
    return 0


if __name__ == "__main__":
    sys.exit(main())
