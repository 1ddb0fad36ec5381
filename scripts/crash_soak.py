"""kill -9 the node N times during 4 parallel transfers or while it forwards, and print per kill what
survived: the long version of tests/interop/test_crash_parallel.py (same trial: tests/crash_trial.py).

    python scripts/crash_soak.py --kills 20              # seed printed; each kill has its own seed
    python scripts/crash_soak.py --seed 4711 --kills 1    # replay one kill (its seed from a line below)
    python scripts/crash_soak.py --phase deliver --series qa_ge_head_tilt,kits00072_arterial_slab

Each kill is one trial on a fresh data folder and destination: 4 senders (one association and one series
each) send to a node in its own process, which forwards by a rule to dcmtk storescp; the node is killed
at a point drawn from the seed (after a random number of success statuses, or after a random number of
instances reached the destination), restarted on the same folder and ports; the senders re-send what got
no success status. Per kill it prints when it was killed, how many instances were acknowledged, lost
(must be 0), duplicates delivered (and how many the docs allow), and the time to recover. Exit status 1
when any kill lost an instance or broke a promise (the problems are printed).
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from pynetdicom import _config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.crash_trial import Phase, TrialReport, run_trial  # noqa: E402
from tests.modality import load_sources  # noqa: E402

DEFAULT_SERIES = "qa_ge_head_tilt,kits00072_arterial_slab,nsclcrg_r01001_chest,4dlung113_chest"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None, help="the first kill's seed (kill i: seed + i)")
    parser.add_argument(
        "--phase",
        choices=["receive", "deliver", "both"],
        default="both",
        help="where to kill; both: drawn per kill from its seed",
    )
    parser.add_argument("--series", default=DEFAULT_SERIES, help="comma-separated CT series, one per sender")
    parser.add_argument("--quiet-seconds", type=float, default=2.0, help="completion.quiet_seconds")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each recovery")
    parser.add_argument("--work", type=Path, default=None, help="keep the trials' folders here")
    args = parser.parse_args()

    # pynetdicom logs every refused connection while the node is down: the senders expect those.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the files' bytes as they are
    sources = load_sources(args.series.split(","))
    total = sum(len(s) for s in sources)
    print(
        f"crash soak: {args.kills} kills, first seed {seed}, {len(sources)} senders, {total} instances "
        f"({args.series}), quiet time {args.quiet_seconds:g} s",
        flush=True,
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="crash-soak-"))
    reports: list[TrialReport] = []
    for i in range(args.kills):
        trial_seed = seed + i
        phase: Phase
        if args.phase == "both":
            phase = "receive" if random.Random(trial_seed).random() < 0.5 else "deliver"
        else:
            phase = args.phase
        report = run_trial(
            work / f"kill-{i + 1:02d}", trial_seed, phase, sources, args.quiet_seconds, args.timeout
        )
        reports.append(report)
        print(f"kill {i + 1:2d}: {report.line()}", flush=True)
        for problem in report.problems[:20]:
            print(f"    PROBLEM {problem}", flush=True)
        if args.work is None and not report.problems:
            shutil.rmtree(work / f"kill-{i + 1:02d}")  # 2 copies of every instance; kept when it failed
    _summary(reports)
    print(f"trial folders: {work}")
    return 1 if any(r.problems or r.lost for r in reports) else 0


def _summary(reports: list[TrialReport]) -> None:
    by_phase = {p: [r for r in reports if r.phase == p] for p in ("receive", "deliver")}
    recover = [r.recover_seconds for r in reports]
    print(
        f"summary: {len(reports)} kills ({len(by_phase['receive'])} while receiving, "
        f"{len(by_phase['deliver'])} while delivering); acknowledged before the kills "
        f"{sum(r.acknowledged_at_kill for r in reports)}; lost {sum(r.lost for r in reports)}; "
        f"duplicates delivered {sum(r.duplicates for r in reports)} "
        f"(allowed {sum(r.allowed_duplicates for r in reports)}); "
        f"follow-ups {sum(r.follow_ups for r in reports)}; "
        f"kills with problems {sum(1 for r in reports if r.problems)}"
    )
    if recover:
        print(
            "time to recover (kill -> everything at the destination): "
            f"median {statistics.median(recover):.2f} s, "
            f"max {max(recover):.2f} s; restart median "
            f"{statistics.median(r.restart_seconds for r in reports):.2f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
