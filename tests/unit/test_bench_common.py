"""bench/common.py helpers that the benchmarks' figures rest on: synthetic series, the durable-write
ceiling and the peak RSS per phase (the benches themselves: tests/interop/test_benches.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom

from bench.common import PeakRss, durable_write_rate, synthetic_series
from tests.peers import make_series


def test_a_synthetic_series_is_one_new_series_of_new_instances_stacked_along_the_axis(tmp_path: Path) -> None:
    sources = [f.path for f in make_series(tmp_path / "src", 3)]
    for i, path in enumerate(sources):  # make_series writes no geometry: give the slices some
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 0.0, 10.0 + 2.5 * i]
        ds.save_as(path)
    originals = [pydicom.dcmread(p) for p in sources]

    files = synthetic_series(sources, 7, "unit", root=tmp_path / "cache")

    datasets = [pydicom.dcmread(f) for f in files]
    assert len(datasets) == 7
    assert len({str(d.SOPInstanceUID) for d in datasets}) == 7
    assert {str(d.SOPInstanceUID) for d in datasets}.isdisjoint({str(d.SOPInstanceUID) for d in originals})
    assert len({str(d.SeriesInstanceUID) for d in datasets}) == 1
    assert str(datasets[0].SeriesInstanceUID) != str(originals[0].SeriesInstanceUID)
    assert all(str(d.file_meta.MediaStorageSOPInstanceUID) == str(d.SOPInstanceUID) for d in datasets)
    assert [int(d.InstanceNumber) for d in datasets] == list(range(1, 8))
    assert [float(d.ImagePositionPatient[2]) for d in datasets] == [10.0 + 2.5 * i for i in range(7)]
    assert datasets[4].PixelData == originals[1].PixelData  # real slices, cycled
    # A rerun reuses the cached files instead of making another series.
    assert synthetic_series(sources, 7, "unit", root=tmp_path / "cache") == files


def test_the_durable_write_ceiling_writes_every_file_with_its_bytes(tmp_path: Path) -> None:
    sources = [f.path for f in make_series(tmp_path / "src", 4)]

    rate = durable_write_rate(sources, tmp_path / "ceiling")

    written = sorted((tmp_path / "ceiling").iterdir())
    assert [w.read_bytes() for w in written] == [s.read_bytes() for s in sources]
    assert rate > 0


def test_the_peak_rss_can_be_reset_between_phases() -> None:
    # A child that touches 300 MB, frees it, says so and waits for a line on stdin.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nb = bytearray(300 * 10**6)\ndel b\nprint('freed', flush=True)\n"
                               "sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline().strip() == "freed"
        rss = PeakRss(child.pid)
        try:
            assert rss.peak_mb() > 300
            rss.reset()
            assert rss.peak_mb() < 200
        finally:
            rss.close()
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(timeout=10)
