"""A small Kubernetes API server (aiohttp, 127.0.0.1) for the Kubernetes backend's tests.

Speaks just the parts of the API ferry uses, through the real `kubernetes` client over HTTP:

- apps/v1 deployments: list (+labelSelector), watch, create (409 AlreadyExists), get, merge patch, put,
  delete; the scale subresource (get, merge patch, put with resourceVersion precondition -> 409 Conflict).
- v1 services: list, watch, create, get, delete.
- discovery.k8s.io/v1 endpointslices: list and watch; tests write them with `put_slice`/`delete_slice`,
  standing in for the EndpointSlice controller.
- coordination.k8s.io/v1 leases: get, create (409 AlreadyExists), put with metadata.resourceVersion
  precondition (409 Conflict on mismatch), delete (and list/watch/merge patch, like the others).

resourceVersion semantics are the real ones in miniature: one global counter, every object carries the
version of its last write, lists return the current version, a watch from version N replays every later
event and then streams live ones; after `compact()` a watch from an older version gets a 410 Gone
(`{"type":"ERROR","object":{"kind":"Status","code":410}}`), and `expire_watches()` ends every open watch
with that event (what an apiserver does when its watch cache drops a slow watcher).

Faults: `fail(method, path_regex, status, times)` answers the next matching requests with a Status error;
`outage()` / `recover()` answers everything with 503 and cuts open watches (or, with refuse=True, closes the
listening socket so connections are refused). Every request is recorded in `requests` (method, path, query).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

APPS = "/apis/apps/v1/namespaces/{ns}/deployments"
CORE_SVC = "/api/v1/namespaces/{ns}/services"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"

KINDS = {
    "deployments": ("apps/v1", "Deployment"),
    "services": ("v1", "Service"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    at: float = field(default_factory=time.monotonic, compare=False)  # arrival, time.monotonic()

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int


@dataclass(eq=False)
class _Watcher:
    resource: str
    namespace: str
    selector: list[tuple[str, str, str | None]]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


def parse_selector(text: str | None) -> list[tuple[str, str, str | None]]:
    """`a=b,c!=d,e` -> [(a, '=', b), (c, '!=', d), (e, 'exists', None)]."""
    out: list[tuple[str, str, str | None]] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "==" in part or "=" in part:
            k, v = re.split("==?", part, maxsplit=1)
            out.append((k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            out.append((part[1:], "!exists", None))
        else:
            out.append((part, "exists", None))
    return out


def matches(selector: list[tuple[str, str, str | None]], labels: dict[str, str]) -> bool:
    for key, op, value in selector:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (enough of strategic merge for the fields ferry patches)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def status(code: int, reason: str, message: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message or reason, "code": code}


class FakeKubeAPI:
    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {k: [] for k in KINDS}
        self.compacted_rv = 0  # watches from an older version get 410 Gone
        self.requests: list[Recorded] = []
        self.faults: list[_Fault] = []
        self.down = False
        self.auto_status = True  # deployments' status.replicas follow spec.replicas at once
        self._watchers: set[_Watcher] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        self.changed = asyncio.Event()  # set on every write (lets tests await conditions without sleeping)

    # ---- lifecycle ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose current context is this fake (what `ferry up` with backend kubernetes reads)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        return path

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        for res, base in (("deployments", APPS), ("services", CORE_SVC), ("endpointslices", SLICES),
                          ("leases", LEASES)):
            coll = base.replace("{ns}", "{ns}")
            app.router.add_route("GET", coll, self._h_list(res))
            app.router.add_route("POST", coll, self._h_create(res))
            app.router.add_route("GET", coll + "/{name}", self._h_get(res))
            app.router.add_route("PATCH", coll + "/{name}", self._h_patch(res))
            app.router.add_route("PUT", coll + "/{name}", self._h_put(res))
            app.router.add_route("DELETE", coll + "/{name}", self._h_delete(res))
        app.router.add_route("GET", APPS + "/{name}/scale", self._scale_get)
        app.router.add_route("PATCH", APPS + "/{name}/scale", self._scale_patch)
        app.router.add_route("PUT", APPS + "/{name}/scale", self._scale_put)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def close(self) -> None:
        self._cut_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- test controls ------------------------------------------------------------------------------

    def fail(self, method: str, path_regex: str, status_code: int, times: int = 1) -> None:
        self.faults.append(_Fault(method.upper(), re.compile(path_regex), status_code, times))

    async def outage(self, refuse: bool = False) -> None:
        """Every request gets 503 (or, refuse=True, the port stops listening); open watches end."""
        self.down = True
        self._cut_watches()
        if refuse and self._site is not None:
            await self._site.stop()
            self._site = None

    async def recover(self) -> None:
        self.down = False
        if self._site is None:
            await self._listen()

    def compact(self) -> None:
        """Forget history: a watch resuming from any version seen so far gets 410 Gone."""
        self.compacted_rv = self.rv
        for h in self.history.values():
            h.clear()

    def expire_watches(self) -> None:
        """Compact and end every open watch with an ERROR 410 event (resourceVersion too old)."""
        self.compact()
        for w in list(self._watchers):
            w.queue.put_nowait(_gone_event(self.compacted_rv))

    def requests_since(self, mark: int, *, watches: bool = False) -> list[Recorded]:
        return [r for r in self.requests[mark:] if watches or not r.watch]

    def watch_count(self, resource: str) -> int:
        return sum(1 for w in self._watchers if w.resource == resource)

    def get(self, resource: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return self.objects[resource].get((namespace, name))

    def put_slice(self, name: str, *, service: str, endpoints: list[tuple[str, bool, bool]], port: int = 8080,
                  labels: dict[str, str] | None = None, namespace: str = "default") -> None:
        """Create or replace an EndpointSlice: endpoints are (address, ready, terminating)."""
        obj = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                                    **(labels or {})}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": [addr], "conditions": {"ready": ready, "serving": ready, "terminating": term},
                 "targetRef": {"kind": "Pod", "name": f"{service}-{addr.replace('.', '-')}", "namespace": namespace}}
                for addr, ready, term in endpoints
            ],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        }
        key = (namespace, name)
        existing = self.objects["endpointslices"].get(key)
        self._store("endpointslices", key, obj, "MODIFIED" if existing else "ADDED")

    def delete_slice(self, name: str, namespace: str = "default") -> None:
        obj = self.objects["endpointslices"].pop((namespace, name))
        self._emit("endpointslices", "DELETED", obj)

    # ---- internals ----------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _store(self, resource: str, key: tuple[str, str], obj: dict[str, Any], kind: str) -> dict[str, Any]:
        obj.setdefault("metadata", {})
        obj["metadata"]["namespace"] = key[0]
        obj["metadata"]["resourceVersion"] = self._next_rv()
        obj["metadata"].setdefault("uid", f"uid-{resource}-{key[1]}-{self.rv}")
        obj["metadata"].setdefault("generation", 1)
        if resource == "deployments" and self.auto_status:
            replicas = obj.get("spec", {}).get("replicas", 1)
            obj["status"] = {"replicas": replicas, "updatedReplicas": replicas, "observedGeneration": 1}
        self.objects[resource][key] = obj
        self._emit(resource, kind, obj)
        return obj

    def _emit(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
        snapshot = copy.deepcopy(obj)
        self.history[resource].append((self.rv, kind, snapshot))
        for w in list(self._watchers):
            if w.resource == resource and w.namespace == snapshot["metadata"]["namespace"] and matches(
                w.selector, snapshot["metadata"].get("labels") or {}
            ):
                w.queue.put_nowait({"type": kind, "object": snapshot})
        self.changed.set()
        self.changed = asyncio.Event()

    def _cut_watches(self) -> None:
        for w in list(self._watchers):
            w.queue.put_nowait(None)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(Recorded(request.method, request.path, dict(request.query)))
        if self.down:
            return web.json_response(status(503, "ServiceUnavailable", "fake outage"), status=503)
        for f in self.faults:
            if f.times > 0 and f.method == request.method and f.path.search(request.path):
                f.times -= 1
                reason = {409: "Conflict", 410: "Expired", 429: "TooManyRequests"}.get(f.status, "InternalError")
                return web.json_response(status(f.status, reason, "injected fault"), status=f.status)
        return await handler(request)

    def _h_list(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            ns = request.match_info["ns"]
            selector = parse_selector(request.query.get("labelSelector"))
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, resource, ns, selector)
            api_version, kind = KINDS[resource]
            items = [copy.deepcopy(o) for (n, _), o in sorted(self.objects[resource].items())
                     if n == ns and matches(selector, o["metadata"].get("labels") or {})]
            return web.json_response({"apiVersion": api_version, "kind": kind + "List",
                                      "metadata": {"resourceVersion": str(self.rv)}, "items": items})
        return handler

    async def _watch(self, request: web.Request, resource: str, ns: str,
                     selector: list[tuple[str, str, str | None]]) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        if since and since < self.compacted_rv:
            await resp.write(json.dumps(_gone_event(since)).encode() + b"\n")
            return resp
        w = _Watcher(resource, ns, selector)
        for rv, kind, obj in self.history[resource]:
            if rv > since and obj["metadata"]["namespace"] == ns and matches(selector, obj["metadata"].get("labels") or {}):
                w.queue.put_nowait({"type": kind, "object": obj})
        self._watchers.add(w)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await w.queue.get()
                    if event is None:
                        break
                    await resp.write(json.dumps(event).encode() + b"\n")
                    if event["type"] == "ERROR":
                        break
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._watchers.discard(w)
        return resp

    def _h_create(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            ns = request.match_info["ns"]
            obj = await request.json()
            name = obj["metadata"]["name"]
            if (ns, name) in self.objects[resource]:
                return web.json_response(status(409, "AlreadyExists", f'{resource} "{name}" already exists'), status=409)
            stored = self._store(resource, (ns, name), obj, "ADDED")
            return web.json_response(stored, status=201)
        return handler

    def _lookup(self, resource: str, request: web.Request) -> tuple[tuple[str, str], dict[str, Any] | None]:
        key = (request.match_info["ns"], request.match_info["name"])
        return key, self.objects[resource].get(key)

    def _h_get(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            _, obj = self._lookup(resource, request)
            if obj is None:
                return web.json_response(status(404, "NotFound"), status=404)
            return web.json_response(obj)
        return handler

    def _h_patch(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            key, obj = self._lookup(resource, request)
            if obj is None:
                return web.json_response(status(404, "NotFound"), status=404)
            patched = merge_patch(copy.deepcopy(obj), await request.json())
            return web.json_response(self._store(resource, key, patched, "MODIFIED"))
        return handler

    def _h_put(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            key, obj = self._lookup(resource, request)
            if obj is None:
                return web.json_response(status(404, "NotFound"), status=404)
            body = await request.json()
            rv = body.get("metadata", {}).get("resourceVersion")
            if rv and rv != obj["metadata"]["resourceVersion"]:
                return web.json_response(status(409, "Conflict", "the object has been modified"), status=409)
            return web.json_response(self._store(resource, key, body, "MODIFIED"))
        return handler

    def _h_delete(self, resource: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            key, obj = self._lookup(resource, request)
            if obj is None:
                return web.json_response(status(404, "NotFound"), status=404)
            del self.objects[resource][key]
            self._emit(resource, "DELETED", obj)
            if resource == "services":  # services answer with the deleted object, the others with a Status
                return web.json_response(obj)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        return handler

    def _scale_of(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "resourceVersion": meta["resourceVersion"], "uid": meta["uid"]},
                "spec": {"replicas": obj["spec"].get("replicas", 1)},
                "status": {"replicas": obj.get("status", {}).get("replicas", 0)}}

    async def _scale_get(self, request: web.Request) -> web.StreamResponse:
        _, obj = self._lookup("deployments", request)
        if obj is None:
            return web.json_response(status(404, "NotFound"), status=404)
        return web.json_response(self._scale_of(obj))

    async def _scale_write(self, request: web.Request, replicas: int, rv: str | None) -> web.StreamResponse:
        key, obj = self._lookup("deployments", request)
        if obj is None:
            return web.json_response(status(404, "NotFound"), status=404)
        if rv and rv != obj["metadata"]["resourceVersion"]:
            return web.json_response(status(409, "Conflict", "the object has been modified"), status=409)
        new = copy.deepcopy(obj)
        new["spec"]["replicas"] = replicas
        return web.json_response(self._scale_of(self._store("deployments", key, new, "MODIFIED")))

    async def _scale_patch(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await self._scale_write(request, int(body["spec"]["replicas"]),
                                       body.get("metadata", {}).get("resourceVersion"))

    async def _scale_put(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return await self._scale_write(request, int(body["spec"]["replicas"]),
                                       body.get("metadata", {}).get("resourceVersion"))


def _gone_event(rv: int) -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": f"too old resource version: {rv}", "reason": "Expired",
                                        "code": 410}}
