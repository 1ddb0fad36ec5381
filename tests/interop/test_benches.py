"""Smoke tests of the benchmarks (bench/): each runs on a few instances against its real peers, exits 0
and prints its table with a figure for every receiver or sender. No figure is judged: benches print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import REPO_ROOT, require_binary, unpack_ct

pytestmark = pytest.mark.interop

SMALL = "kits00072_arterial_slab"  # 18 slices


def run_bench(script: str, *args: str) -> str:
    unpack_ct(SMALL)  # skips here (not inside the bench) when the data is absent
    require_binary("storescu")
    require_binary("storescp")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / script), *args],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def figure(output: str, label: str) -> list[float]:
    """The numbers on the line of the final table that starts with `label`."""
    lines = [line for line in output.splitlines() if line.startswith(label)]
    assert lines, f"no line {label!r} in:\n{output}"
    return [float(n) for n in re.findall(r"\d+\.?\d*", lines[-1][len(label):])]


def test_e2e_bench_prints_the_latency_of_the_node_both_ways_and_of_orthanc(tmp_path: Path) -> None:
    require_binary("Orthanc")
    out = run_bench("e2e_bench.py", "--series", SMALL, "--instances", "5", "--repeat", "1")
    assert "5 instances" in out
    for router in ("node (classification off)", "node (classification on)", "orthanc (Lua OnStableSeries)"):
        assert len(figure(out, router)) >= 2, out  # seconds and the ratio to Orthanc


def test_ingest_bench_prints_the_ceiling_and_the_ratios(tmp_path: Path) -> None:
    out = run_bench("ingest_bench.py", "--series", SMALL, "--repeat", "1", "--no-orthanc")
    assert "18 CT instances" in out
    for receiver in ("storescp", "node", "fdatasync ceiling"):
        assert len(figure(out, f"{receiver:<19} ")) == 1, out
    assert figure(out, "node / fdatasync ceiling =") and figure(out, "node / storescp")


def test_ingest_bench_with_several_associations_prints_a_row_per_count_and_layout(tmp_path: Path) -> None:
    out = run_bench("ingest_bench.py", "--series", SMALL, "--repeat", "1", "--no-orthanc",
                    "--associations", "1,2")
    for row in (" 1 own series", " 2 own series", " 2 one series"):
        assert len(figure(out, row)) == 3, out  # storescp, node, node/storescp


def test_forward_bench_prints_the_whole_delivery_job_per_destination_count(tmp_path: Path) -> None:
    out = run_bench("forward_bench.py", "--series", SMALL, "--repeat", "1", "--job-repeat", "1",
                    "--destinations", "2")
    assert figure(out, "node (fast path)")
    assert len(figure(out, " 2 ")) == 6  # storescu s, job s, send s, both rates, ratio


def test_memory_bench_prints_the_node_peak_rss_per_phase(tmp_path: Path) -> None:
    out = run_bench("memory_bench.py", "--series", SMALL, "--instances", "10", "--parallel", "2",
                    "--quiet", "0.5")
    for phase in ("  after start-up", "  receiving 2 series", "  delivering 2 series"):
        assert figure(out, phase)[-1] > 0, out
