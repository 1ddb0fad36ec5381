"""Ingest benchmark: the same CT files sent by dcmtk storescu to dcmtk storescp, to Orthanc and to the node.

Each receiver gets the same files over one association, in the same run; the node acknowledges only after
fsync and a database commit, as in production. Prints images/s per receiver and the node's ratios.

    python bench/ingest_bench.py [--series itkelastix_chest lidc0001_full] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import storescu_seconds  # noqa: E402
from tests.nodeutil import node_process  # noqa: E402
from tests.peers import ct_files, free_port, run_orthanc, run_storescp  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", nargs="+", default=["itkelastix_chest", "lidc0001_full"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()
    files = [f for name in args.series for f in ct_files(name)]
    print(f"{len(files)} CT instances from {', '.join(args.series)}; {args.repeat} runs each, median shown")

    rates: dict[str, list[float]] = {"storescp": [], "orthanc": [], "node": []}
    for run in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            work = Path(tmp)
            with run_storescp(work / "storescp") as scp:
                rates["storescp"].append(len(files) / storescu_seconds(files, scp.port, scp.ae_title))
            if not args.no_orthanc:
                with run_orthanc(work / "orthanc") as orthanc:
                    rates["orthanc"].append(
                        len(files) / storescu_seconds(files, orthanc.dicom_port, "ORTHANC")
                    )
            (work / "node").mkdir()
            with node_process(work / "node", free_port(), log_level="WARNING") as node:
                rates["node"].append(len(files) / storescu_seconds(files, node.port, "NODE"))
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items() if v))

    median = {k: statistics.median(v) for k, v in rates.items() if v}
    print("\nreceiver        images/s")
    for name, value in median.items():
        print(f"{name:<15} {value:8.0f}")
    print(f"\nnode / storescp = {median['node'] / median['storescp']:.2f}")
    if "orthanc" in median:
        print(f"node / orthanc  = {median['node'] / median['orthanc']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
