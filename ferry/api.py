"""ferry's HTTP API: /status (JSON), /metrics (Prometheus), /apply (`ferry apply`), and the rollout,
revision and traffic operations behind `ferry rollout`, `ferry revisions` and `ferry traffic`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .routing.errors import ConfigError

log = logging.getLogger("ferry.api")

ApplyText = Callable[[Path, str], Awaitable[None]]


class Operations(Protocol):
    """What the controller offers the API besides status. KeyError: no such service; ValueError: refused, says why."""

    def rollout_status(self, service: str) -> dict: ...

    async def rollout_action(self, service: str, action: str): ...

    def revisions_status(self, service: str) -> list[dict]: ...

    async def set_traffic(self, service: str, splits: list[tuple[str, int]] | None) -> None: ...


def build_api(
    status: Callable[[str | None], dict],
    registry: CollectorRegistry,
    apply_text: ApplyText,
    operations: Operations,
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

    def no_service(request: web.Request) -> web.Response:
        return web.json_response({"error": f"no service {request.match_info['service']!r}"}, status=404)

    @routes.get("/rollouts/{service}")
    async def get_rollout(request: web.Request) -> web.Response:
        try:
            return web.json_response(operations.rollout_status(request.match_info["service"]))
        except KeyError:
            return no_service(request)

    @routes.post("/rollouts/{service}/{action}")
    async def act_on_rollout(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        try:
            await operations.rollout_action(service, request.match_info["action"])
        except KeyError:
            return no_service(request)
        except ValueError as err:
            return web.json_response({"error": str(err)}, status=409)
        return web.json_response(operations.rollout_status(service))

    @routes.get("/revisions/{service}")
    async def get_revisions(request: web.Request) -> web.Response:
        try:
            return web.json_response(operations.revisions_status(request.match_info["service"]))
        except KeyError:
            return no_service(request)

    @routes.post("/traffic/{service}")
    async def set_traffic(request: web.Request) -> web.Response:
        """Body: {"splits": [["rev", percent], ...]} or {"reset": true}."""
        try:
            body = await request.json()
            splits = None if body.get("reset") else [(str(r), int(p)) for r, p in body["splits"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response({"error": 'expected JSON {"splits": [[revision, percent], ...]} or {"reset": true}'},
                                     status=400)
        try:
            await operations.set_traffic(request.match_info["service"], splits)
        except KeyError:
            return no_service(request)
        except ValueError as err:
            return web.json_response({"error": str(err)}, status=422)
        return web.json_response({"service": request.match_info["service"], "splits": splits})

    for name, hook in (test_hooks or {}).items():

        async def run_hook(request: web.Request, hook=hook, name=name) -> web.Response:
            await hook(await request.json() if request.can_read_body else {})
            return web.json_response({"hook": name})

        routes.post(f"/debug/{name}")(run_hook)

    app = web.Application()
    app.add_routes(routes)
    return app
