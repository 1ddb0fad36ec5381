"""Preview each series of a manifest to write its crop recipes: mid-sagittal, mid-coronal, coronal bone MIP.

    .venv/bin/python training/preview_series.py training/shared_ct_manifest.csv OUT_DIR [--cache-dir DIR]

One PNG per series, with lines at every tenth of the patient z extent (0 = feet end, 1 = head end, the
fractions the `crops` column uses) and the series' current recipes drawn as coloured bars. The images stay
out of the repository (they are patient data, even if public); this script makes them again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from node.training.augment import View, reformat  # noqa: E402
from node.training.dataset import load_volume, read_manifest  # noqa: E402

logger = logging.getLogger(__name__)


def preview(manifest: Path, out: Path, cache_dir: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for entry in read_manifest(manifest).entries:
        view = View.from_volume(load_volume(entry, max_in_plane=256, cache_dir=cache_dir))
        fig, axes = plt.subplots(1, 3, figsize=(15, 6))
        panels = [
            ("sagittal", "mid", -1000, 400),
            ("coronal", "mid", -1000, 400),
            ("coronal", "bone MIP", -200, 1200),
        ]
        for ax, (target, kind, low, high) in zip(axes, panels, strict=True):
            stack = reformat(view, target)
            image = (
                stack.voxels.max(axis=0) if kind == "bone MIP" else stack.voxels[stack.voxels.shape[0] // 2]
            )
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=stack.spacing[1] / stack.spacing[2])
            rows = image.shape[0]  # rows run head (top) to feet (bottom) in these reformats
            for fraction in np.arange(0.1, 1.0, 0.1):
                ax.axhline((1 - fraction) * rows, color="red", lw=0.5)
                ax.text(1, (1 - fraction) * rows, f"{fraction:.1f}", color="red", fontsize=7)
            for i, recipe in enumerate(entry.crops):
                x = image.shape[1] - 3 - 4 * i
                ax.plot([x, x], [(1 - recipe.high) * rows, (1 - recipe.low) * rows], lw=3, label=str(recipe))
            if entry.crops:
                ax.legend(fontsize=7, loc="lower left")
            ax.set_title(f"{entry.id}: {target} {kind}", fontsize=9)
        labels = ", ".join(f"{k}={v}" for k, v in entry.labels.items())
        fig.suptitle(f"{entry.id} ({entry.patient}): {labels}")
        fig.savefig(out / f"{entry.id}.png", dpi=70)
        plt.close(fig)
        print(out / f"{entry.id}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    preview(args.manifest, args.out, args.cache_dir)


if __name__ == "__main__":
    main()
