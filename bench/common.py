"""Shared by the benchmarks: start the node as its own process, time a dcmtk storescu run."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.peers import _tcp_accepts, free_port, require_binary


@contextlib.contextmanager
def node_process(work: Path, rules: dict | None = None, quiet_seconds: float = 60.0) -> Iterator[int]:
    """`python -m node run` on a free port with its own data dir; yields the port."""
    port = free_port()
    config: dict[str, object] = {
        "data_dir": str(work / "data"),
        "receive": {"host": "127.0.0.1", "port": port},
        "completion": {"quiet_seconds": quiet_seconds},
        "retention": {"keep_seconds": None},
        "log_level": "WARNING",
    }
    if rules is not None:
        rules_path = work / "rules.yaml"
        rules_path.write_text(yaml.safe_dump(rules))
        config["rules_path"] = str(rules_path)
    config_path = work / "node.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = open(work / "node.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "run", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not _tcp_accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node did not start: {(work / 'node.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def storescu_seconds(files: list[Path], port: int, called_ae: str, extra: tuple[str, ...] = ()) -> float:
    """Wall time of one dcmtk storescu association sending `files` (TCP_NODELAY=1, as the DESIGN says)."""
    storescu = require_binary("storescu")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(str(f) for f in files))
    start = time.perf_counter()
    result = subprocess.run(
        [storescu, "-aet", "BENCH", "-aec", called_ae, *extra, "127.0.0.1", str(port), *map(str, files)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    os.unlink(listing.name)
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed
