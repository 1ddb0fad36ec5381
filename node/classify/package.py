"""Model packages: a versioned directory in MONAI bundle layout, loaded once at start.

    <package>/
      configs/metadata.json   name, version, classes, preprocessing, network, training summary, metrics
      models/model.pt         the weights (a state_dict), checked against metadata's weights_sha256
      docs/README.md          optional: the model card

Nothing is ever downloaded: a package is a directory on disk, shipped with the node or trained on site
with `dicom-node train`. Every inconsistency is a `ModelPackageError` that names the file and the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from node.classify.fusion import FusionWeights
from node.classify.labels import TASKS
from node.classify.model import MultiTaskResNet, NetworkSpec, build_network
from node.classify.preprocess import WINDOW_HU
from node.errors import NodeError

logger = logging.getLogger(__name__)

METADATA = Path("configs") / "metadata.json"
WEIGHTS = Path("models") / "model.pt"
# The model shipped with the node (trained on ../shared/data/ct; see docs/model-card.md).
STARTER_PACKAGE = Path(__file__).resolve().parent / "models" / "ct-starter"


class ModelPackageError(NodeError):
    """A model package that is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    name: str
    version: str
    spec: NetworkSpec
    window_hu: tuple[float, float]
    metadata: dict[str, Any]

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tasks(self) -> dict[str, list[str]]:
        return self.spec.tasks

    @property
    def max_in_plane(self) -> int:
        """In-plane size slices are block-averaged to while read (training and inference alike)."""
        preprocessing = self.metadata.get("node", {}).get("preprocessing", {})
        return int(preprocessing.get("max_in_plane") or 2 * max(self.spec.grid))

    @property
    def fusion_weights(self) -> FusionWeights:
        """The per-source reliabilities fusion uses with this package (node.fusion.weights in the metadata);
        the documented defaults for a package that records none."""
        recorded = self.metadata.get("node", {}).get("fusion", {}).get("weights")
        if not isinstance(recorded, dict):
            return FusionWeights()
        defaults = FusionWeights().as_dict()
        merged = {task: {**defaults.get(task, {}), **dict(w)} for task, w in recorded.items()}
        return FusionWeights({**defaults, **merged})

    def load_network(self, device: torch.device | str = "cpu") -> MultiTaskResNet:
        network = build_network(self.spec)
        weights = self.path / WEIGHTS
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except RuntimeError as exc:
            raise ModelPackageError(f"{weights}: weights do not fit the network: {exc}") from exc
        return network.to(device).eval()


def _require(data: dict[str, Any], key: str, where: Path) -> Any:
    if key not in data:
        raise ModelPackageError(f"{where}: missing field {key!r}")
    return data[key]


def load_package(path: Path | str, *, check_vocabulary: bool = True) -> ModelPackage:
    """Read and validate a package directory (weights are checked by digest, loaded by `load_network`)."""
    root = Path(path)
    if not root.is_dir():
        raise ModelPackageError(f"model package {root} does not exist (set classify.model_dir)")
    meta_path = root / METADATA
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise ModelPackageError(f"{meta_path}: missing (not a MONAI bundle layout package)") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelPackageError(f"{meta_path}: unreadable: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ModelPackageError(f"{meta_path}: expected a JSON object")
    name = str(_require(metadata, "name", meta_path))
    version = str(_require(metadata, "version", meta_path))
    node_section = _require(metadata, "node", meta_path)
    try:
        spec = NetworkSpec.from_dict(_require(node_section, "network", meta_path))
    except (TypeError, ValueError) as exc:
        raise ModelPackageError(f"{meta_path}: field 'node.network' is invalid: {exc}") from exc
    classes = _require(node_section, "classes", meta_path)
    if classes != spec.tasks:
        raise ModelPackageError(f"{meta_path}: 'node.classes' and 'node.network.tasks' differ")
    if check_vocabulary:
        for task, expected in TASKS.items():
            got = classes.get(task)
            if got != list(expected):
                raise ModelPackageError(
                    f"{meta_path}: classes of task {task!r} are {got}, "
                    f"the node's vocabulary is {list(expected)}"
                )
    preprocessing = _require(node_section, "preprocessing", meta_path)
    window_hu = tuple(float(v) for v in _require(preprocessing, "window_hu", meta_path))
    if len(window_hu) != 2 or window_hu[0] >= window_hu[1]:
        raise ModelPackageError(f"{meta_path}: 'node.preprocessing.window_hu' must be [low, high]")
    weights = root / WEIGHTS
    if not weights.is_file():
        raise ModelPackageError(f"{weights}: missing")
    expected_digest = node_section.get("weights_sha256")
    if expected_digest and _sha256(weights) != expected_digest:
        raise ModelPackageError(f"{weights}: sha256 differs from 'node.weights_sha256' in {meta_path}")
    return ModelPackage(root, name, version, spec, (window_hu[0], window_hu[1]), metadata)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_metadata(
    name: str,
    version: str,
    spec: NetworkSpec,
    *,
    description: str,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    window_hu: tuple[float, float] = WINDOW_HU,
    max_in_plane: int | None = None,
    fusion: FusionWeights | None = None,
) -> dict[str, Any]:
    """metadata.json content: MONAI bundle fields plus a `node` section that the node reads (network,
    classes, preprocessing, training, metrics, and the fusion weights used with this network)."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "name": name,
        "version": version,
        "changelog": {version: description},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {},
        "task": "CT series classification: body part, imaging axis, IV contrast",
        "description": description,
        "authors": "dicom-node",
        "copyright": "see docs/model-card.md",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": list(spec.grid),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "CT, HU window scaled to [0, 1]"},
                }
            },
            "outputs": {
                task: {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(classes),
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_onehot": False,
                    "channel_def": {str(i): c for i, c in enumerate(classes)},
                }
                for task, classes in spec.tasks.items()
            },
        },
        "node": {
            "network": spec.to_dict(),
            "classes": spec.tasks,
            "preprocessing": {
                "window_hu": list(window_hu),
                "grid": list(spec.grid),
                "max_in_plane": max_in_plane or 2 * max(spec.grid),
                "slice_order": "native (sorted along the slice normal)",
                "resize": "area where shrinking, then trilinear",
            },
            "training": training or {},
            "metrics": metrics or {},
            "fusion": {
                "weights": (fusion or FusionWeights()).as_dict(),
                "method": "log-linear pooling; weights are per-source reliabilities (docs/classification.md)",
            },
        },
    }


def save_package(
    path: Path | str, network: torch.nn.Module, metadata: dict[str, Any], *, half: bool = True
) -> Path:
    """Write weights (fp16 by default: half the size, same predictions to ~1e-3) and metadata.json."""
    root = Path(path)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in network.state_dict().items()
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (root / WEIGHTS).write_bytes(buffer.getvalue())
    metadata = dict(metadata)
    metadata["node"] = dict(metadata["node"], weights_sha256=_sha256(root / WEIGHTS))
    metadata["node"]["saved_with"] = {"python": platform.python_version()}
    (root / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return root
