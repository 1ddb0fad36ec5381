"""A tiny model package for tests: real network code, random weights, seconds to build and run."""

from __future__ import annotations

from pathlib import Path

import torch

from node.classify.labels import TASKS
from node.classify.model import NetworkSpec, build_network
from node.classify.package import bundle_metadata, save_package

TINY_SPEC = NetworkSpec(grid=(32, 32, 32), width=8, tasks={t: list(c) for t, c in TASKS.items()})


def tiny_package(directory: Path, *, name: str = "tiny-test", version: str = "0.0.1", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    network = build_network(TINY_SPEC).eval()
    metadata = bundle_metadata(name, version, TINY_SPEC, description="random weights, for tests only")
    return save_package(directory, network, metadata)
