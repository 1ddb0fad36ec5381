"""The short fuzz run in the suite: one node, a few thousand seeded cases (C-STORE data sets, raw
associations and PDUs, STOW-RS requests), 0 crashes, 0 hangs, 0 acknowledged unreadable instances,
a good peer always in. The seed is fixed and printed; a failure names each case (replay it with
`python bench/fuzz_long.py --seed SEED --case N`) and writes its bytes under the test's tmp directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.fuzz.campaign import Campaign

SEED = 20261202
CASES = 2000
# The run stops early past this (a loaded 2-core machine); it must still have covered MIN_CASES.
TIME_LIMIT_S = 100.0
MIN_CASES = 300


def test_fuzz_short(tmp_path: Path) -> None:
    # The node's spool and database on tmpfs: the cases test the protocol, not the disk's fsync.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None, prefix="node-fuzz-") as work:
        campaign = Campaign(
            Path(work), SEED, CASES, time_limit_s=TIME_LIMIT_S, dump_dir=tmp_path / "findings"
        )
        report = campaign.run()
    text = "\n".join(report.lines())
    print(text)
    assert report.cases >= MIN_CASES, text
    assert report.acknowledged["store/valid"] > 0, "no valid control instance was stored and checked\n" + text
    assert report.good_peer_checks >= 2, text
    assert not report.crashes, text
    assert not report.hangs, text
    assert not report.good_peer_failures, text
    assert not report.acknowledged_unreadable, text
