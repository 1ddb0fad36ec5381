"""From a volume in HU to the network's input: window, scale to [0, 1], resize to the fixed grid.

The volume keeps its native slice order (axis 0 = slices as acquired, sorted along the normal), so the
network sees a coronal series as coronal slices: that is what lets it tell the imaging axis.
Runs on whatever device the tensor is on, so on a GPU the resampling happens there too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

WINDOW_HU: tuple[float, float] = (-1000.0, 400.0)


def window(hu: torch.Tensor, window_hu: Sequence[float] = WINDOW_HU) -> torch.Tensor:
    low, high = float(window_hu[0]), float(window_hu[1])
    return ((hu.clamp(low, high) - low) / (high - low)).to(hu.dtype)


def resize(volume: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(D, H, W) -> (1, 1, *grid). Axes that shrink are area-averaged first (trilinear alone aliases)."""
    x = volume[None, None]
    shrunk = tuple(min(int(s), int(g)) for s, g in zip(x.shape[2:], grid, strict=True))
    if shrunk != tuple(x.shape[2:]):
        x = F.interpolate(x, size=shrunk, mode="area")
    if tuple(x.shape[2:]) != tuple(grid):
        x = F.interpolate(x, size=tuple(int(g) for g in grid), mode="trilinear", align_corners=False)
    return x


def to_network_input(
    voxels: np.ndarray | torch.Tensor,
    grid: Sequence[int],
    device: torch.device | str = "cpu",
    window_hu: Sequence[float] = WINDOW_HU,
) -> torch.Tensor:
    """HU voxels (slices, rows, cols) -> float32 tensor (1, 1, *grid) in [0, 1] on `device`."""
    tensor = torch.as_tensor(voxels, dtype=torch.float32)
    if tensor.ndim != 3:
        raise ValueError(f"expected a 3D volume (slices, rows, cols), got shape {tuple(tensor.shape)}")
    tensor = tensor.to(device, non_blocking=True)
    return resize(window(tensor, window_hu), grid)
