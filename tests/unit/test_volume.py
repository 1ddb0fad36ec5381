"""Volume assembly on small synthetic series written with pydicom: selection, order, HU, geometry, codecs."""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import subprocess
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from node.volume import FRAMES_PER_TASK, NotClassifiable, Volume, assemble_series, volume_from_array
from tests.conftest import require_peer

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def base_dataset(sop_class: str, *, modality: str = "CT", series_uid: str = "1.2.3.4") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    return ds


def image_dataset(
    pixels: np.ndarray,
    *,
    position: Sequence[float],
    orientation: Sequence[float] = AXIAL,
    number: int = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    spacing: Sequence[float] = (0.5, 0.5),
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    sop_class: str = CTImageStorage,
) -> Dataset:
    """A single-frame signed 16-bit image with the given geometry and rescale."""
    ds = base_dataset(sop_class, modality=modality)
    ds.ImageType = list(image_type)
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def save(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    if UID(transfer_syntax).is_compressed:
        ds.compress(transfer_syntax, generate_instance_uid=False)
    elif transfer_syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def slice_pixels(value: int, size: int = 16) -> np.ndarray:
    """A constant slice with a small ramp so that block means are not trivially constant."""
    ramp = np.arange(size * size, dtype=np.int32).reshape(size, size) % 7
    return (value + ramp).astype(np.int16)


def write_series(
    folder: Path,
    zs: Sequence[float],
    *,
    size: int = 16,
    orientation: Sequence[float] = AXIAL,
    shift_per_mm: Sequence[float] = (0.0, 0.0, 0.0),
    numbers: Sequence[int] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **kwargs: object,
) -> list[Path]:
    """One slice per z (raw value 100 * index + ramp); position = (0, 0, z) + z * shift_per_mm."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, z in enumerate(zs):
        position = [s * z for s in shift_per_mm]
        position[2] += z
        ds = image_dataset(
            slice_pixels(100 * i, size),
            position=position,
            orientation=orientation,
            number=(numbers[i] if numbers else i + 1),
            **kwargs,  # type: ignore[arg-type]
        )
        paths.append(save(ds, folder / f"{folder.name}-{i:03d}.dcm", transfer_syntax))
    return paths


def as_volume(result: Volume | NotClassifiable) -> Volume:
    assert isinstance(result, Volume), f"expected a volume, got {result}"
    json.dumps(result.report)  # the audit stores it
    return result


def as_not_classifiable(result: Volume | NotClassifiable) -> NotClassifiable:
    assert isinstance(result, NotClassifiable), f"expected NotClassifiable, got a volume {result.report}"
    json.dumps(result.report)
    return result


def slice_means(volume: Volume) -> list[float]:
    return [round(float(m), 3) for m in volume.voxels.mean(axis=(1, 2))]


# ---- order, rescale, spacing ----


def test_slices_sorted_along_normal_not_by_instance_number(tmp_path: Path) -> None:
    zs = [10.0, 12.5, 15.0, 17.5, 20.0, 22.5]
    paths = write_series(tmp_path / "s", zs, numbers=[6, 5, 4, 3, 2, 1])  # InstanceNumber reversed
    random.Random(7).shuffle(paths)
    vol = as_volume(assemble_series(paths))
    means = slice_means(vol)
    # raw value 100 * i at z[i], intercept -1024: ascending z gives ascending means
    assert means == sorted(means)
    assert means[0] == pytest.approx(-1024 + 3, abs=0.5)
    assert means[-1] == pytest.approx(-1024 + 500 + 3, abs=0.5)
    assert vol.spacing[0] == pytest.approx(2.5)
    assert vol.report["slices"] == 6 and vol.report["instances_used"] == 6
    assert vol.report["gaps"] == [] and vol.report["tilt_degrees"] == pytest.approx(0.0)


def test_descending_normal_sorts_by_projection(tmp_path: Path) -> None:
    # row x column = (1,0,0) x (0,-1,0) = (0,0,-1): ascending along the normal is descending z
    paths = write_series(tmp_path / "s", [0.0, 3.0, 6.0, 9.0], orientation=(1, 0, 0, 0, -1, 0))
    vol = as_volume(assemble_series(paths))
    means = slice_means(vol)
    assert means == sorted(means, reverse=True)
    assert vol.spacing[0] == pytest.approx(3.0)
    assert vol.column_cosine == (0.0, -1.0, 0.0)


def test_rescale_slope_and_intercept_give_hu(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    paths = []
    for i in range(3):
        pixels = np.full((16, 16), 500 + i, dtype=np.int16)
        ds = image_dataset(pixels, position=(0, 0, i), slope=2.0, intercept=-1024.0, number=i + 1)
        paths.append(save(ds, folder / f"{i}.dcm"))
    vol = as_volume(assemble_series(paths))
    assert vol.voxels.dtype == np.float32
    assert np.all(vol.voxels[0] == 2 * 500 - 1024)
    assert np.all(vol.voxels[2] == 2 * 502 - 1024)


def test_rescale_is_per_slice(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    paths = []
    for i, (slope, intercept) in enumerate([(1.0, -1024.0), (0.5, -1000.0), (2.0, 0.0)]):
        ds = image_dataset(
            np.full((16, 16), 1000, np.int16), position=(0, 0, i), slope=slope, intercept=intercept
        )
        paths.append(save(ds, folder / f"{i}.dcm"))
    vol = as_volume(assemble_series(paths))
    assert slice_means(vol) == [-24.0, -500.0, 2000.0]


def test_downsampling_factor_block_mean_and_spacing(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    rng = np.random.default_rng(0)
    frames = [rng.integers(-1000, 2000, size=(40, 40)).astype(np.int16) for _ in range(3)]
    paths = [
        save(image_dataset(f, position=(0, 0, 2 * i), spacing=(0.7, 0.8), intercept=0), folder / f"{i}.dcm")
        for i, f in enumerate(frames)
    ]
    vol = as_volume(assemble_series(paths, max_in_plane=16))
    # f = ceil(40 / 16) = 3; 40 // 3 = 13 blocks, the last row/column is cropped
    assert vol.report["downsample_factor"] == 3
    assert vol.voxels.shape == (3, 13, 13)
    assert vol.report["source_shape"] == [3, 40, 40] and vol.report["shape"] == [3, 13, 13]
    assert vol.spacing == pytest.approx((2.0, 2.1, 2.4))
    expected = frames[1][:39, :39].astype(np.float64).reshape(13, 3, 13, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(vol.voxels[1], expected, rtol=0, atol=1e-3)


def test_no_downsampling_when_small_and_non_square_factor(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "a", [0, 1, 2], size=16)
    vol = as_volume(assemble_series(paths, max_in_plane=256))
    assert vol.report["downsample_factor"] == 1 and vol.voxels.shape == (3, 16, 16)
    np.testing.assert_array_equal(vol.voxels[0], slice_pixels(0).astype(np.float32) - 1024)

    folder = tmp_path / "b"
    folder.mkdir()
    paths = [
        save(
            image_dataset(np.zeros((30, 64), np.int16), position=(0, 0, i), spacing=(1.0, 0.5)),
            folder / f"{i}",
        )
        for i in range(3)
    ]
    vol = as_volume(assemble_series(paths, max_in_plane=32))
    assert vol.voxels.shape == (3, 15, 32)
    assert vol.spacing == pytest.approx((1.0, 2.0, 1.0))


# ---- what is excluded ----


def test_localizer_excluded_and_reported(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [0, 2, 4, 6])
    scout = image_dataset(
        slice_pixels(9000),
        position=(0, 0, 3),
        orientation=CORONAL,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    scout2 = image_dataset(slice_pixels(9000), position=(0, 0, 5), image_type=("ORIGINAL", "SCOUT_VIEW"))
    paths += [save(scout, tmp_path / "scout.dcm"), save(scout2, tmp_path / "scout2.dcm")]
    vol = as_volume(assemble_series(paths))
    assert vol.report["excluded"] == {"localizer": 2}
    assert set(vol.report["excluded_examples"]["localizer"]) == {scout.SOPInstanceUID, scout2.SOPInstanceUID}
    assert vol.report["slices"] == 4 and vol.report["instances_total"] == 6
    assert max(slice_means(vol)) < 0  # no localizer pixels (9000) got in


def test_localizer_only_is_not_classifiable(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [0, 1, 2], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    result = as_not_classifiable(assemble_series(paths))
    assert result.code == "localizer_only"
    assert result.report["excluded"] == {"localizer": 3}


def test_single_slice_and_two_slices(tmp_path: Path) -> None:
    one = as_not_classifiable(assemble_series(write_series(tmp_path / "a", [0.0])))
    assert one.code == "single_slice"
    assert one.reason == "only 1 image slice (at least 3 are needed)"
    two = as_not_classifiable(assemble_series(write_series(tmp_path / "b", [0.0, 1.0])))
    assert two.code == "too_few_slices" and "only 2 image slices" in two.reason
    assert isinstance(assemble_series(write_series(tmp_path / "c", [0.0, 1.0]), min_slices=2), Volume)


def test_mr_is_not_ct(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [0, 1, 2, 3], modality="MR", sop_class=MRImageStorage)
    result = as_not_classifiable(assemble_series(paths))
    assert result.code == "not_ct"
    assert "MR" in result.reason
    assert result.report["modalities"] == ["MR"]


def structured_report() -> Dataset:
    ds = base_dataset(BasicTextSRStorage, modality="SR")
    ds.ValueType = "CONTAINER"
    return ds


def test_non_image_objects(tmp_path: Path) -> None:
    sr = [save(structured_report(), tmp_path / f"sr{i}.dcm") for i in range(2)]
    result = as_not_classifiable(assemble_series(sr))
    assert result.code == "not_image"
    assert result.report["excluded"] == {"not_image": 2}

    # a CT image object without Pixel Data is not an image either; mixed into a series it is dropped
    paths = write_series(tmp_path / "s", [0, 1, 2])
    no_pixels = image_dataset(slice_pixels(0), position=(0, 0, 5))
    del no_pixels.PixelData
    paths += [save(no_pixels, tmp_path / "nopix.dcm"), sr[0]]
    vol = as_volume(assemble_series(paths))
    assert vol.report["excluded"] == {"not_image": 2}
    assert no_pixels.SOPInstanceUID in vol.report["excluded_examples"]["not_image"]
    assert vol.report["slices"] == 3


def test_mixed_sizes_keep_largest_group(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "small", [0, 1, 2, 3, 4], size=16)
    big = write_series(tmp_path / "big", [0.5, 1.5], size=32)
    vol = as_volume(assemble_series(big + paths))
    assert vol.voxels.shape == (5, 16, 16)
    assert vol.report["excluded"] == {"size_mismatch": 2}
    big_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in big}
    assert set(vol.report["excluded_examples"]["size_mismatch"]) == big_uids


def test_mixed_orientation_keeps_largest_group(tmp_path: Path) -> None:
    axial = write_series(tmp_path / "ax", [0, 1, 2, 3, 4])
    coronal = write_series(tmp_path / "cor", [0, 1, 2], orientation=CORONAL)
    # a tiny IOP difference (rounding at the scanner) stays in the group
    nearly = image_dataset(slice_pixels(0), position=(0, 0, 7), orientation=(1, 0, 0, 0, 0.99999, 0.0044))
    vol = as_volume(assemble_series(coronal + axial + [save(nearly, tmp_path / "nearly.dcm")]))
    assert vol.report["slices"] == 6
    assert vol.report["excluded"] == {"orientation_mismatch": 3}
    assert vol.row_cosine == (1.0, 0.0, 0.0) and vol.column_cosine == (0.0, 1.0, 0.0)
    assert vol.report["orientation"] == list(AXIAL)


def test_equal_groups_choose_lowest_instance_number_whatever_the_file_order(tmp_path: Path) -> None:
    axial = write_series(tmp_path / "ax", [0, 1, 2], numbers=[10, 11, 12])
    # coronal slices step along y, their normal
    coronal = write_series(
        tmp_path / "cor", [0, 1, 2], orientation=CORONAL, numbers=[1, 2, 3], shift_per_mm=(0, 1, -1)
    )
    for files in (axial + coronal, coronal + axial):
        vol = as_volume(assemble_series(files))
        assert vol.column_cosine == (0.0, 0.0, -1.0)
        assert vol.report["excluded"] == {"orientation_mismatch": 3}


def test_duplicate_positions_keep_one(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [0, 2, 4, 6])
    dup = image_dataset(slice_pixels(5000), position=(0, 0, 4), number=99)
    paths.append(save(dup, tmp_path / "dup.dcm"))
    vol = as_volume(assemble_series(paths))
    assert vol.report["slices"] == 4
    assert vol.report["excluded"] == {"duplicate_position": 1}
    assert vol.report["excluded_examples"]["duplicate_position"] == [dup.SOPInstanceUID]
    assert max(slice_means(vol)) < 0  # the lower InstanceNumber was kept
    assert vol.report["gaps"] == []


def test_no_geometry(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [0, 1, 2])
    for path in paths:
        ds = dcmread(path)
        del ds.ImageOrientationPatient
        ds.save_as(path)
    result = as_not_classifiable(assemble_series(paths))
    assert result.code == "no_geometry"
    assert result.report["excluded"] == {"no_geometry": 3}


def test_unreadable_files_skipped_and_all_unreadable(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [0, 1, 2])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all" * 10)
    missing = tmp_path / "gone.dcm"
    vol = as_volume(assemble_series([*paths, junk, missing]))
    assert vol.report["excluded"] == {"unreadable": 2}
    assert set(vol.report["excluded_examples"]["unreadable"]) == {"junk.dcm", "gone.dcm"}
    result = as_not_classifiable(assemble_series([junk, missing]))
    assert result.code == "unreadable"
    empty = as_not_classifiable(assemble_series([]))
    assert empty.code == "empty"


def test_truncated_pixel_data_is_dropped(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [0, 1, 2, 3, 4])
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 100])
    vol = as_volume(assemble_series(paths))
    assert vol.report["excluded"] == {"unreadable_pixels": 1}
    assert vol.report["slices"] == 4 and vol.voxels.shape[0] == 4
    assert vol.report["gaps"] == [{"index": 1, "spacing_mm": 2.0}]  # z 0, 1, 3, 4 remain
    assert slice_means(vol) == pytest.approx([-1021.0, -921.0, -721.0, -621.0], abs=0.1)


# ---- geometry: gaps and tilt ----


def test_gaps_detected_and_median_spacing(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [0, 2, 4, 6, 12, 14, 16])
    vol = as_volume(assemble_series(paths))
    assert vol.report["slice_spacing"] == {"min": 2.0, "median": 2.0, "max": 6.0}
    assert vol.report["gaps"] == [{"index": 3, "spacing_mm": 6.0}]
    assert vol.spacing[0] == pytest.approx(2.0)


def test_tilt_positions_offset_along_column_direction(tmp_path: Path) -> None:
    tilt = 20.0
    zs = [2.5 * i for i in range(8)]
    shift = (0.0, math.tan(math.radians(tilt)), 0.0)
    vol = as_volume(assemble_series(write_series(tmp_path / "s", zs, shift_per_mm=shift)))
    assert vol.report["tilt_degrees"] == pytest.approx(tilt, abs=1e-3)
    assert vol.spacing[0] == pytest.approx(2.5)  # along the normal, not along the slice-to-slice path


def test_tilt_with_tilted_orientation_like_ge(tmp_path: Path) -> None:
    # GE: IOP tilted about x, positions moving along z only (as in the qa_ge_head_tilt data)
    tilt = math.radians(18.5)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(tilt), -math.sin(tilt))
    vol = as_volume(
        assemble_series(write_series(tmp_path / "s", [4.0 * i for i in range(5)], orientation=iop))
    )
    assert vol.report["tilt_degrees"] == pytest.approx(18.5, abs=1e-3)
    assert vol.spacing[0] == pytest.approx(4.0 * math.cos(tilt))


# ---- pixel details ----


def test_padding_value_becomes_air_and_unused_bits_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    paths = []
    for i in range(3):
        pixels = np.full((16, 16), 1064, np.int16)
        pixels[:, :8] = -2000
        ds = image_dataset(pixels, position=(0, 0, i))
        ds.PixelPaddingValue = -2000
        ds["PixelPaddingValue"].VR = "SS"
        paths.append(save(ds, folder / f"p{i}.dcm"))
    vol = as_volume(assemble_series(paths))
    assert np.all(vol.voxels[:, :, :8] == -1000.0)
    assert np.all(vol.voxels[:, :, 8:] == 40.0)

    # unsigned, 12 bits stored: the high 4 bits hold garbage (an overlay, say) and must be ignored
    folder = tmp_path / "u"
    folder.mkdir()
    paths = []
    for i in range(3):
        ds = image_dataset(np.zeros((16, 16), np.int16), position=(0, 0, i))
        ds.PixelRepresentation = 0
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = np.full((16, 16), 0xF000 | 1100, np.uint16).astype("<u2").tobytes()
        paths.append(save(ds, folder / f"u{i}.dcm"))
    vol = as_volume(assemble_series(paths))
    assert np.all(vol.voxels == 1100 - 1024)


@pytest.mark.parametrize(
    "transfer_syntax", [ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless], ids=["implicit", "rle", "j2k"]
)
def test_compressed_and_implicit_match_explicit(tmp_path: Path, transfer_syntax: str) -> None:
    zs = [0, 1.5, 3, 4.5]
    reference = as_volume(assemble_series(write_series(tmp_path / "ref", zs, size=32), max_in_plane=16))
    paths = write_series(tmp_path / "enc", zs, size=32, transfer_syntax=transfer_syntax)
    assert str(dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == transfer_syntax
    with ThreadPoolExecutor(2) as pool:
        vol = as_volume(assemble_series(paths, max_in_plane=16, executor=pool))
    np.testing.assert_array_equal(vol.voxels, reference.voxels)
    assert vol.report["transfer_syntaxes"] == [transfer_syntax]


def test_jpeg_lossless_from_dcmtk(tmp_path: Path) -> None:
    dcmcjpeg = require_peer("dcmcjpeg", package="dcmtk")
    zs = [0, 2, 4]
    source = write_series(tmp_path / "src", zs, size=32)
    reference = as_volume(assemble_series(source))
    out = tmp_path / "jpeg"
    out.mkdir()
    encoded = []
    for path in source:
        target = out / path.name
        # +e1: JPEG lossless, first-order prediction (Process 14 SV1)
        subprocess.run([dcmcjpeg, "+e1", str(path), str(target)], check=True, capture_output=True)
        encoded.append(target)
    vol = as_volume(assemble_series(encoded))
    assert vol.report["transfer_syntaxes"] == ["1.2.840.10008.1.2.4.70"]
    np.testing.assert_array_equal(vol.voxels, reference.voxels)


# dcmtk's encoders (the real-world source of compressed CT): tool, options, transfer syntax, the data
# (signed 16-bit CT, or unsigned 12-bit / 8-bit, which the lossy and near-lossless codecs need), and the
# largest difference allowed (lossy codecs).
DCMTK_CODECS = [
    ("dcmcjpeg", ("+e1",), "1.2.840.10008.1.2.4.70", "s16", 0),  # JPEG Lossless, Process 14 SV1
    ("dcmcjpeg", ("+el", "+sv", "2"), "1.2.840.10008.1.2.4.57", "s16", 0),  # JPEG Lossless, Process 14
    ("dcmcjpls", ("+el",), "1.2.840.10008.1.2.4.80", "s16", 0),  # JPEG-LS Lossless
    ("dcmcjpls", ("+en", "+md", "2"), "1.2.840.10008.1.2.4.81", "u12", 2),  # JPEG-LS Near-Lossless
    ("dcmcjpeg", ("+eb",), "1.2.840.10008.1.2.4.50", "u8", 24),  # JPEG Baseline (8-bit lossy)
    ("dcmcjpeg", ("+ee",), "1.2.840.10008.1.2.4.51", "u8", 24),  # JPEG Extended, 8-bit samples
]
# pylibjpeg decodes JPEG and JPEG-LS only through pylibjpeg-libjpeg (GPL-3.0), an optional extra; the
# default install must decode them with permissively licensed plugins (python-gdcm, pyjpegls). Not
# covered without the extra: JPEG Extended with 12-bit samples (pydicom's gdcm and Pillow plugins
# refuse it), documented in docs/volume.md.
GPL_PLUGINS = {"pylibjpeg"}


def ct_like_slice(index: int, size: int, kind: str) -> np.ndarray:
    """Air, soft tissue and bone values, different on every slice (as signed 16, unsigned 12 or 8 bit)."""
    rng = np.random.default_rng(index)
    if kind == "u8":
        # smooth, as a windowed CT image is: a lossy codec keeps it within a few grey levels
        ramp = np.add.outer(np.arange(size), np.arange(size)) * 3 + 20 * index
        return (ramp % 200 + rng.integers(0, 4, (size, size))).astype(np.int16)
    values = rng.integers(-1024, 2000, (size, size)).astype(np.int16)
    return (values + 1024).astype(np.int16) if kind == "u12" else values


def dcmtk_series(
    tmp_path: Path, tool: str, options: Sequence[str], kind: str
) -> tuple[list[Path], list[np.ndarray]]:
    binary = require_peer(tool, package="dcmtk")
    (tmp_path / "src").mkdir()
    (tmp_path / "enc").mkdir()
    encoded, originals = [], []
    for i in range(3):
        pixels = ct_like_slice(i, 32, kind)
        ds = image_dataset(pixels, position=(0, 0, 2.0 * i), number=i + 1)
        if kind == "u12":
            ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
            ds.PixelData = pixels.astype("<u2").tobytes()
        elif kind == "u8":
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = pixels.astype(np.uint8).tobytes()
        source = save(ds, tmp_path / "src" / f"{i}.dcm")
        target = tmp_path / "enc" / f"{i}.dcm"
        subprocess.run([binary, *options, str(source), str(target)], check=True, capture_output=True)
        encoded.append(target)
        originals.append(pixels)
    return encoded, originals


@pytest.mark.parametrize(
    ("tool", "options", "syntax", "kind", "tolerance"),
    DCMTK_CODECS,
    ids=["jpeg-lossless-sv1", "jpeg-lossless", "jpeg-ls", "jpeg-ls-near", "jpeg-baseline", "jpeg-extended-8"],
)
def test_dcmtk_compressed_ct_decodes_with_permissively_licensed_decoders(
    tmp_path: Path, tool: str, options: tuple[str, ...], syntax: str, kind: str, tolerance: int
) -> None:
    """A non-GPL decoder gives the original pixels (within the codec's loss), none gives wrong ones (one
    that cannot decode the file raises, and pydicom tries the next), and the series assembles."""
    from pydicom.pixels import get_decoder, pixel_array

    encoded, originals = dcmtk_series(tmp_path, tool, options, kind)
    assert str(dcmread(encoded[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    decoded_by = []
    for plugin in sorted(set(get_decoder(syntax).available_plugins) - GPL_PLUGINS):
        try:
            arrays = [pixel_array(path, decoding_plugin=plugin).astype(np.int32) for path in encoded]
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # e.g. Pillow and 12-bit JPEG Extended
        for decoded, original in zip(arrays, originals, strict=True):
            worst = int(np.abs(decoded - original.astype(np.int32)).max())
            assert worst <= tolerance, f"{plugin}: differs by {worst}"
        decoded_by.append(plugin)
    assert decoded_by, f"no permissively licensed decoder for {UID(syntax).name} (python-gdcm, pyjpegls)"
    vol = as_volume(assemble_series(encoded))
    assert vol.report["transfer_syntaxes"] == [syntax]
    assert vol.voxels.shape[0] == 3


def test_jpeg_extended_12_bit_without_the_gpl_decoder_is_not_classifiable(tmp_path: Path) -> None:
    """The one syntax the default (GPL-free) install cannot decode: a clear answer, not a crash."""
    from pydicom.pixels import get_decoder

    if "pylibjpeg" in get_decoder("1.2.840.10008.1.2.4.51").available_plugins:
        pytest.skip("pylibjpeg-libjpeg (extra gpl-decoders) is installed: it decodes 12-bit JPEG Extended")
    encoded, _ = dcmtk_series(tmp_path, "dcmcjpeg", ("+ee",), "u12")
    result = as_not_classifiable(assemble_series(encoded))
    assert "could be decoded" in result.reason


# ---- multi-frame (Enhanced CT) ----


def enhanced_ct(
    zs: Sequence[float],
    *,
    size: int = 16,
    per_frame_rescale: Sequence[tuple[float, float]] | None = None,
    localizer_frames: Sequence[int] = (),
) -> tuple[Dataset, list[np.ndarray]]:
    """An Enhanced CT object with one frame per z; frame i holds raw 100 * i + ramp."""
    ds = base_dataset(EnhancedCTImageStorage)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(zs)
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1

    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    measures = Dataset()
    measures.PixelSpacing = [0.6, 0.6]
    measures.SliceThickness = 1.0
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    if per_frame_rescale is None:
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
        shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    groups = []
    frames = []
    for i, z in enumerate(zs):
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-4.0, -4.0, float(z)]
        group.PlanePositionSequence = DicomSequence([position])
        if per_frame_rescale is not None:
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept = per_frame_rescale[i]
            group.PixelValueTransformationSequence = DicomSequence([transform])
        frame_type = Dataset()
        frame_type.FrameType = [
            "ORIGINAL",
            "PRIMARY",
            "LOCALIZER" if i in localizer_frames else "AXIAL",
            "NONE",
        ]
        group.CTImageFrameTypeSequence = DicomSequence([frame_type])
        groups.append(group)
        frames.append(slice_pixels(100 * i, size))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)
    ds.PixelData = np.stack(frames).astype("<i2").tobytes()
    return ds, frames


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, RLELossless], ids=["native", "rle"])
def test_enhanced_ct_frames_become_sorted_slices(tmp_path: Path, transfer_syntax: str) -> None:
    zs = [9.0, 3.0, 6.0, 0.0, 12.0]  # frames stored out of order
    ds, frames = enhanced_ct(zs)
    path = save(ds, tmp_path / "enhanced.dcm", transfer_syntax)
    vol = as_volume(assemble_series([path]))
    assert vol.report["multiframe"] is True
    assert vol.report["slices"] == 5 and vol.report["instances_used"] == 1
    assert vol.spacing == pytest.approx((3.0, 0.6, 0.6))
    for k, frame_index in enumerate(np.argsort(zs)):
        np.testing.assert_array_equal(vol.voxels[k], frames[frame_index].astype(np.float32) - 1024)


def test_enhanced_ct_per_frame_rescale_and_frame_localizer(tmp_path: Path) -> None:
    zs = [0.0, 2.0, 4.0, 6.0]
    rescale = [(1.0, -1024.0), (2.0, -1024.0), (1.0, 0.0), (1.0, -1024.0)]
    ds, frames = enhanced_ct(zs, per_frame_rescale=rescale, localizer_frames=[3])
    vol = as_volume(assemble_series([save(ds, tmp_path / "enh.dcm")]))
    assert vol.report["slices"] == 3
    assert vol.report["excluded"] == {"localizer": 1}
    assert vol.report["excluded_examples"]["localizer"] == [f"{ds.SOPInstanceUID}#4"]
    for k in range(3):
        slope, intercept = rescale[k]
        np.testing.assert_array_equal(vol.voxels[k], frames[k].astype(np.float32) * slope + intercept)


def test_single_frame_report_fields(tmp_path: Path) -> None:
    vol = as_volume(assemble_series(write_series(tmp_path / "s", [0, 1, 2])))
    for key in (
        "instances_total",
        "instances_used",
        "excluded",
        "excluded_examples",
        "slices",
        "source_shape",
        "downsample_factor",
        "shape",
        "spacing_mm",
        "slice_spacing",
        "gaps",
        "tilt_degrees",
        "multiframe",
        "transfer_syntaxes",
        "orientation",
    ):
        assert key in vol.report, key
    assert vol.report["multiframe"] is False
    assert vol.report["spacing_mm"] == [1.0, 0.5, 0.5]


def test_process_pool_matches_sequential_and_chunks_multiframe(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", [float(i) for i in range(6)], size=32, transfer_syntax=RLELossless)
    zs = [float(z) for z in range(FRAMES_PER_TASK + 8)]  # more frames than one task takes
    enhanced, _ = enhanced_ct(zs)
    multi = save(enhanced, tmp_path / "enh.dcm", RLELossless)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for files in (paths, [multi]):
            one = as_volume(assemble_series(files, max_in_plane=16))
            many = as_volume(assemble_series(files, max_in_plane=16, executor=pool, in_flight=2))
            np.testing.assert_array_equal(one.voxels, many.voxels)
            assert many.report["slices"] == (len(zs) if files == [multi] else len(paths))


# ---- volume_from_array ----


def test_volume_from_array_downsamples_and_keeps_report() -> None:
    rng = np.random.default_rng(1)
    hu = rng.normal(0, 300, size=(5, 100, 60)).astype(np.float64)
    vol = volume_from_array(hu, (3.0, 0.8, 0.8), (1, 0, 0), (0, 1, 0), {"source": "nifti"}, max_in_plane=50)
    assert vol.voxels.dtype == np.float32
    assert vol.voxels.shape == (5, 50, 30)
    assert vol.spacing == pytest.approx((3.0, 1.6, 1.6))
    np.testing.assert_allclose(vol.voxels[2], hu[2].reshape(50, 2, 30, 2).mean(axis=(1, 3)), atol=1e-3)
    assert vol.report["source"] == "nifti"
    assert vol.report["downsample_factor"] == 2 and vol.report["shape"] == [5, 50, 30]
    assert vol.report["orientation"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    json.dumps(vol.report)

    small = volume_from_array(np.zeros((2, 8, 8), np.int16), (1, 1, 1), (1, 0, 0), (0, 1, 0))
    assert small.voxels.shape == (2, 8, 8) and small.report["downsample_factor"] == 1


def test_volume_from_array_rejects_wrong_input() -> None:
    with pytest.raises(ValueError):
        volume_from_array(np.zeros((8, 8)), (1, 1, 1), (1, 0, 0), (0, 1, 0))
    with pytest.raises(ValueError):
        volume_from_array(np.zeros((2, 8, 8)), (1, 0, 1), (1, 0, 0), (0, 1, 0))
