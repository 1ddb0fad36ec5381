"""Training data: the manifest CSV, and each listed series loaded once as a (downsampled) Volume.

A manifest has one row per series (docs/training.md):

    id,path,format,body_part,axis,contrast,patient[,crops][,free columns...]

`path` is relative to the manifest's folder: a folder of DICOM files, a tarball of one (unpacked once into a
cache folder), or a NIfTI volume in HU. An empty label means "unknown for this task": that task is masked out
of the loss and of the metrics for that series. A row without any label is skipped with a message. `crops`
holds optional crop recipes (augment.CropRecipe): `Abdomen:0.45-1.0;Pelvis:0.0-0.5`.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from node.classify.labels import TASKS
from node.errors import NodeError
from node.training.augment import CropRecipe, parse_crops

if TYPE_CHECKING:
    from node.volume import Volume

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "path", "format", *TASKS, "patient")
FORMATS: tuple[str, ...] = ("dicom", "nifti")
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dicom-node" / "series"


class ManifestError(NodeError):
    """A manifest that cannot be used; the message names the file, the row and the column."""


class SeriesLoadError(NodeError):
    """A listed series could not be read or assembled into a volume."""


@dataclass(frozen=True)
class SeriesEntry:
    """One manifest row: where the series is, its labels (None = unknown) and its crop recipes."""

    id: str
    path: Path
    format: str
    labels: dict[str, str | None]
    patient: str
    crops: tuple[CropRecipe, ...] = ()
    row: int = 0  # line number in the manifest (the header is line 1)
    extra: dict[str, str] = field(default_factory=dict)

    def label_index(self, task: str) -> int:
        """Class index of this series' label for `task`, or -1 (unknown: ignored by loss and metrics)."""
        value = self.labels.get(task)
        return TASKS[task].index(value) if value is not None else -1


@dataclass(frozen=True)
class Manifest:
    path: Path
    entries: list[SeriesEntry]
    skipped: list[tuple[str, str]]  # (id, reason)

    @property
    def patients(self) -> list[str]:
        return sorted({e.patient for e in self.entries})


def read_manifest(path: Path | str, *, require_files: bool = True) -> Manifest:
    """Parse and validate a manifest; every problem is a ManifestError naming file, row and column."""
    manifest = Path(path)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ManifestError(f"{manifest}: cannot read the manifest: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ManifestError(
            f"{manifest}: missing column(s) {', '.join(missing)}; "
            f"a manifest needs {', '.join(REQUIRED_COLUMNS)}"
        )
    base = manifest.resolve().parent
    entries: list[SeriesEntry] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        where = f"{manifest}: row {line}"
        series_id = row["id"]
        if not series_id:
            raise ManifestError(f"{where}: column 'id' is empty")
        where += f" ({series_id})"
        if series_id in seen:
            raise ManifestError(f"{where}: column 'id': duplicate of row {seen[series_id]}")
        seen[series_id] = line
        labels: dict[str, str | None] = {}
        for task, classes in TASKS.items():
            value = row[task]
            if value and value not in classes:
                raise ManifestError(
                    f"{where}: column {task!r}: unknown class {value!r}; known: {', '.join(classes)}"
                )
            labels[task] = value or None
        if all(v is None for v in labels.values()):
            reason = "no labels (body_part, axis and contrast all empty)"
            logger.info("manifest %s: skipping %s: %s", manifest.name, series_id, reason)
            skipped.append((series_id, reason))
            continue
        if not row["path"]:
            raise ManifestError(f"{where}: column 'path' is empty")
        series_path = (base / row["path"]).resolve()
        fmt = row["format"].lower() or _guess_format(series_path)
        if fmt not in FORMATS:
            raise ManifestError(
                f"{where}: column 'format': {row['format']!r} is not one of {', '.join(FORMATS)}"
            )
        if require_files and not series_path.exists():
            raise ManifestError(f"{where}: column 'path': {series_path} does not exist")
        if fmt == "nifti" and not series_path.name.endswith(NIFTI_SUFFIXES):
            raise ManifestError(f"{where}: column 'path': a NIfTI series must end in .nii or .nii.gz")
        patient = row["patient"] or series_id
        try:
            crops = parse_crops(row.get("crops", ""))
        except ValueError as exc:
            raise ManifestError(f"{where}: column 'crops': {exc}") from exc
        extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k != "crops"}
        entries.append(SeriesEntry(series_id, series_path, fmt, labels, patient, crops, line, extra))
    if not entries:
        raise ManifestError(f"{manifest}: no labelled series")
    return Manifest(manifest, entries, skipped)


def _guess_format(path: Path) -> str:
    return "nifti" if path.name.endswith(NIFTI_SUFFIXES) else "dicom"


# ------------------------------------------------------------------------------------------ loading


def load_volume(entry: SeriesEntry, *, max_in_plane: int = 256, cache_dir: Path | None = None) -> Volume:
    """The entry's series as a Volume in HU (in-plane downsampled to at most `max_in_plane`)."""
    from node.volume import NotClassifiable, assemble_series

    if entry.format == "nifti":
        return load_nifti(entry.path, max_in_plane=max_in_plane, report={"series": entry.id})
    folder = entry.path
    if folder.is_file() and folder.name.endswith(ARCHIVE_SUFFIXES):
        folder = unpack_archive(folder, cache_dir or DEFAULT_CACHE)
    if not folder.is_dir():
        raise SeriesLoadError(f"{entry.id}: {entry.path} is neither a folder of DICOM files nor a tarball")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    result = assemble_series(files, max_in_plane=max_in_plane)
    if isinstance(result, NotClassifiable):
        raise SeriesLoadError(f"{entry.id}: not a usable volume ({result.code}): {result.reason}")
    return result


def load_volumes(
    entries: Sequence[SeriesEntry],
    *,
    max_in_plane: int,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Volume]:
    """Each series loaded once and kept in memory (samples are derived from these on the fly)."""
    from tqdm import tqdm

    volumes: dict[str, Volume] = {}
    for entry in tqdm(entries, desc="loading series", unit="series", disable=not progress, leave=False):
        volume = load_volume(entry, max_in_plane=max_in_plane, cache_dir=cache_dir)
        logger.info(
            "loaded %s: %s voxels, spacing %s mm",
            entry.id,
            "x".join(str(s) for s in volume.voxels.shape),
            "/".join(f"{s:.2f}" for s in volume.spacing),
        )
        volumes[entry.id] = volume
    return volumes


def unpack_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack a tarball of one series once into <cache_dir>/<name> (name = file name less the suffix).

    Safe when several processes ask at once (a lock file and an atomic rename). A tarball whose single
    top-level folder is <name>/ unpacks to that folder's content, as the shared test data does.
    """
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    target = cache_dir / name
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        logger.info("unpacking %s into %s", archive, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")
            inner = staging / name
            os.rename(inner if inner.is_dir() else staging, target)
        except (OSError, tarfile.TarError) as exc:
            raise SeriesLoadError(f"{archive}: cannot unpack: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- NIfTI

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def nifti_to_lps(
    data: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, np.ndarray]:
    """A NIfTI array (i, j, k) and its RAS affine -> (voxels (slices, rows, cols), spacing, row, column).

    The NIfTI convention maps i to image columns, j to rows and k to slices (as dcm2niix writes them).
    Directions are converted to DICOM's LPS (RAS -> LPS negates x and y). In-plane axes are then flipped
    where needed so that the image reads as a DICOM writer would store it (see augment.display_orient):
    rows and columns point to +x/+y, or down the patient (-z) where they run along z; slices are sorted
    ascending along the normal row x column, as node.volume sorts DICOM slices.
    """
    from node.training.augment import display_orient

    if data.ndim != 3:
        raise ValueError(f"expected a 3D NIfTI volume, got shape {data.shape}")
    axes = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing_ijk = np.linalg.norm(axes, axis=0)
    if np.any(spacing_ijk <= 0):
        raise ValueError(f"degenerate NIfTI affine {affine.tolist()}")
    directions = axes / spacing_ijk  # columns: unit vectors of i, j, k in LPS
    voxels = np.ascontiguousarray(np.transpose(data, (2, 1, 0)), dtype=np.float32)  # (k, j, i)
    dirs = np.stack([directions[:, 2], directions[:, 1], directions[:, 0]])  # per array axis
    spacing = (float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0]))
    voxels, dirs, spacing = display_orient(voxels, dirs, spacing)
    return voxels, spacing, dirs[2], dirs[1]


def load_nifti(path: Path, *, max_in_plane: int = 256, report: dict[str, Any] | None = None) -> Volume:
    import nibabel as nib

    from node.volume import volume_from_array

    try:
        image: Any = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
        voxels, spacing, row, column = nifti_to_lps(data, image.affine)
    except (OSError, ValueError) as exc:
        raise SeriesLoadError(f"{path}: cannot read NIfTI: {exc}") from exc
    return volume_from_array(
        voxels,
        spacing,
        _triple(row),
        _triple(column),
        {**(report or {}), "source": str(path.name), "format": "nifti"},
        max_in_plane=max_in_plane,
    )


def _triple(values: Iterable[float]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
