"""ferry's HTTP API, every route of it: /healthz, /readyz, /metrics and /replica (answered by any replica),
/status, /apply and the rollout, revision and traffic operations behind `ferry rollout`, `ferry revisions` and
`ferry traffic`, the views behind `ferry service`, `ferry revision` and `ferry wait` (the leader's),
/replicas/<name>/gateways (followers report to the leader), and /debug/* when test hooks are on.

Every route but /healthz, /readyz and /metrics needs `Authorization: Bearer <the api token>` (compared in constant
time); a request that changes something must say `Content-Type: application/json` (a web page cannot send that
across origins without asking first); bound to loopback, only loopback Host names are answered (no DNS
rebinding). Over mutual TLS (tls.py) the replica routes also need a client certificate. A replica that does not
lead (yet) answers the leader's routes with 503; a follower forwards them to
the leader (replicas.py) before they get here.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .routing.errors import ConfigError
from .tls import has_client_certificate

log = logging.getLogger("ferry.api")

# Answered by every replica itself; everything else is the leader's business.
LOCAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/replica"})
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # no token: probes and Prometheus
REPLICA_PREFIX = "/replicas/"  # followers' reports to the leader
MAX_BODY_BYTES = 64 * 1024 * 1024  # a routes file of 10,000 services is about 1 MB
MAX_REPORT_TTL_S = 60.0  # how long a follower's report of its gateways may count
STATUS_SLICE_S = 0.005  # /status: the longest stretch of work between two hand-backs of the event loop


def loopback_hosts(port: int) -> frozenset[str]:
    """The Host headers a loopback-bound API answers: anything else is a DNS-rebinding page in a browser."""
    names = ("127.0.0.1", "localhost", "[::1]")
    return frozenset(names) | {f"{name}:{port}" for name in names}


class Leader(Protocol):
    """What the API asks of the replica that leads. KeyError: no such service; ValueError: refused, says why."""

    def status(self, service: str | None) -> dict: ...

    def status_chunks(self, service: str | None) -> Iterator[bytes]: ...

    async def apply(self, label: str, text: str) -> None: ...

    def rollout_status(self, service: str) -> dict: ...

    async def rollout_action(self, service: str, action: str) -> Any: ...

    def revisions_status(self, service: str | None) -> Iterable[dict]: ...

    def revision_status(self, name: str) -> dict: ...

    def services_status(self, service: str | None) -> Iterable[dict]: ...

    async def set_traffic(self, service: str, splits: list[tuple[str, int]] | None) -> None: ...

    def service_spec(self, service: str) -> dict: ...

    def report_gateways(self, replica: str, gateways: list[dict], ttl_s: float) -> None: ...


def json_array(items: Iterable[Any]) -> Iterator[bytes]:
    """A JSON array, an item at a time (each built only when the stream asks for it)."""
    yield b"["
    for at, item in enumerate(items):
        yield (b"," if at else b"") + orjson.dumps(item)
    yield b"]"


# A test hook: run with the leader and the request's JSON body.
TestHook = Callable[[Leader, dict], Awaitable[None]]


@dataclass
class ApiState:
    """What the API answers from, in one replica."""

    registry: CollectorRegistry
    replica: Callable[[], dict]  # GET /replica: this replica's role and what it sees
    leader_identity: Callable[[], str | None] = lambda: None
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # holds a whole state to serve
    leading: Leader | None = None  # set while this replica leads
    token: str | None = None  # the bearer token every non-public route needs (None: no check, in-process tests)
    hosts: frozenset[str] | None = None  # the Host headers answered (None: any, when bound beyond loopback)
    replica_certs: bool = False  # over mutual TLS: /replicas/... needs a client certificate of the CA (tls.py)
    test_hooks: Mapping[str, TestHook] = field(default_factory=dict)
    more_metrics: Callable[[], Awaitable[bytes]] | None = None  # another process's (the activator's)
    revision_metrics: Callable[[], Iterable[bytes]] | None = None  # while leading: the per-revision series, in pieces


def build_api(state: ApiState, *, middlewares: tuple = ()) -> web.Application:
    """`middlewares` run outermost first (a follower's forwarding), before the leader's routes are refused."""
    routes = web.RouteTableDef()

    def leader() -> Leader:
        assert state.leading is not None  # not_before_leading let the request through
        return state.leading

    # -- every replica ---------------------------------------------------------------------------------

    @routes.get("/healthz")
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    @routes.get("/readyz")
    async def readyz(request: web.Request) -> web.Response:
        """Ready = holds a whole state to serve: applied (leader) or mirrored (follower)."""
        if state.ready.is_set():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not serving yet\n")

    @routes.get("/metrics")
    async def get_metrics(request: web.Request) -> web.Response:
        body = generate_latest(state.registry)
        if state.more_metrics is not None:
            body += await state.more_metrics()
        revisions = state.revision_metrics
        if revisions is None:
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        # The leader's per-revision series: made while sent, the event loop free between pieces (as /status).
        return await stream(request, itertools.chain((body,), revisions()), CONTENT_TYPE_LATEST)

    @routes.get("/replica")
    async def replica(request: web.Request) -> web.Response:
        return web.json_response(state.replica())

    # -- the leader ------------------------------------------------------------------------------------

    @routes.get("/status")
    async def get_status(request: web.Request) -> web.StreamResponse:
        """?service=NAME: one service and its revisions, cheap even with thousands of services. The whole status
        is sent in pieces of at most STATUS_SLICE_S of work each, the event loop free between them."""
        try:
            chunks = leader().status_chunks(request.query.get("service"))
        except KeyError:
            return web.json_response({"error": f"no service {request.query['service']!r}"}, status=404)
        return await stream(request, chunks)

    async def stream(request: web.Request, chunks: Iterable[bytes],
                     content_type: str = "application/json") -> web.StreamResponse:
        """A body made while it is sent, in pieces of at most STATUS_SLICE_S of work each."""
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        piece: list[bytes] = []
        started = loop.time()
        for chunk in chunks:
            piece.append(chunk)
            if loop.time() - started >= STATUS_SLICE_S:
                await response.write(b"".join(piece))
                piece.clear()
                await asyncio.sleep(0)
                started = loop.time()
        await response.write_eof(b"".join(piece))
        return response

    @routes.post("/apply")
    async def apply(request: web.Request) -> web.Response:
        """Body: {"content": "<routes.yaml text>", "path": "<its name, for messages>"}. The text replaces the routes
        file's; `path` is only a label (no file is read), and relative commands resolve against the folder of the
        routes file ferry was started with."""
        try:
            body = await request.json()
            content, label = body["content"], body.get("path", "routes.yaml")
            if not isinstance(content, str) or not isinstance(label, str):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            return web.json_response({"error": 'expected JSON {"content": "<routes.yaml text>", "path": "<its name>"}'},
                                     status=400)
        label = label[:200]
        try:
            await leader().apply(label, content)
        except ConfigError as err:
            return web.json_response(
                {"error": str(err), "problems": [p.__dict__ for p in err.problems]}, status=422
            )
        return web.json_response({"applied": label})

    def no_service(request: web.Request) -> web.Response:
        return web.json_response({"error": f"no service {request.match_info['service']!r}"}, status=404)

    @routes.get("/rollouts/{service}")
    async def get_rollout(request: web.Request) -> web.Response:
        try:
            return web.json_response(leader().rollout_status(request.match_info["service"]))
        except KeyError:
            return no_service(request)

    @routes.post("/rollouts/{service}/{action}")
    async def act_on_rollout(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        try:
            await leader().rollout_action(service, request.match_info["action"])
        except KeyError:
            return no_service(request)
        except ValueError as err:
            return web.json_response({"error": str(err)}, status=409)
        return web.json_response(leader().rollout_status(service))

    @routes.get("/revisions/{service}")
    async def get_revisions(request: web.Request) -> web.Response:
        try:
            return web.json_response(list(leader().revisions_status(request.match_info["service"])))
        except KeyError:
            return no_service(request)

    @routes.get("/revisions")
    async def get_all_revisions(request: web.Request) -> web.StreamResponse:
        return await stream(request, json_array(leader().revisions_status(None)))

    @routes.get("/revision/{revision}")
    async def get_revision(request: web.Request) -> web.Response:
        try:
            return web.json_response(leader().revision_status(request.match_info["revision"]))
        except KeyError:
            return web.json_response({"error": f"no revision {request.match_info['revision']!r}"}, status=404)

    @routes.get("/services")
    async def get_services(request: web.Request) -> web.StreamResponse:
        return await stream(request, json_array(leader().services_status(None)))

    @routes.get("/services/{service}")
    async def get_service(request: web.Request) -> web.Response:
        """One service with its conditions and every revision it has (`ferry service describe`, `ferry wait`)."""
        service = request.match_info["service"]
        try:
            (view,) = leader().services_status(service)
            view["revisions"] = list(leader().revisions_status(service))
        except KeyError:
            return no_service(request)
        return web.json_response(view)

    @routes.get("/services/{service}/spec")
    async def get_service_spec(request: web.Request) -> web.Response:
        """The service as the applied file says it (its ServiceSpec as JSON, defaults left out) and the backend
        it runs on: what `ferry export` writes as a Knative Service."""
        try:
            return web.json_response(leader().service_spec(request.match_info["service"]))
        except KeyError:
            return no_service(request)

    @routes.post("/traffic/{service}")
    async def set_traffic(request: web.Request) -> web.Response:
        """Body: {"splits": [["rev", percent], ...]} or {"reset": true}."""
        try:
            body = await request.json()
            splits = None if body.get("reset") else [(str(r), int(p)) for r, p in body["splits"]]
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            return web.json_response({"error": 'expected JSON {"splits": [[revision, percent], ...]} or {"reset": true}'},
                                     status=400)
        try:
            await leader().set_traffic(request.match_info["service"], splits)
        except KeyError:
            return no_service(request)
        except ValueError as err:
            return web.json_response({"error": str(err)}, status=422)
        return web.json_response({"service": request.match_info["service"], "splits": splits})

    @routes.put("/replicas/{replica}/gateways")
    async def report(request: web.Request) -> web.Response:
        """A follower's gateways, for the leader's autoscaler and status (for at most MAX_REPORT_TTL_S)."""
        try:
            body = await request.json()
            gateways, ttl_s = body["gateways"], float(body["ttl_s"])
            if (not isinstance(gateways, list) or not all(isinstance(g, dict) for g in gateways)
                    or not 0 < ttl_s < math.inf):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            return web.json_response({"error": 'expected JSON {"gateways": [{...}, ...], "ttl_s": seconds}'},
                                     status=400)
        leader().report_gateways(request.match_info["replica"], gateways, min(ttl_s, MAX_REPORT_TTL_S))
        return web.json_response({"leader": state.leader_identity()})

    for name, hook in state.test_hooks.items():

        async def run_hook(request: web.Request, hook=hook, name=name) -> web.Response:
            await hook(leader(), await request.json() if request.can_read_body else {})
            return web.json_response({"hook": name})

        routes.post(f"/debug/{name}")(run_hook)

    @web.middleware
    async def guard(request: web.Request, handler) -> web.StreamResponse:
        if state.hosts is not None and request.host.lower() not in state.hosts:
            return web.json_response({"error": f"ferry's API answers {', '.join(sorted(state.hosts))} only"},
                                     status=403)
        if state.token is not None and request.path not in PUBLIC_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), state.token.encode()):
                return web.json_response(
                    {"error": "this API needs Authorization: Bearer <token>; the token is the file api-token in "
                              "ferry's state folder (.ferry/ beside the routes file), which the ferry command reads "
                              "itself (or --token-file, or FERRY_TOKEN)"},
                    status=401, headers={"WWW-Authenticate": 'Bearer realm="ferry"'})
        if state.replica_certs and request.path.startswith(REPLICA_PREFIX) and not has_client_certificate(
                request.transport):
            return web.json_response({"error": "replica routes need a client certificate of ferry's CA"},
                                     status=403)
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and request.content_type != "application/json":
            return web.json_response({"error": "send Content-Type: application/json"}, status=415)
        return await handler(request)

    @web.middleware
    async def not_before_leading(request: web.Request, handler) -> web.StreamResponse:
        if state.leading is None and request.path not in LOCAL_PATHS:
            return web.json_response({"error": "this replica is starting to lead: try again in a moment"},
                                     status=503)
        return await handler(request)

    app = web.Application(middlewares=[guard, *middlewares, not_before_leading], client_max_size=MAX_BODY_BYTES)
    app.add_routes(routes)
    return app
