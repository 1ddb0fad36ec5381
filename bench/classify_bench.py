"""Classification benchmark: per-series latency (assemble / measure / preprocess / infer) and throughput.

    python bench/classify_bench.py [--model DIR] [--device auto|cpu|cuda] [--repeat 3]

For every DICOM series in ../shared/data/ct it prints the node's assembly time and the anatomical
measurements (coverage and blood pool: node.classify.measurements), with MONAI's own DICOM series
loader (LoadImage with PydicomReader, full resolution: what a MONAI pipeline does) run in
the same process on the same files, then the network's preprocess and inference time with the model
package the node would load. Then inference alone for the candidate backbones at 128^3 (the choice of
network), and, when CUDA is there, series per second for batches of 1..32 and for the whole path with
several assembly workers feeding one batching engine (what the node does with classify.workers).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.classify.engine import ClassifierEngine  # noqa: E402
from node.classify.labels import TASKS  # noqa: E402
from node.classify.measurements import MEASURE_IN_PLANE, measure  # noqa: E402
from node.classify.model import NetworkSpec, build_network  # noqa: E402
from node.classify.package import STARTER_PACKAGE, load_package  # noqa: E402
from node.volume import NotClassifiable, Volume, assemble_series  # noqa: E402
from tests.peers import CT_DATA_DIR, DICOM_SERIES, unpack_ct  # noqa: E402


def shared_dicom_series() -> tuple[str, ...]:
    """Every DICOM series of the shared manifest (the tests' DICOM_SERIES when there is no manifest)."""
    import csv

    manifest = CT_DATA_DIR / "manifest.csv"
    if not manifest.is_file():
        return DICOM_SERIES
    with manifest.open(newline="") as fh:
        return tuple(row["id"] for row in csv.DictReader(fh) if row["format"] == "dicom")


SERIES = shared_dicom_series()


def median_seconds(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def monai_load(folder: Path) -> object:
    from monai.transforms import LoadImage

    return LoadImage(reader="PydicomReader", image_only=True)(str(folder))


def per_series(engine: ClassifierEngine, repeat: int, with_monai: bool) -> list[Volume]:
    max_in_plane = max(engine.package.max_in_plane, MEASURE_IN_PLANE)  # as the node's analyser reads
    print(f"\nper series, CPU threads {torch.get_num_threads()}, median of {repeat} (ms)")
    header = (
        f"{'series':28s} {'slices':>6s} {'assemble':>9s} {'measure':>8s} {'preproc':>8s} {'infer':>7s} "
        f"{'total':>7s}"
    )
    if with_monai:
        header += f" {'MONAI load':>10s} {'ratio':>6s}"
    print(header)
    volumes, totals = [], []
    for name in SERIES:
        folder = unpack_ct(name)
        files = sorted(folder.glob("*.dcm"))
        assemble_s, assembled = median_seconds(
            lambda f=files: assemble_series(f, max_in_plane=max_in_plane), repeat
        )
        if isinstance(assembled, NotClassifiable):
            print(f"{name:28s} not classifiable: {assembled.reason}")
            continue
        assert isinstance(assembled, Volume)
        volumes.append(assembled)
        measure_s, _ = median_seconds(lambda v=assembled: measure(v), repeat)
        runs = [engine.predict([assembled])[0].timings_ms for _ in range(repeat)]
        pre = statistics.median(r["preprocess"] for r in runs)
        inf = statistics.median(r["infer"] for r in runs)
        total = assemble_s * 1000 + measure_s * 1000 + pre + inf
        totals.append(total)
        line = (
            f"{name:28s} {len(files):6d} {assemble_s * 1000:9.0f} {measure_s * 1000:8.0f} {pre:8.1f} "
            f"{inf:7.0f} {total:7.0f}"
        )
        if with_monai:
            monai_s, _ = median_seconds(lambda d=folder: monai_load(d), repeat)
            line += f" {monai_s * 1000:10.0f} {assemble_s / monai_s:6.2f}"
        print(line)
    if totals:
        print(f"median total per series: {statistics.median(totals):.0f} ms")
    if with_monai:
        print("ratio = node assembly time / MONAI LoadImage(PydicomReader) time on the same files")
    return volumes


def backbones(device: torch.device, repeat: int) -> None:
    print(f"\ninference alone at 128^3 on {device}, batch 1 (ms, median of {repeat})")
    tasks = {t: list(c) for t, c in TASKS.items()}
    for arch, width in (("resnet10", 32), ("resnet10", 64), ("resnet18", 64)):
        spec = NetworkSpec(architecture=arch, width=width, tasks=tasks)
        net = build_network(spec).to(device).eval()
        x = torch.rand(1, 1, *spec.grid, device=device)
        with torch.inference_mode():
            net(x)
            seconds, _ = median_seconds(lambda n=net, x=x: n(x), repeat)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f"  {arch} width {width:3d} ({params:5.1f}M parameters): {seconds * 1000:7.1f}")


def assemble_and_classify(engine: ClassifierEngine, jobs: list[list[Path]]) -> None:
    """One route worker: take series off the shared list until it is empty (list.pop is atomic)."""
    while True:
        try:
            mine = jobs.pop()
        except IndexError:
            return
        assembled = assemble_series(mine, max_in_plane=engine.package.max_in_plane)
        if isinstance(assembled, Volume):
            engine.classify(assembled)


def gpu_throughput(engine: ClassifierEngine, volumes: list[Volume], files: list[list[Path]]) -> None:
    print(f"\nGPU {engine.device_name}: series per second, network only (volumes already assembled)")
    for batch in (1, 4, 8, 16, 32):
        chunk = [volumes[i % len(volumes)] for i in range(batch)]
        engine.predict(chunk)
        torch.cuda.synchronize()
        seconds, _ = median_seconds(lambda c=chunk: engine.predict(c), 5)
        print(f"  batch {batch:3d}: {batch / seconds:8.1f} series/s")
    engine.max_batch = 8
    for workers in (1, 4, 8):
        jobs = [files[i % len(files)] for i in range(4 * workers)]
        count = len(jobs)
        start = time.perf_counter()
        threads = [
            threading.Thread(target=assemble_and_classify, args=(engine, jobs)) for _ in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(
            f"  whole path, {workers} assembly workers: {count / (time.perf_counter() - start):6.1f} series/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=STARTER_PACKAGE)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-monai", action="store_true", help="skip the MONAI loader comparison")
    args = parser.parse_args()
    if not CT_DATA_DIR.is_dir():
        sys.exit(f"no CT data at {CT_DATA_DIR}")
    package = load_package(args.model)
    engine = ClassifierEngine(package, device=args.device)
    print(f"model {package.model_id}, grid {package.spec.grid}, device {engine.device_name}")
    volumes = per_series(engine, args.repeat, with_monai=not args.no_monai)
    backbones(engine.device, args.repeat)
    if engine.on_gpu:
        files = [sorted(unpack_ct(name).glob("*.dcm")) for name in SERIES]
        gpu_throughput(engine, volumes, files)
    else:
        print("\nno CUDA device: GPU throughput not measured")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
