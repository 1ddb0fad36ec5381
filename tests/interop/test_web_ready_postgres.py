"""GET /health/ready with the production database: PostgreSQL stopped means 503 naming the database
(and /metrics says the queue cannot be read), while /health/live stays 200; ready again once it is back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nodeutil import make_settings, running_node, wait_for
from tests.pgserver import PostgresServer
from tests.webutil import curl, get_json, scrape, value

pytestmark = pytest.mark.interop


def test_ready_is_503_naming_the_database_while_postgresql_is_down(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database("web_ready_outage")
    settings = make_settings(
        tmp_path, database_url=url, web={"enabled": True}, health={"interval_seconds": 0.2}
    )
    with running_node(settings) as node:
        base = f"http://127.0.0.1:{node.web_port}"
        wait_for(lambda: curl(base + "/health/ready")[0] == 200, what="ready at start")
        assert value(scrape(base), "dicom_node_database_up") == 1
        postgres_server.pause()
        try:
            status, body = get_json(base + "/health/ready")
            assert status == 503 and "database" in body["not_ready"], body
            assert body["checks"]["database"]["detail"].startswith("database unreachable: ")
            assert body["checks"]["spool"]["ok"] is True
            assert curl(base + "/health/live")[0] == 200  # a restart would not bring the database back
            assert value(scrape(base), "dicom_node_database_up") == 0
        finally:
            postgres_server.resume()
        wait_for(lambda: curl(base + "/health/ready")[0] == 200, timeout=60, what="ready again")
