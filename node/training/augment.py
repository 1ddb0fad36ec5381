"""Realistic augmentation of CT volumes: what a scanner or a PACS could really have produced.

Pure numpy on a `View` (voxels (slices, rows, cols) in HU, spacing, and the patient direction (LPS) of each
array axis), so that every step keeps the geometry right and can be tested against it:

- `reformat`: an axial volume re-sliced as a coronal or sagittal stack (transpose and flips only, no
  interpolation), with the row/column cosines a DICOM writer would give it; the axis label follows.
- `crop_z`: a part of the volume along the patient z axis; with a `CropRecipe` the body part label changes
  consistently (the lower half of an abdomen-pelvis series is a pelvis series).
- `resample_thickness`: thicker slices (average of adjacent slices) or sparser slices (every n-th).
- `add_noise`, `jitter_intensity`: Gaussian noise, an HU offset of a few HU and a scale within ~3%.
- `flip_left_right`: a mirrored patient. Head-feet and front-back flips are never done: no CT looks so.

`sample_view` draws one training sample from a series with these; `derived_views` gives the deterministic
views (reformats, crops) used to score held-out series. Crop fractions run along the patient z axis, 0 being
the inferior (feet) end and 1 the superior (head) end, whatever the slice order of the series.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from node.classify.labels import AXES, BODY_PARTS

if TYPE_CHECKING:
    from node.volume import Volume

Labels = dict[str, str | None]

# Patient axis (LPS) index whose direction is the slice normal of each imaging axis.
NORMAL_OF_AXIS: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}
MIN_CROP_FRACTION = 0.2  # a recipe must keep at least this fraction of the series


@dataclass(frozen=True)
class View:
    """A volume and its geometry. `directions[a]` is the unit LPS vector along array axis a (0 = slices)."""

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    directions: np.ndarray  # (3, 3): rows = directions of the slice, row and column axes

    @property
    def row_cosine(self) -> np.ndarray:
        """Direction of increasing column index (DICOM Image Orientation (Patient), first triplet)."""
        return np.asarray(self.directions[2])

    @property
    def column_cosine(self) -> np.ndarray:
        """Direction of increasing row index (second triplet)."""
        return np.asarray(self.directions[1])

    @property
    def normal(self) -> np.ndarray:
        return np.asarray(np.cross(self.row_cosine, self.column_cosine))

    @property
    def imaging_axis(self) -> str:
        """axial, coronal or sagittal: the patient axis nearest to the slice normal."""
        dominant = int(np.argmax(np.abs(self.normal)))
        return {2: "axial", 1: "coronal", 0: "sagittal"}[dominant]

    def extent_mm(self, axis: int) -> float:
        return float(self.voxels.shape[axis] * self.spacing[axis])

    @classmethod
    def from_volume(cls, volume: Volume) -> View:
        return cls.from_cosines(volume.voxels, volume.spacing, volume.row_cosine, volume.column_cosine)

    @classmethod
    def from_cosines(
        cls,
        voxels: np.ndarray,
        spacing: Sequence[float],
        row_cosine: Sequence[float],
        column_cosine: Sequence[float],
    ) -> View:
        row = _unit(row_cosine)
        column = _unit(column_cosine)
        normal = _unit(np.cross(row, column))
        directions = np.stack([normal, column, row])
        a, b, c = (float(s) for s in spacing)
        return cls(np.asarray(voxels, dtype=np.float32), (a, b, c), directions)


def _unit(vector: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError("zero direction vector")
    return v / norm


# --------------------------------------------------------------------------------------- geometry


def _flip(voxels: np.ndarray, axis: int) -> np.ndarray:
    return np.flip(voxels, axis=axis)


def display_orient(
    voxels: np.ndarray, directions: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Flip axes so the stack reads as a DICOM writer stores it, the anatomy unchanged.

    In-plane axes point to +x (patient left) or +y (posterior) when they run mostly along x or y, and to -z
    (towards the feet: the head at the top of the image) when they run mostly along z. The slice axis then
    runs ascending along the normal row x column, as node.volume sorts slices. Only flips: each voxel keeps
    its patient position, so the anatomy is never mirrored.
    """
    dirs = np.array(directions, dtype=np.float64)
    out = voxels
    for axis in (1, 2):
        dominant = int(np.argmax(np.abs(dirs[axis])))
        wanted = -1.0 if dominant == 2 else 1.0
        if np.sign(dirs[axis][dominant]) != wanted:
            out = _flip(out, axis)
            dirs[axis] = -dirs[axis]
    normal = np.cross(dirs[2], dirs[1])
    if float(np.dot(dirs[0], normal)) < 0:
        out = _flip(out, 0)
        dirs[0] = -dirs[0]
    a, b, c = (float(s) for s in spacing)
    return out, dirs, (a, b, c)


def reformat(view: View, target: str) -> View:
    """Re-slice `view` so that its slice normal is the patient axis of `target` (axial/coronal/sagittal).

    The array axis nearest to that patient axis becomes the slice axis; of the other two, the one that runs
    along the later patient axis (z before y before x) becomes the rows, so a coronal stack has rows
    head-to-feet and columns right-to-left, a sagittal one rows head-to-feet and columns front-to-back.
    """
    if target not in NORMAL_OF_AXIS:
        raise ValueError(f"unknown imaging axis {target!r}; known: {', '.join(NORMAL_OF_AXIS)}")
    patient_axis = NORMAL_OF_AXIS[target]
    slice_axis = int(np.argmax(np.abs(view.directions[:, patient_axis])))
    others = [a for a in range(3) if a != slice_axis]
    others.sort(key=lambda a: int(np.argmax(np.abs(view.directions[a]))), reverse=True)
    order = [slice_axis, *others]
    voxels = np.transpose(view.voxels, order)
    directions = view.directions[order]
    spacing = tuple(view.spacing[a] for a in order)
    voxels, directions, new_spacing = display_orient(voxels, directions, spacing)
    return View(np.ascontiguousarray(voxels), new_spacing, directions)


def z_axis(view: View) -> tuple[int, bool]:
    """(array axis nearest to patient z, whether its index grows towards the head)."""
    axis = int(np.argmax(np.abs(view.directions[:, 2])))
    return axis, bool(view.directions[axis][2] > 0)


def crop_z(view: View, low: float, high: float) -> View:
    """The part of `view` between fractions `low` and `high` of its patient z extent (0 = feet end)."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"crop fractions must satisfy 0 <= low < high <= 1, got {low}-{high}")
    axis, upward = z_axis(view)
    n = view.voxels.shape[axis]
    if not upward:
        low, high = 1.0 - high, 1.0 - low
    start = int(np.floor(low * n + 1e-9))
    stop = max(start + 1, int(np.ceil(high * n - 1e-9)))
    index: list[slice] = [slice(None)] * 3
    index[axis] = slice(start, stop)
    return replace(view, voxels=view.voxels[tuple(index)])


def resample_thickness(view: View, factor: int, mode: str = "mean") -> View:
    """Thicker slices: the mean of `factor` adjacent slices (mode mean) or every `factor`-th (subsample)."""
    if factor < 1:
        raise ValueError("factor must be at least 1")
    if factor == 1:
        return view
    n = view.voxels.shape[0]
    if mode == "mean":
        usable = (n // factor) * factor
        if usable == 0:
            return view
        voxels = view.voxels[:usable].reshape(usable // factor, factor, *view.voxels.shape[1:]).mean(axis=1)
    elif mode == "subsample":
        voxels = view.voxels[::factor]
    else:
        raise ValueError(f"unknown thickness mode {mode!r}")
    spacing = (view.spacing[0] * factor, view.spacing[1], view.spacing[2])
    return View(np.ascontiguousarray(voxels, dtype=np.float32), spacing, view.directions)


def flip_left_right(view: View) -> View:
    """Mirror the patient left-right (the array axis nearest to x flipped, the geometry kept)."""
    axis = int(np.argmax(np.abs(view.directions[:, 0])))
    return replace(view, voxels=np.ascontiguousarray(np.flip(view.voxels, axis=axis)))


def add_noise(voxels: np.ndarray, sigma_hu: float, rng: np.random.Generator) -> np.ndarray:
    if sigma_hu <= 0:
        return voxels
    noise = rng.standard_normal(voxels.shape, dtype=np.float32) * np.float32(sigma_hu)
    return voxels + noise


def jitter_intensity(voxels: np.ndarray, offset_hu: float, scale: float) -> np.ndarray:
    """HU' = HU * scale + offset, around water (0 HU), so air and bone move a little, water not at all."""
    return (voxels * np.float32(scale) + np.float32(offset_hu)).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------ crop recipes


@dataclass(frozen=True)
class CropRecipe:
    """A z range of a series (fractions, 0 = feet end) and the body part that range shows."""

    label: str
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.label}:{self.low:g}-{self.high:g}"


_RECIPE = re.compile(r"^(?P<label>[^:]+):\s*(?P<low>[0-9.]+)\s*-\s*(?P<high>[0-9.]+)$")


def parse_crops(text: str) -> tuple[CropRecipe, ...]:
    """`Abdomen:0.45-1.0;Pelvis:0.0-0.5` -> recipes; ValueError says what is wrong."""
    recipes: list[CropRecipe] = []
    for part in (p.strip() for p in (text or "").split(";")):
        if not part:
            continue
        match = _RECIPE.match(part)
        if not match:
            raise ValueError(f"{part!r} is not LABEL:LOW-HIGH (e.g. Pelvis:0.0-0.5)")
        label = match["label"].strip()
        if label not in BODY_PARTS:
            raise ValueError(f"{part!r}: unknown body part {label!r}; known: {', '.join(BODY_PARTS)}")
        low, high = float(match["low"]), float(match["high"])
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"{part!r}: fractions must satisfy 0 <= low < high <= 1")
        if high - low < MIN_CROP_FRACTION:
            raise ValueError(f"{part!r}: a crop must keep at least {MIN_CROP_FRACTION:g} of the series")
        recipes.append(CropRecipe(label, low, high))
    return tuple(recipes)


def format_crops(recipes: Sequence[CropRecipe]) -> str:
    return ";".join(str(r) for r in recipes)


# ------------------------------------------------------------------------------------------ sampler


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training-time augmentation (saved in the package's metadata)."""

    p_crop: float = 0.35  # use one of the series' crop recipes (its bounds jittered)
    crop_jitter: float = 0.05  # recipe bounds move by up to this fraction
    p_reformat: float = 0.4  # an axial series re-sliced as coronal or sagittal (half each)
    min_reformat_mm: float = 100.0  # z extent below which a series is never reformatted
    min_crop_mm: float = 60.0  # crops shorter than this are not used
    min_slices: int = 12  # nor shorter than this many slices
    p_thickness: float = 0.3  # thicker (mean) or sparser (subsample) slices, factor 2 or 3
    max_thickness_mm: float = 6.0  # never thicker than this
    p_flip_lr: float = 0.5
    noise_sigma_hu: tuple[float, float] = (0.0, 15.0)
    offset_hu: float = 5.0
    scale: float = 0.03
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_crop": self.p_crop,
            "crop_jitter": self.crop_jitter,
            "p_reformat": self.p_reformat,
            "min_reformat_mm": self.min_reformat_mm,
            "min_crop_mm": self.min_crop_mm,
            "min_slices": self.min_slices,
            "p_thickness": self.p_thickness,
            "max_thickness_mm": self.max_thickness_mm,
            "p_flip_lr": self.p_flip_lr,
            "noise_sigma_hu": list(self.noise_sigma_hu),
            "offset_hu": self.offset_hu,
            "scale": self.scale,
            "head_feet_flip": False,
        }


NO_AUGMENTATION = AugmentConfig(
    p_crop=0.0,
    p_reformat=0.0,
    p_thickness=0.0,
    p_flip_lr=0.0,
    noise_sigma_hu=(0.0, 0.0),
    offset_hu=0.0,
    scale=0.0,
)


def apply_crop(view: View, labels: Mapping[str, str | None], recipe: CropRecipe) -> tuple[View, Labels]:
    new_labels = dict(labels)
    new_labels["body_part"] = recipe.label
    return crop_z(view, recipe.low, recipe.high), new_labels


def can_reformat(view: View, labels: Mapping[str, str | None], config: AugmentConfig) -> bool:
    return (
        labels.get("axis") == "axial"
        and view.imaging_axis == "axial"
        and view.extent_mm(z_axis(view)[0]) >= config.min_reformat_mm
    )


def apply_reformat(view: View, labels: Mapping[str, str | None], target: str) -> tuple[View, Labels]:
    if target not in AXES:
        raise ValueError(f"unknown imaging axis {target!r}")
    new_labels = dict(labels)
    new_labels["axis"] = target
    return reformat(view, target), new_labels


def _crop_ok(view: View, config: AugmentConfig) -> bool:
    axis, _ = z_axis(view)
    return view.voxels.shape[axis] >= config.min_slices and view.extent_mm(axis) >= config.min_crop_mm


def sample_view(
    view: View,
    labels: Mapping[str, str | None],
    crops: Sequence[CropRecipe],
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),  # noqa: B008 (frozen)
) -> tuple[np.ndarray, Labels, list[str]]:
    """One random, realistic training sample from a series: (voxels HU, labels, what was done)."""
    done: list[str] = []
    out_labels: Labels = dict(labels)
    current = view
    if crops and rng.random() < config.p_crop:
        recipe = crops[int(rng.integers(len(crops)))]
        jitter = config.crop_jitter
        low = float(np.clip(recipe.low + rng.uniform(-jitter, jitter), 0.0, 1.0))
        high = float(np.clip(recipe.high + rng.uniform(-jitter, jitter), 0.0, 1.0))
        if high - low >= MIN_CROP_FRACTION:
            candidate, candidate_labels = apply_crop(current, out_labels, CropRecipe(recipe.label, low, high))
            if _crop_ok(candidate, config):
                current, out_labels = candidate, candidate_labels
                done.append(f"crop {recipe.label} {low:.2f}-{high:.2f}")
    if can_reformat(current, out_labels, config) and rng.random() < config.p_reformat:
        target = "coronal" if rng.random() < 0.5 else "sagittal"
        current, out_labels = apply_reformat(current, out_labels, target)
        done.append(target)
    if rng.random() < config.p_thickness:
        factor = int(rng.integers(2, 4))
        if current.spacing[0] * factor <= config.max_thickness_mm and current.voxels.shape[0] // factor >= 8:
            mode = "mean" if rng.random() < 0.7 else "subsample"
            current = resample_thickness(current, factor, mode)
            done.append(f"thickness x{factor} ({mode})")
    if rng.random() < config.p_flip_lr:
        current = flip_left_right(current)
        done.append("flip left-right")
    voxels = current.voxels
    low_sigma, high_sigma = config.noise_sigma_hu
    if high_sigma > 0:
        sigma = float(rng.uniform(low_sigma, high_sigma))
        voxels = add_noise(voxels, sigma, rng)
        done.append(f"noise {sigma:.1f} HU")
    if config.offset_hu > 0 or config.scale > 0:
        offset = float(rng.uniform(-config.offset_hu, config.offset_hu))
        scale = 1.0 + float(rng.uniform(-config.scale, config.scale))
        voxels = jitter_intensity(voxels, offset, scale)
    return np.ascontiguousarray(voxels, dtype=np.float32), out_labels, done


def derived_views(
    view: View,
    labels: Mapping[str, str | None],
    crops: Sequence[CropRecipe],
    config: AugmentConfig = AugmentConfig(),  # noqa: B008 (frozen)
) -> list[tuple[str, View, Labels]]:
    """Deterministic views of a series for scoring: coronal and sagittal reformats, each crop recipe.

    They come from the same patient as the series, so they are not independent of it or of each other.
    """
    views: list[tuple[str, View, Labels]] = []
    if can_reformat(view, labels, config):
        for target in ("coronal", "sagittal"):
            reformatted, new_labels = apply_reformat(view, labels, target)
            views.append((target, reformatted, new_labels))
    for recipe in crops:
        cropped, new_labels = apply_crop(view, labels, recipe)
        if _crop_ok(cropped, config):
            views.append((f"crop {recipe}", cropped, new_labels))
    return views
