"""Forward benchmark: the node's DimseSender against dcmtk storescu, same files, same storescp.

    python bench/forward_bench.py [--series itkelastix_chest] [--repeat 3] [--poll-delay 0.0001]

Both senders push the spooled files of one CT series to a dcmtk storescp (TCP_NODELAY=1 for the dcmtk
tools, TCP_NODELAY set by the node on its socket). Prints images/s for each (best of --repeat runs)
and the ratio node / storescu.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.config import ForwardSettings  # noqa: E402
from node.destinations import DimseDestination  # noqa: E402
from node.forward.dimse import DimseSender  # noqa: E402
from node.netloop import install_poll_delay  # noqa: E402
from tests.peers import ct_files, instance_files, require_binary, run_storescp  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", default="itkelastix_chest")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--poll-delay",
        type=float,
        default=0.0001,
        help="node.netloop poll delay as the node runs it (0: stock 1 ms loops)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.poll_delay > 0:
        install_poll_delay(args.poll_delay)
    storescu = require_binary("storescu")
    paths = ct_files(args.series)
    files = instance_files(paths)
    settings = ForwardSettings()
    sender = DimseSender(settings, "NODE")
    with tempfile.TemporaryDirectory(prefix="forward-bench-") as tmp:
        out = Path(tmp) / "in"
        with run_storescp(out) as scp:
            destination = DimseDestination(
                name="bench", ae_title=scp.ae_title, host="127.0.0.1", port=scp.port
            )
            dcmtk_times, node_times = [], []
            for _ in range(args.repeat):
                started = time.perf_counter()
                subprocess.run(
                    [storescu, "-aec", scp.ae_title, "127.0.0.1", str(scp.port), *map(str, paths)],
                    check=True,
                    env={**os.environ, "TCP_NODELAY": "1"},
                )
                dcmtk_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                outcome = sender.send(destination, files, lambda f, s: None)
                node_times.append(time.perf_counter() - started)
                if not outcome.ok:
                    print(f"node send failed: {outcome.error}", file=sys.stderr)
                    return 1
            shutil.rmtree(out, ignore_errors=True)
    n = len(files)
    dcmtk_rate, node_rate = n / min(dcmtk_times), n / min(node_times)
    print(f"series {args.series}: {n} instances, best of {args.repeat}, poll delay {args.poll_delay:g} s")
    print(f"storescu -> storescp: {dcmtk_rate:7.1f} images/s")
    print(f"node     -> storescp: {node_rate:7.1f} images/s")
    print(f"ratio node/storescu:  {node_rate / dcmtk_rate:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
