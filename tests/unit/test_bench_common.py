"""bench/common.py helpers that the benchmarks' figures rest on: synthetic series and the durable-write
ceiling (the benches themselves are smoke-tested in tests/interop/test_benches.py)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from bench.common import durable_write_rate, synthetic_series
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
