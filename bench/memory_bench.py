"""Memory benchmark: the node's peak RSS while receiving several long series at once, and while
delivering them.

    python bench/memory_bench.py [--series itkelastix_chest] [--instances 1000] [--parallel 4]

--parallel series of --instances each (synthesised from the real slices of --series, new UIDs) are sent
by as many dcmtk storescu associations at once into a node (`python -m node run`, classification off)
whose rule forwards every CT series to a dcmtk storescp. The node's peak RSS (its own process: the
kernel's VmHWM, reset between phases, cross-checked by sampling every 10 ms) is printed after start-up,
over the receive phase and over the delivery phase, in MB. The quiet time (--quiet, default 3 s) keeps
the deliveries after the receive phase.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    PeakRss,
    finished_deliveries,
    parallel_storescu_seconds,
    routing_node,
    synthetic_series,
)
from tests.peers import ct_files, run_storescp  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", default="itkelastix_chest")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--quiet", type=float, default=3.0)
    args = parser.parse_args()
    sources = ct_files(args.series)
    groups = [synthetic_series(sources, args.instances, f"memory-{args.series}-{i}")
              for i in range(args.parallel)]
    total = sum(map(len, groups))
    megabytes = sum(f.stat().st_size for g in groups for f in g) / 1e6
    print(f"{args.parallel} series x {args.instances} instances ({args.series} slices, new UIDs), "
          f"{total} instances, {megabytes:.0f} MB")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        work = Path(tmp)
        with run_storescp(work / "dest") as dest, \
                routing_node(work / "node", {"dest": dest}, quiet_seconds=args.quiet) as node:
            assert node.process is not None
            rss = PeakRss(node.process.pid)
            try:
                started = rss.peak_mb()
                rss.reset()
                seconds = parallel_storescu_seconds(groups, node.port, "NODE")
                received = rss.peak_mb()
                rss.reset()
                begun = time.perf_counter()
                finished_deliveries(node, args.parallel, timeout=1800)
                delivered = rss.peak_mb()
                delivery_seconds = time.perf_counter() - begun
            finally:
                rss.close()
    print(f"received in {seconds:.1f} s ({total / seconds:.0f} images/s), delivered "
          f"{delivery_seconds:.1f} s later (including the {args.quiet:g} s quiet time)")
    print("\nnode peak RSS (MB)")
    print(f"  after start-up           {started:8.0f}")
    print(f"  receiving {args.parallel} series     {received:8.0f}")
    print(f"  delivering {args.parallel} series    {delivered:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
