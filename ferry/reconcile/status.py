"""What `ferry status`, `ferry revisions` and `ferry rollout status` show: views of the controller's state,
computed on demand (one service and its revisions cost the same at any number of services).

The whole status at 10,000 services is 30,000 views and 7 MB of JSON. `status_chunks` yields it piece by piece
as bytes, so the API can hand the event loop back between pieces; a view whose inputs are the very same objects
as last time is not built again (`Views`): services and the revisions whose endpoints the file gives change
only when an apply replaces them, while views of revisions ferry runs (instances, autoscaling) are always fresh.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

import orjson

from ..backends.base import InstanceCounts
from ..routing.schema import service_hosts, tag_host
from .model import RevisionRuntime, ServiceRuntime
from .rules import split_owner

if TYPE_CHECKING:
    from .controller import Controller


class Views:
    """The last JSON of each view ("name":{...}), with the objects it was made from: the same objects again
    (a tuple compare is an identity check first), the same bytes."""

    def __init__(self) -> None:
        self.services: dict[str, tuple[tuple, bytes]] = {}
        self.revisions: dict[str, tuple[tuple, bytes]] = {}


GROUP = 100  # views per chunk


def status(c: Controller, service: str | None = None) -> dict:
    """Everything, or one service and its revisions. KeyError: no such service."""
    return orjson.loads(b"".join(status_chunks(c, service)))


def status_chunks(c: Controller, service: str | None = None, head: dict | None = None) -> Iterator[bytes]:
    """The status as JSON in chunks of up to GROUP views (`head`'s keys first). KeyError, at once: no such
    service. What changes between chunks shows in the later ones; a service or revision gone by then is left out."""
    if service is not None:
        c.services[service]  # noqa: B018 - KeyError now, not at the first chunk
    return _chunks(c, service, head or {})


def _chunks(c: Controller, service: str | None, head: dict) -> Iterator[bytes]:
    """Each sort is a step of its own (an empty chunk after it), so the caller can hand the loop back there too."""
    yield orjson.dumps(head)[:-1] + (b',"services":{' if head else b'"services":{')
    services = sorted(c.services) if service is None else [service]
    yield b""
    yield from _members(services, c.services, lambda runtime: _service_json(c, runtime))
    revisions = sorted(
        name for name, runtime in c.revisions.items() if service is None or runtime.revision.service == service)
    yield b'},"revisions":{'
    yield from _members(revisions, c.revisions, lambda runtime: _revision_json(c, runtime))
    yield b'},"gateways":' + orjson.dumps(c.census.status()) + b"}"
    if service is None:  # forget the views of what is gone
        for cache, live in ((c.views.services, c.services), (c.views.revisions, c.revisions)):
            for name in [n for n in cache if n not in live]:
                del cache[name]


def _members(names: list[str], live: dict, member) -> Iterator[bytes]:
    """`"name":{view}` for each name still in `live`, comma-separated, GROUP at a time."""
    first = True
    for at in range(0, len(names), GROUP):
        members = [member(runtime) for runtime in map(live.get, names[at:at + GROUP]) if runtime is not None]
        if members:
            yield (b"" if first else b",") + b",".join(members)
            first = False


async def render(c: Controller, services: list[ServiceRuntime], slice_s: float = 0.01) -> None:
    """Build the views of what an apply changed, in slices of `slice_s`, so that the next /status finds them."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for service in services:
        _service_json(c, service)
        for name in list(service.revisions):
            runtime = c.revisions.get(name)
            if runtime is not None:
                _revision_json(c, runtime)
        if loop.time() - started >= slice_s:
            await asyncio.sleep(0)
            started = loop.time()


def _member(name: str, view: dict) -> bytes:
    return orjson.dumps(name) + b":" + orjson.dumps(view)


def _cached(cache: dict[str, tuple[tuple, bytes]], name: str, inputs: tuple, build) -> bytes:
    entry = cache.get(name)
    if entry is not None and entry[0] == inputs:
        return entry[1]
    body = _member(name, build())
    cache[name] = (inputs, body)
    return body


def _service_json(c: Controller, service: ServiceRuntime) -> bytes:
    if service.rollout is not None:  # a rollout's state moves on its own
        return _member(service.name, _service(c, service))
    inputs = (service.spec, service.current, service.traffic, service.waiting, service.override,
              c.latest_ready.get(service.name), c.gateway)
    return _cached(c.views.services, service.name, inputs, lambda: _service(c, service))


def _revision_json(c: Controller, runtime: RevisionRuntime) -> bytes:
    if runtime.workload is not None:  # managed: instances and autoscaling change between any two calls
        return _member(runtime.revision.name, _revision(c, runtime))
    inputs = (runtime.revision, runtime.endpoints, runtime.retiring)
    return _cached(c.views.revisions, runtime.revision.name, inputs, lambda: _revision(c, runtime))


def _service(c: Controller, service: ServiceRuntime) -> dict:
    gateway = c.gateway
    private = service.spec.visibility == "private"
    listen = gateway.internal if private and gateway.internal is not None else gateway.listen
    port = "" if listen.port == 80 else f":{listen.port}"
    hosts = service_hosts(service.name, service.spec, gateway)
    traffic: list[dict] = []
    if service.traffic is not None:
        traffic += [{"revision": s.revision, "percent": s.percent} for s in service.traffic.main]
        traffic += [
            {"revision": revision, "tag": tag, "url": f"http://{tag_host(tag, service.name, gateway)}{port}"}
            for tag, revision in service.traffic.tags
        ]
    return {
        "url": f"http://{hosts[0]}{port}",
        "visibility": service.spec.visibility,  # private: on gateway.internal only
        "hosts": hosts,
        "latest_created": service.current.name,
        "latest_ready": c.latest_ready.get(service.name),
        "traffic": traffic,
        "routed": service.waiting is None,
        "waiting": service.waiting,
        "split_owner": split_owner(service),
        "traffic_override": [[s.revision, s.percent] for s in service.override] if service.override else None,
        "rollout": rollout_status(c, service.name) if service.rollout is not None else None,
    }


def revisions_status(c: Controller, service_name: str) -> list[dict]:
    """`ferry revisions`: every revision the service ever had, newest first, with its traffic and how its
    rollout ended."""
    service = c.services[service_name]
    results = c.store.results(service_name)
    served = {s.revision: s.percent for s in service.traffic.main} if service.traffic else {}
    tags: dict[str, list[str]] = {}
    for tag, revision in service.traffic.tags if service.traffic else ():
        tags.setdefault(revision, []).append(tag)
    out = []
    for revision in reversed(c.store.revisions(service_name)):
        runtime = c.revisions.get(revision.name)
        result = results.get(revision.name)
        out.append({
            "name": revision.name,
            "generation": revision.generation,
            "created_at": revision.created_at,
            "state": _state(runtime, c.backend.counts(revision.name) if runtime.managed else None)
            if runtime else "stopped",
            "ready": len(runtime.endpoints) if runtime else 0,
            "traffic": served.get(revision.name, 0),
            "tags": tags.get(revision.name, []),
            "latest_ready": revision.name == c.latest_ready.get(service_name),
            "rollout": {"result": result[0], "reason": result[1], "at": result[2]} if result else None,
        })
    return out


def rollout_status(c: Controller, service_name: str) -> dict:
    """`ferry rollout status`: where it is, the weights gateways serve, every check and its verdict."""
    service = c.services[service_name]
    rollout = service.rollout
    if rollout is None:
        return {"service": service_name, "phase": None}
    return {
        **json.loads(rollout.to_json()),
        "active": rollout.active,
        "preview": rollout.preview,
        "spec": json.loads(json.dumps(asdict(c.rollouts.spec(service)))),
        "served": [{"revision": s.revision, "percent": s.percent} for s in service.traffic.main]
        if service.traffic else [],
        "rollback_ms": service.rollback_ms,
    }


def _revision(c: Controller, runtime: RevisionRuntime) -> dict:
    managed = runtime.managed
    counts = c.backend.counts(runtime.name) if managed else None
    return {
        "service": runtime.revision.service,
        "generation": runtime.revision.generation,
        "ready": counts.ready if counts else len(runtime.endpoints),
        "total": counts.total if counts else len(runtime.endpoints),
        "instances_started": counts.started if counts else None,
        "endpoints": [str(e) for e in runtime.endpoints],
        "state": _state(runtime, counts),
        "managed": managed,
        "autoscaling": _autoscaling(c, runtime) if managed else None,
        "instances": [
            {"pid": i.pid, "endpoint": str(i.endpoint) if i.endpoint else None, "ready": i.ready,
             "stopping": i.stopping, "restarts": i.restarts, "log": str(i.log_path), "error": i.error}
            for i in (c.backend.instances(runtime.name) if managed else ())
        ],
    }


def _state(runtime: RevisionRuntime, counts: InstanceCounts | None) -> str:
    if runtime.retiring:
        return "retiring"
    if runtime.endpoints:
        return "ready"
    if runtime.routable:  # the activator holds its requests
        return "at zero" if counts is not None and counts.total == 0 else "activating"
    return "not ready"


def _autoscaling(c: Controller, runtime: RevisionRuntime) -> dict:
    """What `ferry status` shows about scaling: wanted vs ready, the load seen, and why."""
    autoscaler = c.autoscaler
    state = autoscaler.states.get(runtime.name)
    if state is None:
        return {"activator_in_path": runtime.activator_in_path, "tracked": False}
    observed_at = autoscaler.observed_at
    now = autoscaler.clock() if observed_at is None else observed_at  # averages as decisions see them
    settings = state.settings
    load = autoscaler.last_load.get(runtime.name)
    decided = autoscaler.decisions.get(runtime.name)
    return {
        "desired": state.scale,
        "ready": len(runtime.endpoints),
        "metric": settings.metric,
        "target_per_instance": round(settings.target_value, 3),
        "observed": {
            "concurrency": round(load.concurrency, 3) if load else None,
            "rps": round(load.rps, 3) if load else None,
            "stable": state.stable.average(now),
            "panic": state.panic.average(now),
        },
        "panic_mode": state.decider.panic_since is not None,
        "active": state.active_since is not None,
        "activator_in_path": runtime.activator_in_path,
        "excess_burst_capacity": decided[1].decision.excess_burst_capacity if decided else None,
        "last_decision": {"reason": decided[1].reason, "seconds_ago": round(autoscaler.clock() - decided[0], 1)}
        if decided else None,
        "scale_events": list(runtime.scale_events or ()),
    }
