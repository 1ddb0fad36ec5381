"""The network: one shared 3D ResNet backbone (MONAI) with one linear head per task.

The first convolution has stride 2: at 128^3 the default stride 1 costs about 8x the compute for no
measurable gain on whole-series classification. `NetworkSpec` is saved in the model package, so a
package always rebuilds the network it was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from monai.networks.nets import ResNet
from torch import nn

# MONAI ResNet depths (BasicBlock for all of these: feature width = 8 x the first stage's width).
ARCHITECTURES: dict[str, list[int]] = {
    "resnet10": [1, 1, 1, 1],
    "resnet18": [2, 2, 2, 2],
    "resnet34": [3, 4, 6, 3],
}


@dataclass(frozen=True)
class NetworkSpec:
    architecture: str = "resnet10"
    width: int = 32  # channels of the first stage; MONAI's default is 64 (4x the parameters)
    grid: tuple[int, int, int] = (128, 128, 128)  # input (slices, rows, cols)
    first_stride: int = 2
    dropout: float = 0.2
    tasks: dict[str, list[str]] = field(default_factory=dict)  # task -> classes, in output order

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {sorted(ARCHITECTURES)}")
        if len(self.grid) != 3 or min(self.grid) < 16:
            raise ValueError(f"grid must be three sizes of at least 16, got {self.grid}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "grid" in known:
            known["grid"] = tuple(int(v) for v in known["grid"])
        if "tasks" in known:
            known["tasks"] = {str(k): [str(c) for c in v] for k, v in known["tasks"].items()}
        return cls(**known)


class MultiTaskResNet(nn.Module):
    """Input (batch, 1, slices, rows, cols) in [0, 1]; output task -> logits (batch, classes)."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        if not spec.tasks:
            raise ValueError("a network needs at least one task")
        self.spec = spec
        width = spec.width
        self.backbone = ResNet(
            block="basic",
            layers=ARCHITECTURES[spec.architecture],
            block_inplanes=[width, width * 2, width * 4, width * 8],
            spatial_dims=3,
            n_input_channels=1,
            conv1_t_stride=spec.first_stride,
            feed_forward=False,
        )
        self.dropout = nn.Dropout(spec.dropout)
        self.heads = nn.ModuleDict(
            {task: nn.Linear(width * 8, len(classes)) for task, classes in spec.tasks.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(x))
        return {task: head(features) for task, head in self.heads.items()}


def build_network(spec: NetworkSpec) -> MultiTaskResNet:
    return MultiTaskResNet(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def task_names(spec: NetworkSpec) -> Sequence[str]:
    return list(spec.tasks)
