"""Ingest benchmark: the same CT files sent by dcmtk storescu to dcmtk storescp, to Orthanc and to the node.

Each receiver gets the same files over one association, in the same run; the node acknowledges only after
fsync and a database commit, as in production. Prints images/s per receiver, the physical ceiling of a
durable receive on the spool's file system (the same files written and fdatasync'ed one after another,
in a folder beside the node's spool) and the node's ratios.

With --associations 1,4,8: for each N, N storescu processes at once into each receiver, (a) each with its
own series (synthesised from the real slices of the first --series, new UIDs, as many instances each), and
(b) one series split across the N associations (instance i on association i mod N); images/s per N, ratios.

    python bench/ingest_bench.py [--series itkelastix_chest lidc0001_full] [--repeat 3] [--no-orthanc]
                                 [--associations 1,4,8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    durable_write_rate,
    parallel_storescu_seconds,
    print_medians,
    synthetic_series,
)
from tests.nodeutil import node_process  # noqa: E402
from tests.peers import ct_files, free_port, run_orthanc, run_storescp  # noqa: E402

# A receiver: given a work folder and the file groups (one per association), the images/s it took them at.
Receiver = Callable[[Path, Sequence[Sequence[Path]]], float]


def storescp_rate(work: Path, groups: Sequence[Sequence[Path]]) -> float:
    with run_storescp(work / "storescp") as scp:
        return sum(map(len, groups)) / parallel_storescu_seconds(groups, scp.port, scp.ae_title)


def orthanc_rate(work: Path, groups: Sequence[Sequence[Path]]) -> float:
    with run_orthanc(work / "orthanc") as orthanc:
        return sum(map(len, groups)) / parallel_storescu_seconds(groups, orthanc.dicom_port, "ORTHANC")


def node_rate(work: Path, groups: Sequence[Sequence[Path]], fast_path: bool = True) -> float:
    (work / "node").mkdir()
    port = free_port()
    # Every sender here is 127.0.0.1: room above receive.max_associations_per_host's default of 8, so the
    # limit never decides a run (it once refused some of 8 simultaneous associations: a starting one was
    # counted twice; fixed in HostLimitedServer.open_connections, tests/unit/test_netloop.py).
    receive = {
        "host": "127.0.0.1",
        "port": port,
        "max_associations_per_host": max(8, 2 * len(groups)),
        "fast_path": fast_path,
    }
    with node_process(work / "node", port, log_level="WARNING", receive=receive) as node:
        return sum(map(len, groups)) / parallel_storescu_seconds(groups, node.port, "NODE")


def node_pynetdicom_rate(work: Path, groups: Sequence[Sequence[Path]]) -> float:
    """The node with receive.fast_path off: every C-STORE through pynetdicom's DIMSE layer."""
    return node_rate(work, groups, fast_path=False)


def ceiling_rate(work: Path, groups: Sequence[Sequence[Path]]) -> float:
    # Beside where the node's spool would be (<work>/node/data/spool): the same file system.
    return durable_write_rate([f for g in groups for f in g], work / "node" / "data" / "ceiling")


def one_association(args: argparse.Namespace) -> None:
    files = [f for name in args.series for f in ct_files(name)]
    print(f"{len(files)} CT instances from {', '.join(args.series)}; {args.repeat} runs each, median shown")
    receivers: dict[str, Receiver] = {"storescp": storescp_rate, "orthanc": orthanc_rate, "node": node_rate,
                                      "fdatasync ceiling": ceiling_rate}
    if args.no_orthanc:
        del receivers["orthanc"]
    if args.compare_paths:
        receivers["node (pynetdicom)"] = node_pynetdicom_rate
    rates: dict[str, list[float]] = {name: [] for name in receivers}
    for run in range(args.repeat):
        for name, receive in receivers.items():
            with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                rates[name].append(receive(Path(tmp), [files]))
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))

    median = print_medians(rates, "receiver")
    print(f"\nnode / fdatasync ceiling = {median['node'] / median['fdatasync ceiling']:.2f}")
    print(f"node / storescp          = {median['node'] / median['storescp']:.2f}")
    if "orthanc" in median:
        print(f"node / orthanc           = {median['node'] / median['orthanc']:.2f}")


def several_associations(args: argparse.Namespace, counts: list[int]) -> None:
    sources = ct_files(args.series[0])
    most = max(counts)
    name = args.series[0]
    own_series = [synthetic_series(sources, len(sources), f"ingest-{name}-{i}") for i in range(most)]
    shared = synthetic_series(sources, len(sources) * most, f"ingest-{name}-shared")
    receivers: dict[str, Receiver] = {"storescp": storescp_rate, "orthanc": orthanc_rate, "node": node_rate}
    if args.no_orthanc:
        del receivers["orthanc"]
    print(f"\n{len(sources)} instances per association ({args.series[0]}, synthesised with new UIDs); "
          f"{args.repeat} runs each, median shown")
    header = f"{'N':>2s} {'layout':<14s} " + " ".join(f"{name:>9s}" for name in receivers)
    header += "  node/storescp" + ("  node/orthanc" if "orthanc" in receivers else "")
    rows = []
    for n in counts:
        layouts = {"own series": [list(s) for s in own_series[:n]]}
        if n > 1:
            split = shared[: len(sources) * n]
            layouts["one series"] = [split[i::n] for i in range(n)]
        for layout, groups in layouts.items():
            rates: dict[str, list[float]] = {name: [] for name in receivers}
            for _ in range(args.repeat):
                for name, receive in receivers.items():
                    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
                        rates[name].append(receive(Path(tmp), groups))
            median = {k: statistics.median(v) for k, v in rates.items()}
            row = f"{n:2d} {layout:<14s} " + " ".join(f"{median[name]:9.0f}" for name in receivers)
            row += f"  {median['node'] / median['storescp']:13.2f}"
            if "orthanc" in median:
                row += f"  {median['node'] / median['orthanc']:12.2f}"
            print(f"N={n} {layout}: " + ", ".join(f"{k} {v:.0f}/s" for k, v in median.items()))
            rows.append(row)
    print("\nimages/s (all associations together)")
    print(header)
    print("\n".join(rows))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", nargs="+", default=["itkelastix_chest", "lidc0001_full"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument(
        "--compare-paths",
        action="store_true",
        help="also run the node with receive.fast_path off (C-STORE through pynetdicom's DIMSE layer)",
    )
    parser.add_argument("--associations", default=None,
                        help="comma-separated counts of concurrent associations, e.g. 1,4,8 (runs only that)")
    args = parser.parse_args()
    if args.associations:
        several_associations(args, [int(n) for n in args.associations.split(",")])
    else:
        one_association(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
