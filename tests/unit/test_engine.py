from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from node.classify.engine import ClassifierEngine, EngineError, resolve_device
from node.classify.labels import TASKS
from node.classify.package import METADATA, WEIGHTS, ModelPackageError, load_package
from node.volume import volume_from_array
from tests.classifyutil import tiny_package


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_package(tmp_path_factory.mktemp("pkg") / "tiny")


def volume(seed: int, slices: int = 40):
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-1000, 600, size=(slices, 64, 64)).astype(np.float32)
    return volume_from_array(hu, (2.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def test_prediction_has_every_class_probability_and_timings(package_dir: Path) -> None:
    engine = ClassifierEngine(load_package(package_dir), device="cpu")
    result = engine.predict([volume(1)])[0]
    assert result.model_id == "tiny-test@0.0.1" and result.device == "cpu" and result.batch_size == 1
    for task, classes in TASKS.items():
        probs = result.probabilities[task]
        assert list(probs) == list(classes)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.labels[task] == max(probs, key=probs.__getitem__)
    assert set(result.timings_ms) == {"preprocess", "infer"} and all(
        v > 0 for v in result.timings_ms.values()
    )


def test_concurrent_callers_are_batched_and_get_their_own_answers(package_dir: Path) -> None:
    engine = ClassifierEngine(load_package(package_dir), device="cpu", max_batch=4, batch_wait_ms=500)
    volumes = [volume(seed) for seed in range(4)]
    alone = engine.predict(volumes[:1])[0]
    results: dict[int, object] = {}
    barrier = threading.Barrier(4)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = engine.classify(volumes[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.close()
    assert max(r.batch_size for r in results.values()) > 1  # type: ignore[attr-defined]
    first = results[0].probabilities["body_part"]  # type: ignore[attr-defined]
    for cls, p in alone.probabilities["body_part"].items():
        assert first[cls] == pytest.approx(p, abs=1e-4)  # batching does not change an answer


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EngineError, match="neither cpu nor cuda|not a torch device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            resolve_device("cuda")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_package_errors_name_file_and_field(package_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match="does not exist"):
        load_package(tmp_path / "absent")

    no_meta = _copy(package_dir, tmp_path / "no_meta")
    (no_meta / METADATA).unlink()
    with pytest.raises(ModelPackageError, match="metadata.json: missing"):
        load_package(no_meta)

    wrong_classes = _copy(package_dir, tmp_path / "classes")
    meta = json.loads((wrong_classes / METADATA).read_text())
    meta["node"]["classes"]["axis"] = ["axial", "coronal"]
    meta["node"]["network"]["tasks"]["axis"] = ["axial", "coronal"]
    (wrong_classes / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ModelPackageError, match="classes of task 'axis'"):
        load_package(wrong_classes)

    tampered = _copy(package_dir, tmp_path / "tampered")
    (tampered / WEIGHTS).write_bytes((tampered / WEIGHTS).read_bytes() + b"x")
    with pytest.raises(ModelPackageError, match="sha256 differs"):
        load_package(tampered)

    misfit = _copy(package_dir, tmp_path / "misfit")
    meta = json.loads((misfit / METADATA).read_text())
    meta["node"]["network"]["width"] = 16
    del meta["node"]["weights_sha256"]
    (misfit / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ModelPackageError, match="do not fit the network"):
        load_package(misfit).load_network()
