"""Shared by the benchmarks: time one dcmtk storescu association."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.peers import require_binary


def storescu_seconds(files: list[Path], port: int, called_ae: str, extra: tuple[str, ...] = ()) -> float:
    """Wall time of one dcmtk storescu association sending `files` (TCP_NODELAY=1, as the DESIGN says)."""
    storescu = require_binary("storescu")
    start = time.perf_counter()
    result = subprocess.run(
        [storescu, "-aet", "BENCH", "-aec", called_ae, *extra, "127.0.0.1", str(port), *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed
