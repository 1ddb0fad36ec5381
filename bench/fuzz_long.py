"""The long fuzz run (issue 11 item 4; docs/security.md `## Fuzzing`): one node, up to --cases seeded
cases bounded by --minutes, then the figures: cases, crashes, hangs, refused-slot events, RSS over
time, acknowledged-unreadable instances by mutation, whether the good peer always got in.

    python bench/fuzz_long.py                          # 100,000 cases or 120 minutes, seed 1
    python bench/fuzz_long.py --seed 7 --case 38       # replay one case (its bytes under --dump)
    python bench/fuzz_long.py --cases 5000 --minutes 2 --no-stow
    python bench/fuzz_long.py --workers 3 --minutes 60  # three processes, each its own node

--workers N runs N processes side by side, worker j taking cases j, j + N, j + 2N... (each case is still
drawn from its own seed and index, so a finding replays alone with --case), each against its own node,
and prints each worker's report, then their sum. On 2 cores, 3 workers run about twice as many cases per
second as one: a case spends most of its time waiting for the node's threads.

The node's data directory is on tmpfs (/dev/shm) unless --work says otherwise: the cases exercise
the protocol and ingest, not the disk. Exit status 1 when any target is missed (0 crashes, 0 hangs,
0 acknowledged unreadable, the good peer always in).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.campaign import Campaign, Report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=120.0, help="stop after this long (default 120)")
    parser.add_argument("--case", type=int, action="append", help="run only this case (repeatable)")
    parser.add_argument("--batch", type=int, default=500, help="cases between good-peer checks")
    parser.add_argument("--deadline", type=float, default=15.0, help="seconds a case may take")
    parser.add_argument("--no-stow", action="store_true", help="leave out the STOW-RS cases")
    parser.add_argument(
        "--family", action="append", choices=["store", "pdu", "stow"], help="only these families (repeatable)"
    )
    parser.add_argument("--work", type=Path, help="the node's data directory's parent (default: tmpfs)")
    parser.add_argument("--dump", type=Path, default=Path("fuzz-findings"), help="bytes of each finding")
    parser.add_argument("--workers", type=int, default=1, help="processes side by side (default 1)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by --workers for each process
    parser.add_argument("--report-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers > 1 and args.worker is None:
        return run_workers(args, argv if argv is not None else sys.argv[1:])
    report = run_campaign(args)
    if args.report_json is not None:
        args.report_json.write_text(json.dumps(report.to_json()))
    else:
        print("\n".join(report.lines()), flush=True)
    return _exit_status(report)


def _exit_status(report: Report) -> int:
    missed = report.crashes or report.hangs or report.acknowledged_unreadable or report.good_peer_failures
    return 1 if missed else 0


def run_campaign(args: argparse.Namespace) -> Report:
    only = args.case
    if args.worker is not None:
        only = [i for i in (args.case or range(args.cases)) if i % args.workers == args.worker]
    prefix = f"[worker {args.worker}] " if args.worker is not None else ""
    shm = Path("/dev/shm")
    parent = args.work or (shm if shm.is_dir() else None)
    with tempfile.TemporaryDirectory(dir=parent, prefix="node-fuzz-") as work:
        campaign = Campaign(
            Path(work),
            args.seed,
            args.cases,
            deadline_s=args.deadline,
            batch=args.batch,
            time_limit_s=args.minutes * 60,
            stow=not args.no_stow,
            families=set(args.family) if args.family else None,
            only=only,
            dump_dir=args.dump,
            progress=lambda line: print(prefix + line, flush=True),
        )
        return campaign.run()


def run_workers(args: argparse.Namespace, argv: list[str]) -> int:
    """--workers N: this script N times, each with --worker j, then the sum of their reports."""
    with tempfile.TemporaryDirectory(prefix="fuzz-workers-") as folder:
        outputs = [Path(folder) / f"worker-{j}.json" for j in range(args.workers)]
        processes = [
            subprocess.Popen([sys.executable, __file__, *argv, "--worker", str(j), "--report-json", str(out)])
            for j, out in enumerate(outputs)
        ]
        codes = [process.wait() for process in processes]
        reports = []
        for j, (out, code) in enumerate(zip(outputs, codes, strict=True)):
            if not out.exists():
                print(f"worker {j} ended with exit status {code} and no report: a crash of the run itself")
                return 1
            reports.append(Report.from_json(json.loads(out.read_text())))
    for j, report in enumerate(reports):
        print(f"\n==== worker {j} ====")
        print("\n".join(report.lines()), flush=True)
    total = Report.merged(reports)
    print(f"\n==== all {args.workers} workers (RSS: worker 0's) ====")
    print("\n".join(total.lines()), flush=True)
    return _exit_status(total)


if __name__ == "__main__":
    sys.exit(main())
