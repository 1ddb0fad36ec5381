"""`GET /metrics`: the node's own registry in the Prometheus text format (docs/metrics.md)."""

from __future__ import annotations

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from node.metrics import NodeMetrics


def metrics_routes(metrics: NodeMetrics) -> list[BaseRoute]:
    async def endpoint(request: Request) -> Response:
        # The queue-depth collector queries the database: off the event loop.
        body = await anyio.to_thread.run_sync(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", endpoint, methods=["GET"])]
