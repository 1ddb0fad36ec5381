"""`GET /health/live` and `GET /health/ready`: JSON bodies, 200 or 503 (docs/operations.md).

No authentication: neither carries patient data. The checks touch the database and the disk, so they
run on a worker thread, never on the event loop, and within READY_TIMEOUT_SECONDS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

# A readiness probe that takes longer than this answers 503 (a database that hangs is not ready).
READY_TIMEOUT_SECONDS = 10.0

# () -> (ok, JSON body)
Probe = Callable[[], tuple[bool, dict[str, Any]]]


def health_routes(live: Probe, ready: Probe) -> list[BaseRoute]:
    async def live_endpoint(request: Request) -> JSONResponse:
        return _answer(*live())

    async def ready_endpoint(request: Request) -> JSONResponse:
        with anyio.move_on_after(READY_TIMEOUT_SECONDS):
            return _answer(*await anyio.to_thread.run_sync(ready, abandon_on_cancel=True))
        return _answer(
            False,
            {
                "ready": False,
                "not_ready": ["timeout"],
                "checks": {"timeout": {"ok": False, "detail": "the checks took too long"}},
            },
        )

    return [
        Route("/health/live", live_endpoint, methods=["GET"]),
        Route("/health/ready", ready_endpoint, methods=["GET"]),
    ]


def _answer(ok: bool, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=200 if ok else 503, headers={"Cache-Control": "no-store"})
