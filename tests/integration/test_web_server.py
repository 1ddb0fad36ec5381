"""node.web.server on its own: extra routes are mounted, a graceful stop lets a request in flight finish
while refusing new connections, and a forced stop does not wait for it; the health routes answer 200 /
503 as their probes say, and 503 `timeout` when a readiness check hangs."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from node.config import WebSettings
from node.web import health
from node.web.health import health_routes
from node.web.server import WebServer, build_app
from tests.nodeutil import wait_for
from tests.webutil import curl


@contextmanager
def slow_server(shutdown_timeout: float) -> Iterator[tuple[WebServer, threading.Event, threading.Event]]:
    """A server whose GET /slow answers only once `release` is set; `entered` says a request is in."""
    entered, release = threading.Event(), threading.Event()

    async def slow(request: Request) -> PlainTextResponse:
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.01)  # cancellable, as a streamed upload is
        return PlainTextResponse("finished")

    async def fast(request: Request) -> PlainTextResponse:
        return PlainTextResponse("fast")

    settings = WebSettings(host="127.0.0.1", port=0, shutdown_timeout_seconds=shutdown_timeout)
    server = WebServer(settings, build_app([Route("/fast", fast)], [Route("/slow", slow)]))
    server.start()
    try:
        yield server, entered, release
    finally:
        release.set()
        server.join(threading.Event())


def start_curl(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["curl", "-s", "--noproxy", "*", "--max-time", "120", "-w", "\n%{http_code}", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def stop_in_thread(server: WebServer, force: threading.Event) -> threading.Thread:
    stopper = threading.Thread(target=server.join, args=(force,), name="stopper")
    stopper.start()
    return stopper


def test_graceful_stop_finishes_the_request_in_flight_and_refuses_new_ones() -> None:
    with slow_server(shutdown_timeout=120) as (server, entered, release):
        url = f"http://127.0.0.1:{server.port}"
        assert curl(url + "/fast") == (200, "fast")  # the node's routes and the extra ones are both there
        in_flight = start_curl(url + "/slow")
        wait_for(entered.is_set, what="the slow request to reach its endpoint")
        stopper = stop_in_thread(server, threading.Event())
        wait_for(lambda: _refused(url + "/fast"), what="new connections refused while draining")
        assert stopper.is_alive()  # still waiting for the request in flight
        release.set()
        out, _ = in_flight.communicate(timeout=60)
        assert out.split("\n") == ["finished", "200"]
        stopper.join(60)
        assert not stopper.is_alive()


def test_forced_stop_does_not_wait_for_the_request_in_flight() -> None:
    # Without the force, this stop would wait up to 600 s for the slow request.
    with slow_server(shutdown_timeout=600) as (server, entered, release):
        in_flight = start_curl(f"http://127.0.0.1:{server.port}/slow")
        wait_for(entered.is_set, what="the slow request to reach its endpoint")
        force = threading.Event()
        stopper = stop_in_thread(server, force)
        force.set()  # a second SIGTERM
        stopper.join(60)
        assert not stopper.is_alive() and not release.is_set()
        out, _ = in_flight.communicate(timeout=60)
        assert not out.startswith("finished")


def _refused(url: str) -> bool:
    command = ["curl", "-s", "--noproxy", "*", "--max-time", "5", url]
    result = subprocess.run(command, capture_output=True, timeout=30)
    return result.returncode == 7  # curl: failed to connect


@contextmanager
def probe_server(live: Any, ready: Any) -> Iterator[str]:
    server = WebServer(WebSettings(host="127.0.0.1", port=0), build_app(health_routes(live, ready)))
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.join(threading.Event())


def test_health_answers_follow_the_probes() -> None:
    with probe_server(lambda: (True, {"alive": True}), lambda: (True, {"ready": True})) as url:
        assert curl(url + "/health/live") == (200, '{"alive":true}')
        assert curl(url + "/health/ready") == (200, '{"ready":true}')
    not_ready = {"ready": False, "not_ready": ["spool"]}
    with probe_server(lambda: (False, {"alive": False}), lambda: (False, not_ready)) as url:
        assert curl(url + "/health/live")[0] == 503
        assert curl(url + "/health/ready") == (503, '{"ready":false,"not_ready":["spool"]}')


def test_a_readiness_check_that_hangs_answers_503_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "READY_TIMEOUT_SECONDS", 0.2)
    release = threading.Event()

    def hangs() -> tuple[bool, dict[str, Any]]:
        release.wait(30)
        return True, {"ready": True}

    try:
        with probe_server(lambda: (True, {}), hangs) as url:
            status, body = curl(url + "/health/ready")
    finally:
        release.set()
    assert status == 503 and '"not_ready":["timeout"]' in body
