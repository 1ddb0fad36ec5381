"""STOW-RS forward benchmark: the node's StowSender against a plain dicomweb-client upload, same files,
same Orthanc (with its DICOMweb plugin), same run.

    python bench/stow_forward_bench.py [--series itkelastix_chest] [--repeat 3] [--batch-size 10]

Each round uploads the files of one CT series to Orthanc twice, in requests of --batch-size instances:
with the node's sender (node/deliver/stow.py: the Part 10 files streamed from disk as they are) and
with dicomweb-client's ``store_instances`` (the files read with pydicom, which it encodes again). The
series is deleted from Orthanc after each upload, so every upload stores every instance. Prints the
median images/s of each over --repeat rounds and their ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402
from dicomweb_client.api import DICOMwebClient  # noqa: E402

from node.deliver.destinations import DicomwebDestination  # noqa: E402
from node.deliver.stow import StowSender  # noqa: E402
from tests.peers import Orthanc, ct_files, instance_files, run_orthanc  # noqa: E402


def clear(orthanc: Orthanc) -> None:
    """Delete every study from Orthanc, so the next upload stores each instance again."""
    for study in orthanc.rest.get_json("/studies"):  # type: ignore[union-attr]
        request = urllib.request.Request(f"{orthanc.rest.base_url}/studies/{study}", method="DELETE")
        urllib.request.urlopen(request, timeout=60).close()


def node_upload(orthanc: Orthanc, paths: list[Path], batch_size: int) -> float:
    files = instance_files(paths)
    destination = DicomwebDestination(
        name="bench", kind="dicomweb", url=orthanc.dicomweb_root, batch_size=batch_size
    )
    started = time.perf_counter()
    outcome = StowSender().send(destination, files, lambda f, s: None)
    elapsed = time.perf_counter() - started
    if not outcome.ok:
        raise RuntimeError(f"node upload failed: {outcome.error}")
    return elapsed


def dicomweb_client_upload(orthanc: Orthanc, paths: list[Path], batch_size: int) -> float:
    client = DICOMwebClient(orthanc.dicomweb_root)
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        datasets = [pydicom.dcmread(p) for p in paths[start : start + batch_size]]
        response = client.store_instances(datasets)
        if response.get("FailedSOPSequence"):
            raise RuntimeError(f"dicomweb-client upload failed: {json.dumps(response.to_json_dict())[:500]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--series", default="itkelastix_chest")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    paths = ct_files(args.series)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    methods = {"node StowSender": node_upload, "dicomweb-client store_instances": dicomweb_client_upload}
    times: dict[str, list[float]] = {name: [] for name in methods}
    tmp = tempfile.TemporaryDirectory(prefix="stow-bench-")
    with tmp, run_orthanc(Path(tmp.name) / "orthanc") as orthanc:
        for _ in range(args.repeat):
            for name, upload in methods.items():
                times[name].append(upload(orthanc, paths, args.batch_size))
                stored = len(orthanc.rest.instances())
                if stored != len(paths):
                    raise RuntimeError(f"{name}: Orthanc holds {stored} instances, expected {len(paths)}")
                clear(orthanc)
    print(f"series {args.series}: {len(paths)} instances, {size_mb:.1f} MB; batch size {args.batch_size}; "
          f"median of {args.repeat} rounds; Orthanc {orthanc.rest.base_url}")
    rates = {}
    for name, samples in times.items():
        rates[name] = len(paths) / statistics.median(samples)
        print(f"  {name:34s} {rates[name]:7.1f} images/s  (rounds: "
              + ", ".join(f"{len(paths) / t:.0f}" for t in samples) + ")")
    node_rate, client_rate = rates.values()
    print(f"  ratio node / dicomweb-client: {node_rate / client_rate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
