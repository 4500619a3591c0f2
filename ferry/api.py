"""ferry's HTTP API: /status (JSON), /metrics (Prometheus), /apply (used by `ferry apply`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .routing.errors import ConfigError

log = logging.getLogger("ferry.api")

ApplyText = Callable[[Path, str], Awaitable[None]]


def build_api(
    status: Callable[[str | None], dict],
    registry: CollectorRegistry,
    apply_text: ApplyText,
    *,
    test_hooks: dict[str, Callable[[dict], Awaitable[None]]] | None = None,
) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/status")
    async def get_status(request: web.Request) -> web.Response:
        """?service=NAME: one service and its revisions, cheap even with thousands of services."""
        try:
            body = status(request.query.get("service"))
        except KeyError:
            return web.json_response({"error": f"no service {request.query['service']!r}"}, status=404)
        return web.json_response(body, dumps=lambda o: json.dumps(o, separators=(",", ":")))

    @routes.get("/metrics")
    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @routes.post("/apply")
    async def apply(request: web.Request) -> web.Response:
        """Body: {"path": "/abs/routes.yaml", "content": "..."}; relative paths in it resolve against path's folder."""
        try:
            body = await request.json()
            path, content = Path(body["path"]), body["content"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected JSON {"path": ..., "content": ...}'}, status=400)
        try:
            await apply_text(path, content)
        except ConfigError as err:
            return web.json_response(
                {"error": str(err), "problems": [p.__dict__ for p in err.problems]}, status=422
            )
        return web.json_response({"applied": str(path)})

    for name, hook in (test_hooks or {}).items():

        async def run_hook(request: web.Request, hook=hook, name=name) -> web.Response:
            await hook(await request.json() if request.can_read_body else {})
            return web.json_response({"hook": name})

        routes.post(f"/debug/{name}")(run_hook)

    app = web.Application()
    app.add_routes(routes)
    return app
