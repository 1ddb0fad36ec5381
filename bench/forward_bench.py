"""Forward benchmark: the node's DimseSender against dcmtk storescu, same files, same storescp.

    python bench/forward_bench.py [--series itkelastix_chest] [--repeat 5] [--poll-delay 0.0001]

Each round sends the files of one CT series (as spooled: one Part 10 file per instance) to one dcmtk
storescp three times: with dcmtk storescu (TCP_NODELAY=1), with the node's sender as configured
(C-STORE fast path, node/deliver/wire.py) and with the node's sender using pynetdicom's own
send_c_store (fast_path=False). Prints images/s for each (best of --repeat rounds) and the ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
