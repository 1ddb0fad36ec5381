#!/usr/bin/env python3
"""Health check for the node: a DICOM C-ECHO to its own SCP, then the node's readiness: `GET
/health/ready` on its HTTP side (database, spool, model, workers; docs/operations.md), or, when
`web.enabled` is false, its health report (<data_dir>/health.json: every worker alive and not stuck, the
database reachable), using the node's own config file.

Exit status 0 when the node answers the C-ECHO with Success and reports healthy, 1 otherwise (Docker
HEALTHCHECK, systemd ExecStartPost, a monitoring probe). The config is the first argument, else
$NODE_CONFIG, else /etc/node/node.yaml; the AE title and port come from its `receive` section, the
HTTP port from `web`, the health report from its data_dir. The node is asked on 127.0.0.1 when it
listens on all interfaces.

Each check is a real association, so it appears in the audit trail (association.accepted) and, where
`receive.allowed_callers` is set, the calling AE title below must be allowed from 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import Settings, load_settings
from node.errors import ConfigError
from node.health import HEALTH_FILE, read_health

CALLING_AE = os.environ.get("NODE_HEALTHCHECK_AE", "HEALTHCHECK")
TIMEOUT_SECONDS = 5.0


def local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def check_ready(settings: Settings) -> tuple[bool, str]:
    """GET /health/ready: (ready, what it said)."""
    host = local(settings.web.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.web.port}/health/ready"
    # The node is local: never through an http_proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS):
            return True, f"ready ({url})"
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
            failing = [f"{name}: {body['checks'][name]['detail']}" for name in body["not_ready"]]
        except (ValueError, KeyError, TypeError):
            failing = [f"HTTP {exc.code}"]
        return False, f"not ready ({url}): " + "; ".join(failing)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no answer from {url}: {reason}"


def check(config: Path | None) -> tuple[bool, str]:
    settings = load_settings(config)
    host = local(settings.receive.host)
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_SECONDS
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, settings.receive.port, ae_title=settings.receive.ae_title)
    where = f"{settings.receive.ae_title}@{host}:{settings.receive.port}"
    if not assoc.is_established:
        return False, f"no association with {where} (rejected, aborted or not listening)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        return False, f"C-ECHO to {where} returned status {code!r}"
    if settings.web.enabled:
        ready, said = check_ready(settings)
        return ready, f"C-ECHO to {where}: success; {said}"
    healthy, report = read_health(settings.data_dir / HEALTH_FILE)
    if not healthy:
        return False, f"C-ECHO to {where}: success, but unhealthy: " + "; ".join(report.get("problems", []))
    return True, f"C-ECHO to {where}: success; workers and database healthy"


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.CRITICAL)  # pynetdicom's own logging would drown the one line
    default = os.environ.get("NODE_CONFIG", "/etc/node/node.yaml")
    path = Path(argv[1]) if len(argv) > 1 else Path(default)
    try:
        ok, message = check(path if path.exists() else None)
    except ConfigError as exc:
        ok, message = False, str(exc)
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
