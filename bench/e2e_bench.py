"""End-to-end benchmark: storescu -> router -> storescp, the node against Orthanc auto-routing.

The same CT series is sent by dcmtk storescu to the node (rules: every CT series to a dcmtk storescp;
completion.quiet_seconds 1) and to Orthanc (Lua OnStableSeries -> RestApiPost('/modalities/dest/store',
seriesId); StableAge 1) that forwards to its own storescp. Measured: from the last instance acknowledged
(storescu's exit) to the last instance written at the destination (the newest file's mtime), minus the
1 s quiet time. The node runs with classification off and on; each run sends a copy of the series with
new UIDs (so each is a new series); median of --repeat.

    python bench/e2e_bench.py [--series itkelastix_chest] [--instances 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    routing_node,
    routing_orthanc,
    storescu_seconds,
    synthetic_series,
    wait_for_files,
)
from tests.peers import StoreScp, ct_files, run_storescp  # noqa: E402

QUIET_SECONDS = 1.0


@contextlib.contextmanager
def node_router(work: Path, dest: StoreScp, classify: bool) -> Iterator[tuple[int, str]]:
    settings = {"classify": {"enabled": True, "device": "auto"}} if classify else {}
    with routing_node(work, {"dest": dest}, QUIET_SECONDS, **settings) as node:
        yield node.port, "NODE"


@contextlib.contextmanager
def orthanc_router(work: Path, dest: StoreScp) -> Iterator[tuple[int, str]]:
    with routing_orthanc(work, dest, stable_age=int(QUIET_SECONDS)) as orthanc:
        yield orthanc.dicom_port, "ORTHANC"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", default="itkelastix_chest")
    parser.add_argument("--instances", type=int, default=None,
                        help="synthesise a series of this many instances from the real slices (default: the "
                             "series as it is)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sources = ct_files(args.series)
    count = args.instances or len(sources)
    copies = [synthetic_series(sources, count, f"e2e-{args.series}-{run}") for run in range(args.repeat)]
    print(f"{count} instances ({args.series}{', synthesised' if args.instances else ''}); quiet time / "
          f"StableAge {QUIET_SECONDS:g} s; median of {args.repeat}")

    receivers = {
        "node (classification off)": lambda w, d: node_router(w, d, classify=False),
        "node (classification on)": lambda w, d: node_router(w, d, classify=True),
        "orthanc (Lua OnStableSeries)": orthanc_router,
    }
    latency: dict[str, list[float]] = {name: [] for name in receivers}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        for index, (name, start) in enumerate(receivers.items()):
            work = Path(tmp) / f"r{index}"
            for run, files in enumerate(copies):
                with run_storescp(work / f"dest-{run}") as dest, \
                        start(work / f"router-{run}", dest) as (port, ae):
                    storescu_seconds(files, port, ae)
                    acknowledged = time.time()
                    last_received = wait_for_files(dest, len(files))
                latency[name].append(last_received - acknowledged - QUIET_SECONDS)
                print(f"{name} run {run + 1}: {latency[name][-1]:.2f} s")

    median = {name: statistics.median(v) for name, v in latency.items()}
    orthanc = median["orthanc (Lua OnStableSeries)"]
    print(f"\n{'router':30s} {'seconds':>8s} {'/ orthanc':>10s}   (last ack -> last at destination - quiet)")
    for name, value in median.items():
        print(f"{name:30s} {value:8.2f} {value / orthanc if orthanc > 0 else float('nan'):10.2f}   "
              f"runs: {' / '.join(f'{v:.2f}' for v in latency[name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
