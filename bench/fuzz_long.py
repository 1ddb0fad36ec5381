"""The long fuzz run (issue 11 item 4; docs/security.md `## Fuzzing`): one node, up to --cases seeded
cases bounded by --minutes, then the figures: cases, crashes, hangs, refused-slot events, RSS over
time, acknowledged-unreadable instances by mutation, whether the good peer always got in.

    python bench/fuzz_long.py                          # 100,000 cases or 120 minutes, seed 1
    python bench/fuzz_long.py --seed 7 --case 38       # replay one case (its bytes under --dump)
    python bench/fuzz_long.py --cases 5000 --minutes 2 --no-stow

The node's data directory is on tmpfs (/dev/shm) unless --work says otherwise: the cases exercise
the protocol and ingest, not the disk. Exit status 1 when any target is missed (0 crashes, 0 hangs,
0 acknowledged unreadable, the good peer always in).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz.campaign import Campaign  # noqa: E402


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
    args = parser.parse_args(argv)
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
            only=args.case,
            dump_dir=args.dump,
            progress=lambda line: print(line, flush=True),
        )
        report = campaign.run()
    print("\n".join(report.lines()), flush=True)
    missed = report.crashes or report.hangs or report.acknowledged_unreadable or report.good_peer_failures
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
