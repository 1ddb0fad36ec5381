"""A large instance costs the node about its own size in memory, once (receive fast path: the File Meta
and the fragments go into one buffer, the header is decoded without the pixel data). Before: 3.2x."""

from __future__ import annotations

import os
from pathlib import Path

from bench.common import PeakRss, parallel_storescu_seconds
from tests.nodeutil import node_process, synthetic_ct
from tests.peers import free_port, require_binary

MiB = 2**20


def test_a_200_mib_instance_raises_the_nodes_peak_rss_by_less_than_1_5_times_its_size(tmp_path: Path) -> None:
    require_binary("storescu")
    ds = synthetic_ct(rows=512)
    frame = 512 * 512 * 2
    ds.NumberOfFrames = 200 * MiB // frame
    ds.PixelData = os.urandom(frame) * int(ds.NumberOfFrames)
    path = tmp_path / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    del ds
    size = path.stat().st_size
    port = free_port()
    (tmp_path / "node").mkdir()
    receive = {"host": "127.0.0.1", "port": port}
    with node_process(tmp_path / "node", port, log_level="WARNING", receive=receive) as node:
        assert node.process is not None
        rss = PeakRss(node.process.pid)
        try:
            started = rss.peak_mb()
            rss.reset()
            parallel_storescu_seconds([[path]], port, "NODE")
            above = (rss.peak_mb() - started) * 1e6
        finally:
            rss.close()
        stored = list((tmp_path / "node" / "data" / "spool" / "instances").rglob("*.dcm"))
    # The same data set behind the node's own File Meta: a few bytes apart.
    assert len(stored) == 1 and abs(stored[0].stat().st_size - size) < 1024
    assert above < 1.5 * size, f"peak RSS rose by {above / MiB:.0f} MiB for a {size / MiB:.0f} MiB instance"
