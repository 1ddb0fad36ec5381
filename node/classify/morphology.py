"""Small, fast 2D mask operations shared by the anatomical measurements (blood pool, coverage)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` with every background region that does not touch the border filled in.

    The same result as scipy.ndimage.binary_fill_holes (4-connected background), in one labelling pass
    instead of an iterated dilation: several times faster on CT slices.
    """
    background, _ = ndi.label(~mask)
    border = np.unique(
        np.concatenate((background[0], background[-1], background[:, 0], background[:, -1]))
    )
    outside = np.isin(background, border[border > 0])
    return np.asarray(~outside)


def largest_region(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(the largest 4-connected region, the label image, the number of regions), or None if empty."""
    labels, count = ndi.label(mask)
    if count == 0:
        return None
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return labels == largest, labels, count
