"""Forward benchmark: the node's sender and its whole delivery job against dcmtk storescu, same files.

    python bench/forward_bench.py [--series itkelastix_chest] [--repeat 5] [--poll-delay 0.0001]
                                  [--destinations 1,2,4] [--job-repeat 3]

Sender alone: each round sends the files of one CT series (as spooled: one Part 10 file per instance) to
one dcmtk storescp three times: with dcmtk storescu (TCP_NODELAY=1), with the node's sender as configured
(C-STORE fast path, node/deliver/wire.py) and with the node's sender using pynetdicom's own
send_c_store (fast_path=False). Prints images/s for each (best of --repeat rounds) and the ratios.

Whole delivery job: a node (`python -m node run`, classification off) receives the series from storescu
and forwards it by a rule to D storescp (D in --destinations, one delivery job each, forward.workers =
max(2, D)); timed from the first job's creation (queued by the router) to the last job's finish (claim,
read, send, record acknowledgements, finish; job timestamps in the node's database), against D storescu
sending the same files to the same D storescp at once. Median of --job-repeat, a fresh node each time.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    finished_deliveries,
    parallel_storescu_seconds,
    routing_node,
    storescu_seconds,
)
from node.config import ForwardSettings  # noqa: E402
from node.deliver.destinations import DimseDestination  # noqa: E402
from node.deliver.dimse import DimseSender  # noqa: E402
from node.pynetdicom_tuning import install  # noqa: E402
from tests.peers import ct_files, instance_files, require_binary, run_storescp  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--series", default="itkelastix_chest")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--poll-delay", type=float, default=0.0001,
                        help="node.pynetdicom_tuning poll delay as the node runs it (0: stock 1 ms loops)")
    parser.add_argument("--destinations", default="1,2,4",
                        help="comma-separated destination counts for the whole-job runs ('' to skip them)")
    parser.add_argument("--job-repeat", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # DimseSender relies on install() (as NodeService.start does); a 0.01 s cap leaves the 1 ms sleeps.
    install(args.poll_delay if args.poll_delay > 0 else 0.01)
    storescu = require_binary("storescu")
    paths = ct_files(args.series)
    files = instance_files(paths)
    settings = ForwardSettings()
    senders = {
        "node (fast path)": DimseSender(settings, "NODE"),
        "node (pynetdicom send_c_store)": DimseSender(settings, "NODE", fast_path=False),
    }
    dcmtk_times: list[float] = []
    node_times: dict[str, list[float]] = {name: [] for name in senders}
    with tempfile.TemporaryDirectory(prefix="forward-bench-") as tmp, run_storescp(Path(tmp) / "in") as scp:
        destination = DimseDestination(name="bench", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)
        for _ in range(args.repeat):
            started = time.perf_counter()
            subprocess.run([storescu, "-aec", scp.ae_title, "127.0.0.1", str(scp.port), *map(str, paths)],
                           check=True, env={**os.environ, "TCP_NODELAY": "1"})
            dcmtk_times.append(time.perf_counter() - started)
            for name, sender in senders.items():
                started = time.perf_counter()
                outcome = sender.send(destination, files, lambda f, s: None)
                node_times[name].append(time.perf_counter() - started)
                if not outcome.ok:
                    print(f"{name}: send failed: {outcome.error}", file=sys.stderr)
                    return 1
    n = len(files)
    dcmtk_rate = n / min(dcmtk_times)
    print(f"series {args.series}: {n} instances, best of {args.repeat}, poll delay {args.poll_delay:g} s")
    print(f"{'storescu':32s} -> storescp: {dcmtk_rate:7.1f} images/s")
    for name, times in node_times.items():
        rate = n / min(times)
        print(f"{name:32s} -> storescp: {rate:7.1f} images/s  (ratio to storescu {rate / dcmtk_rate:.2f})")
    if args.destinations:
        whole_job(paths, [int(d) for d in args.destinations.split(",")], args.job_repeat)
    return 0


def whole_job(paths: list[Path], counts: list[int], repeat: int) -> None:
    """The whole delivery job(s) to D destinations against D storescu at once, per D in counts."""
    n = len(paths)
    print(f"\nwhole delivery job (router's queueing -> last job finished), median of {repeat}, "
          f"{n} instances per destination")
    print(f"{'D':>2s} {'storescu s':>10s} {'node job s':>10s} {'of it send':>10s} "
          f"{'storescu/s':>10s} {'node/s':>8s} {'ratio':>6s}")
    for count in counts:
        dcmtk: list[float] = []
        job: list[float] = []
        send: list[float] = []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory(prefix="forward-job-") as tmp:
                work = Path(tmp)
                with contextlib.ExitStack() as stack:
                    scps = {f"dest{i}": stack.enter_context(run_storescp(work / f"dest{i}"))
                            for i in range(count)}
                    with routing_node(work / "node", scps, quiet_seconds=0.5,
                                      forward={"workers": max(2, count)}) as node:
                        storescu_seconds(paths, node.port, "NODE")
                        times = finished_deliveries(node, count)
                    job.append((max(t.finished_at for t in times)
                                - min(t.created_at for t in times)).total_seconds())
                    send.append(max(t.send_seconds for t in times))
                    ports = [scp.port for scp in scps.values()]
                    aes = [scp.ae_title for scp in scps.values()]
                    dcmtk.append(parallel_storescu_seconds([paths] * count, ports, aes))
        d, j, s = statistics.median(dcmtk), statistics.median(job), statistics.median(send)
        print(f"{count:2d} {d:10.3f} {j:10.3f} {s:10.3f} {n * count / d:10.0f} {n * count / j:8.0f} "
              f"{d / j:6.2f}")
    print("ratio = node images/s / storescu images/s (the whole job; 'of it send': the slowest job's sender)")


if __name__ == "__main__":
    raise SystemExit(main())
