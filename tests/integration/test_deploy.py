"""The deployment files (deploy/) are consistent with the code, and the node runs as they run it.

Docker is not available to the tests: the image and compose file are checked for what can be checked
without it (configs load, names and passwords agree, referenced files exist). The process lifecycle that
the systemd unit and the container rely on (health check by C-ECHO, SIGHUP reloads the rules, SIGTERM
stops cleanly with exit status 0) is run for real with `dicom-node run` as a subprocess.
"""

from __future__ import annotations

import configparser
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from node.config import load_settings
from tests.pgserver import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
HEALTHCHECK = DEPLOY / "healthcheck.py"


def test_example_config_loads_with_the_documented_paths() -> None:
    settings = load_settings(DEPLOY / "node.yaml")
    assert settings.data_dir == Path("/var/lib/node")
    assert settings.rules_path == Path("/etc/node/rules.yaml")
    assert settings.database_url is None
    assert settings.resolved_database_url == "sqlite:////var/lib/node/node.db"
    assert settings.receive.port == 11112 and settings.receive.ae_title == "NODE"


def test_image_moves_the_data_dir_to_the_volume(tmp_path: Path) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert 'pip install ".[postgres]"' in dockerfile
    assert re.search(r"^USER node$", dockerfile, re.M) and re.search(r"^VOLUME /data$", dockerfile, re.M)
    assert re.search(r"^EXPOSE 11112 8080$", dockerfile, re.M)
    assert 'CMD ["dicom-node", "run", "--config", "/etc/node/node.yaml"]' in dockerfile
    # The image rewrites data_dir with this sed expression; apply the same rewrite and load the result.
    assert "sed -i 's|^data_dir: .*|data_dir: /data|' /etc/node/node.yaml" in dockerfile
    baked = re.sub(r"^data_dir: .*$", "data_dir: /data", (DEPLOY / "node.yaml").read_text(), flags=re.M)
    (tmp_path / "node.yaml").write_text(baked)
    assert load_settings(tmp_path / "node.yaml").data_dir == Path("/data")
    for source in re.findall(r"^COPY (?!--)(\S+)", dockerfile, re.M):
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


def test_compose_file_wires_node_postgres_and_orthanc() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"node", "postgres", "orthanc"}
    node = services["node"]
    build = node["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert node["depends_on"] == {
        "postgres": {"condition": "service_healthy"}, "orthanc": {"condition": "service_healthy"},
    }
    for service in services.values():
        assert "healthcheck" in service
    mounts = {m.split(":")[1]: m.split(":")[0] for m in node["volumes"] if m.startswith("./")}
    assert set(mounts) == {"/etc/node/node.yaml", "/etc/node/rules.yaml"}
    for host_path in mounts.values():
        assert (DEPLOY / host_path).is_file()

    settings = load_settings(DEPLOY / mounts["/etc/node/node.yaml"])
    assert settings.data_dir == Path("/data")
    assert settings.rules_path == Path("/etc/node/rules.yaml")
    pg = services["postgres"]["environment"]
    assert settings.database_url == (
        f"postgresql+psycopg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )
    rules = yaml.safe_load((DEPLOY / mounts["/etc/node/rules.yaml"]).read_text())
    orthanc_env = services["orthanc"]["environment"]
    pacs = rules["destinations"]["pacs"]
    assert (pacs["host"], pacs["ae_title"], str(pacs["port"])) == (
        "orthanc", orthanc_env["ORTHANC__DICOM_AET"], orthanc_env["ORTHANC__DICOM_PORT"],
    )


def test_compose_rules_pass_rules_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "node", "rules", "check", str(DEPLOY / "compose" / "rules.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_has_the_lifecycle_the_node_expects(tmp_path: Path) -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "node.service")
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "60"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].split()[1:] == ["run", "--config", "/etc/node/node.yaml"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: the unit's syntax was not verified by systemd")
    # The ExecStart binary does not exist here; verify everything else with a stand-in.
    probe = tmp_path / "node.service"
    probe.write_text((DEPLOY / "node.service").read_text().replace(service["ExecStart"], "/bin/true"))
    result = subprocess.run([analyze, "verify", str(probe)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "node.service" not in result.stderr, result.stderr


# --- the process, as systemd and docker run it ---------------------------------------------------


def healthcheck(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HEALTHCHECK), str(config)], capture_output=True, text=True,
                          timeout=60)


def audit_events(data_dir: Path, prefix: str) -> list[str]:
    engine = create_engine(f"sqlite:///{data_dir / 'node.db'}")
    try:
        with engine.connect() as conn:
            return list(conn.execute(
                text("SELECT event FROM audit_events WHERE event LIKE :p ORDER BY id"), {"p": prefix + "%"}
            ).scalars())
    finally:
        engine.dispose()


def wait_until(condition: object, what: str, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"node exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)  # polling interval of a condition with a deadline, not synchronisation


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    data_dir = tmp_path / "data"
    config = tmp_path / "node.yaml"
    rules = tmp_path / "rules.yaml"
    shutil.copy(DEPLOY / "compose" / "rules.yaml", rules)
    example = (DEPLOY / "node.yaml").read_text()
    example = re.sub(r"^data_dir: .*$", f"data_dir: {data_dir}", example, flags=re.M)
    example = re.sub(r"^rules_path: .*$", f"rules_path: {rules}", example, flags=re.M)
    example = re.sub(r"^  host: 0\.0\.0\.0$", "  host: 127.0.0.1", example, flags=re.M)
    example = re.sub(r"^  port: 11112$", f"  port: {free_port()}", example, flags=re.M)
    example = re.sub(r"^  port: 8080$", f"  port: {free_port()}", example, flags=re.M)  # the web port
    config.write_text(example)
    log = (tmp_path / "node.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "node", "run", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc, config, data_dir
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        log.close()


def test_node_answers_the_healthcheck_reloads_on_hup_and_stops_on_term(
    node_process: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    proc, config, data_dir = node_process
    wait_until(lambda: healthcheck(config).returncode == 0, "the health check to pass", proc)
    ok = healthcheck(config)
    assert ok.returncode == 0 and "success" in ok.stdout
    assert "ready (http://127.0.0.1:" in ok.stdout  # the example config has the web side on
    before = len(audit_events(data_dir, "rules."))

    proc.send_signal(signal.SIGHUP)  # systemctl reload / docker kill -s HUP
    wait_until(lambda: len(audit_events(data_dir, "rules.")) > before, "a rules audit row after SIGHUP", proc)
    assert audit_events(data_dir, "rules.")[before:] == ["rules.loaded"]
    assert proc.poll() is None and healthcheck(config).returncode == 0

    # A broken rules file on reload: refused and audited, the node keeps running on the old rules.
    rules_path = load_settings(config).rules_path
    assert rules_path is not None
    rules_path.write_text("version: 1\nrules: [{name: broken, send_to: [nowhere]}]\n")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(audit_events(data_dir, "rules.")) > before + 1, "a second rules audit row", proc)
    assert audit_events(data_dir, "rules.")[before:] == ["rules.loaded", "rules.reload_failed"]
    assert proc.poll() is None and healthcheck(config).returncode == 0

    proc.send_signal(signal.SIGTERM)  # systemctl stop / docker stop
    assert proc.wait(timeout=60) == 0
    assert audit_events(data_dir, "node.")[-1] == "node.stopped"
    down = healthcheck(config)
    assert down.returncode == 1 and "no association" in down.stdout


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated death
@pytest.mark.parametrize("web", [False, True], ids=["health-file", "health-ready"])
def test_healthcheck_fails_when_the_node_reports_unhealthy(tmp_path: Path, web: bool) -> None:
    """The C-ECHO answers, but a worker is dead: the container's health check must fail, naming it, from
    the health file (web side off) or from GET /health/ready (on)."""
    from tests.nodeutil import kill_worker, make_settings, running_node, wait_for

    settings = make_settings(tmp_path, health={"interval_seconds": 0.1}, web={"enabled": web})
    with running_node(settings) as node:
        port_config = tmp_path / "probe.yaml"
        raw = settings.model_dump(mode="json")
        raw["receive"]["port"] = node.port
        raw["web"]["port"] = node.web_port or 0
        port_config.write_text(yaml.safe_dump(raw))
        wait_for(lambda: healthcheck(port_config).returncode == 0, what="a passing health check")
        kill_worker(node, "router-0")
        failed = wait_for(
            lambda: (r := healthcheck(port_config)).returncode == 1 and r, what="a failing health check"
        )
        assert "worker router-0 is not running" in failed.stdout
        assert ("not ready" if web else "unhealthy") in failed.stdout
