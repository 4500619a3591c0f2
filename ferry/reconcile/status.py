"""What `ferry status`, `ferry revisions`, `ferry rollout status` and the kn-style `ferry service|revision` verbs
show: views of the controller's state, computed on demand (one service and its revisions cost the same at any
number of services), with Knative's conditions (conditions.py) where a verb shows them.

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
from . import conditions
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


def revisions_status(c: Controller, service_name: str | None) -> Iterator[dict]:
    """`ferry revisions` and `ferry revision list`: every revision the service (None: every service) ever had,
    newest first, with its traffic, how its rollout ended and its conditions, made as they are asked for (the API
    streams them). KeyError, at once: no such service."""
    if service_name is not None:
        c.services[service_name]  # noqa: B018 - KeyError now, not at the first entry
    return _revision_entries(c, service_name)


def _revision_entries(c: Controller, service_name: str | None) -> Iterator[dict]:
    """A service at a time (two indexed queries each), so that no step holds the loop long at any size. Revisions
    of a service gone from the file are not listed: as in Knative, they went with it."""
    for name in sorted(c.services) if service_name is None else [service_name]:
        service = c.services.get(name)
        if service is None:
            continue
        served, tags = _served(service)
        results = c.store.results(name)
        for row in reversed(c.store.listing(name)):
            yield _entry(c, service, row, results.get(row[1]), served, tags)


def revision_status(c: Controller, name: str) -> dict:
    """`ferry revision describe`: one revision's entry, its template and, while it runs, its instances, endpoints
    and autoscaling. KeyError: no such revision (or its service is gone from the file)."""
    runtime = c.revisions.get(name)
    revision = runtime.revision if runtime is not None else c.store.get(name)
    service = c.services.get(revision.service) if revision is not None else None
    if revision is None or service is None:
        raise KeyError(name)
    served, tags = _served(service)
    row = (revision.service, revision.name, revision.generation, revision.created_at)
    entry = _entry(c, service, row, c.store.results(revision.service).get(name), served, tags)
    entry["template"] = revision.template.model_dump(mode="json", exclude_none=True)
    if runtime is not None:
        entry["endpoints"] = [str(e) for e in runtime.endpoints]
        entry["autoscaling"] = _autoscaling(c, runtime) if runtime.managed else None
    return entry


def services_status(c: Controller, service_name: str | None = None) -> Iterator[dict]:
    """`ferry service list` (and, for one service, `describe`, which adds its revisions): each service's view as
    in /status with its name, when its first revision was made (its age) and its conditions, made as they are asked
    for. KeyError, at once: no such service."""
    names = sorted(c.services) if service_name is None else [c.services[service_name].name]
    return _service_views(c, names)


def _service_views(c: Controller, names: list[str]) -> Iterator[dict]:
    gateways = c.census.status()
    for name in names:
        service = c.services.get(name)
        if service is None:
            continue
        history = c.store.listing(name)
        view = {"name": name, **_service(c, service), "created_at": history[0][3] if history else None}
        current = service.current
        served, tags = _served(service)
        latest = _entry(c, service, (name, current.name, current.generation, current.created_at),
                        c.store.results(name).get(current.name), served, tags)
        view["conditions"] = conditions.service_conditions(view, latest, gateways)
        yield view


def _served(service: ServiceRuntime) -> tuple[dict[str, int], dict[str, list[str]]]:
    """What the gateways serve of a service: revision -> main percent, revision -> tags."""
    served = {s.revision: s.percent for s in service.traffic.main} if service.traffic else {}
    tags: dict[str, list[str]] = {}
    for tag, revision in service.traffic.tags if service.traffic else ():
        tags.setdefault(revision, []).append(tag)
    return served, tags


def _entry(c: Controller, service: ServiceRuntime, row: tuple[str, str, int, float],
           result: tuple[str, str | None, float] | None, served: dict[str, int], tags: dict[str, list[str]]) -> dict:
    """One revision as `ferry revisions` lists it; `row` is (service, name, generation, created_at)."""
    _, name, generation, created_at = row
    runtime = c.revisions.get(name)
    managed = runtime.managed if runtime is not None else None
    counts = c.backend.counts(name) if managed else None
    entry = {
        "name": name,
        "service": service.name,
        "generation": generation,
        "created_at": created_at,
        "state": _state(runtime, counts) if runtime else "stopped",
        "ready": len(runtime.endpoints) if runtime else 0,
        "desired": (runtime.instances if managed else len(runtime.endpoints)) if runtime else 0,
        "managed": managed,
        "traffic": served.get(name, 0),
        "tags": tags.get(name, []),
        "latest_created": name == service.current.name,
        "latest_ready": name == c.latest_ready.get(service.name),
        "rollout": {"result": result[0], "reason": result[1], "at": result[2]} if result else None,
        "instances": _instances(c, runtime) if managed else [],
    }
    entry["conditions"] = conditions.revision_conditions(entry)
    return entry


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
        "instances": _instances(c, runtime) if managed else [],
        "created_at": runtime.revision.created_at,
    }


def _instances(c: Controller, runtime: RevisionRuntime) -> list[dict]:
    return [{"pid": i.pid, "endpoint": str(i.endpoint) if i.endpoint else None, "ready": i.ready,
             "stopping": i.stopping, "restarts": i.restarts, "log": str(i.log_path), "error": i.error}
            for i in c.backend.instances(runtime.name)]


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
