"""Memory benchmark: the node's peak RSS while receiving several long series at once, and while
delivering them.

    python bench/memory_bench.py [--series itkelastix_chest] [--instances 1000] [--parallel 4]
    python bench/memory_bench.py --large-mb 600    # one instance of that size, both receive paths

--parallel series of --instances each (synthesised from the real slices of --series, new UIDs) are sent
by as many dcmtk storescu associations at once into a node (`python -m node run`, classification off)
whose rule forwards every CT series to a dcmtk storescp. The node's peak RSS (its own process: the
kernel's VmHWM, reset between phases, cross-checked by sampling every 10 ms) is printed after start-up,
over the receive phase and over the delivery phase, in MB. The quiet time (--quiet, default 3 s) keeps
the deliveries after the receive phase.

--large-mb N: instead, one multi-frame CT instance of N MiB (random pixels) sent by storescu to a node
with receive.fast_path on and then off; the node's peak RSS above its start-up RSS, in MiB and as a
multiple of the instance's size (the data set is held in memory once while it is stored).
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
from tests.nodeutil import node_process, synthetic_ct  # noqa: E402
from tests.peers import ct_files, free_port, run_storescp  # noqa: E402


def large_instance(megabytes: int) -> int:
    """One instance of `megabytes` MiB into a node, each receive path; prints the peak RSS above start."""
    import os

    with tempfile.TemporaryDirectory(prefix="bench-memory-large-") as tmp:
        work = Path(tmp)
        ds = synthetic_ct(rows=512)
        frame = 512 * 512 * 2
        ds.NumberOfFrames = max(1, megabytes * 2**20 // frame)
        ds.PixelData = os.urandom(frame) * int(ds.NumberOfFrames)
        path = work / "large.dcm"
        ds.save_as(path, enforce_file_format=True)
        del ds
        size_mb = path.stat().st_size / 2**20
        print(f"one instance of {size_mb:.0f} MiB ({path.stat().st_size} bytes), storescu -> node")
        for fast_path in (True, False):
            (work / str(fast_path)).mkdir()
            port = free_port()
            receive = {"host": "127.0.0.1", "port": port, "fast_path": fast_path}
            with node_process(work / str(fast_path), port, log_level="WARNING", receive=receive) as node:
                assert node.process is not None
                rss = PeakRss(node.process.pid)
                try:
                    started = rss.peak_mb()
                    rss.reset()
                    seconds = parallel_storescu_seconds([[path]], port, "NODE")
                    peak = rss.peak_mb()
                finally:
                    rss.close()
            above = peak - started
            ratio = above * 1e6 / 2**20 / size_mb
            print(f"  receive.fast_path {str(fast_path).lower():5s}: stored in {seconds:5.1f} s, node peak "
                  f"{peak:6.0f} MB, {above:6.0f} MB above start-up = {ratio:.2f}x the instance")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", default="itkelastix_chest")
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--quiet", type=float, default=3.0)
    parser.add_argument("--large-mb", type=int, default=None)
    args = parser.parse_args()
    if args.large_mb:
        return large_instance(args.large_mb)
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
