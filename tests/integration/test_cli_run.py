"""`dicom-node run` as an operator sees it: a port in use, and what the log says (and does not say)."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid

from tests.interop.e2e import write_rules
from tests.nodeutil import (
    NodeProcess,
    make_settings,
    node_process_settings,
    running_node,
    store,
    synthetic_ct,
    wait_for,
)
from tests.peers import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port that something else already listens on (a free one, taken by this socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        yield int(blocker.getsockname()[1])


def run_node(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # From the repository root, so that `-m node` is this checkout's package.
    return subprocess.run(
        [sys.executable, "-m", "node", "run", *argv], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "node.yaml"
    settings = {
        "data_dir": str(tmp_path / "data"),
        "receive": {"host": "127.0.0.1", "port": port},
        "classify": {"enabled": False},
    }
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return config


def assert_one_line_error(done: subprocess.CompletedProcess[str], port: int) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert f"127.0.0.1:{port}" in errors[0] and "in use" in errors[0]
    return errors[0]


def test_port_in_use_from_the_config_file(busy_port: int, tmp_path: Path) -> None:
    config = write_config(tmp_path, busy_port)
    line = assert_one_line_error(run_node(["--config", str(config)]), busy_port)
    assert f"receive.host / receive.port in {config}" in line


def test_port_in_use_from_the_command_line(busy_port: int, tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())
    line = assert_one_line_error(run_node(["--config", str(config), "--port", str(busy_port)]), busy_port)
    assert "--port" in line


# --- the start-up log -----------------------------------------------------------------------------


def test_start_up_log_names_the_rules_in_force(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from node.rules import load_rules

    rules = write_rules(
        tmp_path / "rules.yaml", {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}}
    )
    digest = load_rules(rules).sha256
    assert digest is not None
    with caplog.at_level(logging.INFO, logger="node"):
        with running_node(make_settings(tmp_path, rules_path=str(rules))):
            pass
    lines = [
        r.getMessage() for r in caplog.records if r.name == "node.app" and r.getMessage().startswith("rules:")
    ]
    assert lines == [f"rules: {rules} (1 rules, 1 destinations, sha256 {digest[:12]})"]


def test_start_up_log_warns_that_without_rules_nothing_is_forwarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="node"):
        with running_node(make_settings(tmp_path)):
            pass
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "node.app"
    ]
    assert len(warnings) == 1
    assert "no rules file configured" in warnings[0] and "NOT forwarded" in warnings[0]


def test_process_log_has_no_per_instance_scheduler_lines_and_one_line_per_failed_reload(
    tmp_path: Path,
) -> None:
    """289 "Added job" lines for one series flooded INFO; a broken rules file on SIGHUP was logged twice."""
    rules = write_rules(
        tmp_path / "rules.yaml", {"x": {"ae_title": "X", "host": "127.0.0.1", "port": 104}}, modality="MR"
    )
    settings = node_process_settings(tmp_path, free_port(), rules, completion={"quiet_seconds": 1.0})
    node = NodeProcess(tmp_path, settings).start()
    try:
        series_uid = generate_uid()
        statuses = store(node.port, [synthetic_ct(series_uid, number=i + 1) for i in range(20)])
        assert statuses == [0] * 20
        wait_for(lambda: f"series {series_uid} complete" in node.log_path.read_text(), what="series complete")

        rules.write_text("version: 1\nrules: [{name: broken, send_to: [nowhere]}]\n", encoding="utf-8")
        assert node.process is not None
        node.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in node.log_path.read_text(), what="the failed reload in the log")
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(timeout=60) == 0
    finally:
        node.stop()
    log = node.log_path.read_text().splitlines()
    assert [line for line in log if "Added job" in line or "apscheduler" in line] == []
    assert [line for line in log if "Received Store Request" in line] == []  # pynetdicom, per instance
    assert len([line for line in log if "reload failed" in line]) == 1, "\n".join(log)
    assert len([line for line in log if f"rules: {rules} (1 rules, 1 destinations, sha256 " in line]) == 1
