"""The classify step inside a running node (tiny random-weight package, pynetdicom on loopback).

What is checked here is the plumbing: every completed series gets prior, image answer, timings and
model id in the audit, rules see prediction.* / classifiable, and a series that cannot become a volume
is routed on its attributes with the reason. The shipped starter model is exercised end to end with
dcmtk in tests/interop/test_classify_end_to_end.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.classifyutil import tiny_package
from tests.interop.e2e import events
from tests.nodeutil import make_settings, running_node, store, synthetic_ct, wait_for
from tests.peers import in_process_scp


def ct_with_geometry(series_uid: str, study_uid: str, n: int, rows: int = 32) -> Dataset:
    """An axial slice of a body-like phantom: an ellipse of soft tissue under a layer of fat, in air, 12 mm
    pixels (a 38 cm field of view), so that the volume shows anatomy (random pixel bytes or a plain water
    cylinder would be `no_anatomy`)."""
    ds = synthetic_ct(series_uid, study_uid, number=n, rows=rows)
    yy, xx = np.mgrid[0:rows, 0:rows]
    body = ((yy - rows / 2) / (rows * 0.35)) ** 2 + ((xx - rows / 2) / (rows * 0.45)) ** 2 <= 1.0
    inner = ((yy - rows / 2) / (rows * 0.28)) ** 2 + ((xx - rows / 2) / (rows * 0.38)) ** 2 <= 1.0
    hu = np.where(inner, 40 + (yy + xx + n) % 7, np.where(body, -100, -1000))  # soft tissue in fat, in air
    stored = (hu + 1024).astype(np.uint16)  # HU = stored - 1024
    ds.PixelData = stored.tobytes()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 2.5 * n]
    ds.PixelSpacing = [12.0, 12.0]
    ds.SliceThickness = 2.5
    ds.BodyPartExamined = "CHEST"
    return ds


def rules_file(path: Path, port: int) -> Path:
    rules = {
        "version": 1,
        "destinations": {
            "archive": {"kind": "dimse", "ae_title": "TESTSCP", "host": "127.0.0.1", "port": port}
        },
        "rules": [
            {
                "name": "classified-axial",
                "when": {
                    "all": [
                        {"attribute": "classifiable", "equals": True},
                        {"attribute": "prediction.axis", "equals": "axial"},
                    ]
                },
                "send_to": ["archive"],
            },
            {
                "name": "not-classifiable",
                "when": {"attribute": "classifiable", "equals": False},
                "send_to": ["archive"],
            },
        ],
        "fallback": {"discard": True},
    }
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_package(tmp_path_factory.mktemp("model") / "tiny")


def test_classified_and_unclassifiable_series_are_audited_and_routed(tmp_path: Path, package: Path) -> None:
    study = generate_uid()
    volume_uid, flat_uid = generate_uid(), generate_uid()
    volume_series = [ct_with_geometry(volume_uid, study, n) for n in range(1, 13)]
    single_slice = [synthetic_ct(flat_uid, study, number=1)]  # no geometry, one slice
    with in_process_scp() as scp:
        settings = make_settings(
            tmp_path,
            rules_path=str(rules_file(tmp_path / "rules.yaml", scp.port)),
            classify={"enabled": True, "model_dir": str(package), "device": "cpu"},
        )
        with running_node(settings) as node:
            assert store(node.port, volume_series + single_slice) == [0] * 13
            wait_for(lambda: len(events(node, "route.decision")) == 2, timeout=60, what="two routings")
            wait_for(lambda: len(scp.uids()) == 13, timeout=60, what="13 instances delivered")
            analysed = {e.series_uid: e for e in events(node, "series.analysed")}
            decisions = {e.series_uid: e for e in events(node, "route.decision")}

    classified = analysed[volume_uid].details
    assert classified is not None
    assert classified["classifiable"] is True
    assert classified["model"] == "tiny-test@0.0.1"
    assert set(classified["image"]["probabilities"]) == {"body_part", "axis", "contrast"}
    assert len(classified["image"]["probabilities"]["body_part"]) == 16
    assert classified["prior"]["body_part"]["label"] == "Chest"
    assert classified["final"]["axis"] == {
        "label": "axial",
        "confidence": classified["final"]["axis"]["confidence"],
        "source": "geometry",
        "low_confidence": False,
        "prior_vs_image": classified["final"]["axis"]["prior_vs_image"],
        "sources": classified["final"]["axis"]["sources"],
    }
    assert set(classified["final"]["axis"]["sources"]) == {"prior", "image"}
    # The anatomical measurements ran (a phantom without vessels or lungs: no blood pool found).
    measurements = classified["measurements"]
    assert measurements["coverage"]["anatomical"] is True and measurements["blood"]["found"] is False
    assert {"assemble", "preprocess", "infer", "total", "measure_coverage"} <= set(classified["timings_ms"])
    assert classified["volume"]["slices"] == 12
    assert decisions[volume_uid].details["matched_rules"] == ["classified-axial"]

    flat = analysed[flat_uid].details
    assert flat["classifiable"] is False and flat["image"] is None
    assert flat["not_classifiable"]["code"] in {"single_slice", "no_geometry"}
    assert analysed[flat_uid].message.startswith("not classifiable: ")
    assert decisions[flat_uid].details["matched_rules"] == ["not-classifiable"]


def test_node_refuses_to_start_with_a_broken_model_package(tmp_path: Path, package: Path) -> None:
    import json
    import shutil
    import subprocess
    import sys

    broken = tmp_path / "broken"
    shutil.copytree(package, broken)
    metadata = json.loads((broken / "configs" / "metadata.json").read_text())
    metadata["node"]["classes"]["contrast"] = ["yes", "no"]  # swapped: the outputs would be read backwards
    metadata["node"]["network"]["tasks"]["contrast"] = ["yes", "no"]
    (broken / "configs" / "metadata.json").write_text(json.dumps(metadata))
    for model_dir, expected in (
        (tmp_path / "absent", "does not exist"),
        (broken, "classes of task 'contrast'"),
    ):
        config = tmp_path / "node.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "data_dir": str(tmp_path / "data"),
                    "receive": {"port": 0},
                    "classify": {"model_dir": str(model_dir)},
                }
            )
        )
        done = subprocess.run(
            [sys.executable, "-m", "node", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert expected in done.stderr and str(model_dir) in done.stderr


def test_compressed_series_decoded_in_a_process_pool(tmp_path: Path, package: Path) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from pydicom.uid import RLELossless

    from node.classify.analyser import ClassifyingAnalyser
    from node.classify.engine import ClassifierEngine
    from node.classify.package import load_package

    series_uid, study = generate_uid(), generate_uid()
    files = []
    for n in range(1, 9):
        ds = ct_with_geometry(series_uid, study, n)
        ds.compress(RLELossless)
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    engine = ClassifierEngine(load_package(package), device="cpu")
    analyser = ClassifyingAnalyser(engine, decoders=ProcessPoolExecutor(1))
    try:
        in_pool = analyser.analyse(series_uid, ct_with_geometry(series_uid, study, 1), files)
    finally:
        analyser.close()
    in_process = ClassifyingAnalyser(engine).analyse(
        series_uid, ct_with_geometry(series_uid, study, 1), files
    )
    assert in_pool.facts["classifiable"] is True
    assert in_pool.audit["volume"]["transfer_syntaxes"] == [RLELossless]
    assert in_pool.audit["image"]["probabilities"] == in_process.audit["image"]["probabilities"]


def test_random_pixel_bytes_are_not_classified(tmp_path: Path, package: Path) -> None:
    """A CT series of random pixel bytes shows no anatomy: not classifiable, no confident answer (it once came
    out "Chest 0.99, contrast yes 1.00")."""
    from node.classify.analyser import ClassifyingAnalyser
    from node.classify.engine import ClassifierEngine
    from node.classify.package import load_package

    series_uid, study = generate_uid(), generate_uid()
    rng = np.random.default_rng(1)
    files = []
    for n in range(1, 13):
        ds = ct_with_geometry(series_uid, study, n, rows=64)
        ds.PixelData = rng.integers(0, 4096, size=64 * 64, dtype=np.uint16).tobytes()
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    analyser = ClassifyingAnalyser(ClassifierEngine(load_package(package), device="cpu"))
    result = analyser.analyse(series_uid, ct_with_geometry(series_uid, study, 1), files)
    assert result.facts["classifiable"] is False
    assert result.facts["classification.code"] == "no_anatomy"
    assert result.facts["classification.reason"].startswith("no anatomy")
    assert result.audit["image"] is None
    # Only the tags speak (BodyPartExamined CHEST, SeriesDescription "CHEST WO").
    for task in ("body_part", "contrast"):
        assert result.facts[f"prediction.{task}_source"] == "prior"
        assert result.facts[f"prediction.{task}"] == result.facts[f"prior.{task}"]
