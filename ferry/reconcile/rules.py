"""The reconciler's rules, as pure functions of its state: who owns a service's main split, which revisions
must run, when a route may move, what the gateways' routes are, and which revisions may scale to zero.

Knative's reconcilers call `resources.Make*` and net-kourier's translator returns a value; these are
ferry's. Nothing here does I/O or changes what it is given.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..routing.schema import PREVIEW_TAG, Gateway, service_hosts, tag_host
from ..routing.traffic import ResolvedTraffic, Unresolved, blend, resolve_traffic
from ..xds import resources as xds
from .model import RevisionRuntime, ServiceRuntime


def shape(service: ServiceRuntime, steady: ResolvedTraffic | Unresolved) -> ResolvedTraffic | Unresolved:
    """The main split gateways should serve. Who owns it: a rollout in progress (part way from the stable
    revision's traffic to the file's), else a `ferry traffic` override, else the file (`steady`)."""
    if isinstance(steady, Unresolved):
        return steady
    rollout = service.rollout
    if rollout is not None and rollout.active:
        before = resolve_traffic(service.spec, rollout.stable)
        if isinstance(before, ResolvedTraffic):
            preview = ((PREVIEW_TAG, rollout.candidate),) if rollout.preview else ()
            return blend(before, steady, rollout.weight, preview)
    if service.override is not None:
        return ResolvedTraffic(service.override, steady.tags)
    return steady


def split_owner(service: ServiceRuntime) -> str:
    """Who decides the main split now; an override differs from the file (drift) until reset or agreed."""
    if service.rolling_out:
        return "rollout"
    return "override (drift from the file)" if service.override is not None else "file"


def needed_revisions(service: ServiceRuntime, resolved: ResolvedTraffic | Unresolved) -> set[str]:
    """What must run: what the traffic names, what gateways still route to, and the newest revision (it must
    run to become ready; not once its rollout failed)."""
    needed = {service.current.name} - service.failed
    if isinstance(resolved, ResolvedTraffic):
        needed |= resolved.revisions()
    if service.traffic is not None:
        needed |= service.traffic.revisions()
    return needed


def not_ready(resolved: ResolvedTraffic, revisions: Mapping[str, RevisionRuntime]) -> list[str]:
    """The revisions the split names that could not answer now: until there are none, the route stays where
    it is (Knative moves a route only to Ready revisions)."""
    return [r for r in sorted(resolved.revisions()) if r not in revisions or not revisions[r].routable]


def sticky_cookie(service: ServiceRuntime) -> str | None:
    """During a sticky rollout, a cookie per service keeps each client on the revision it first got."""
    block = service.spec.rollout
    if not service.rolling_out or block is None or not block.sticky:
        return None
    return f"ferry-rollout-{service.name}"


def host_routes(
    service: ServiceRuntime, resolved: ResolvedTraffic, gateway: Gateway, revisions: Mapping[str, RevisionRuntime]
) -> tuple[xds.HostRoute, ...]:
    """The virtual hosts of the service's route table: its main hosts with the split (and a ferry-tag route per
    tag), then a host per tag with 100% to its revision."""

    def target(revision: str, percent: int) -> xds.WeightedTarget:
        return xds.WeightedTarget(revisions[revision].cluster, revision, percent)

    def timeouts(*names: str) -> dict:
        """A route's timeouts: a split's are the longest of its revisions' (Envoy times a route, not a cluster)."""
        templates = [revisions[name].revision.template for name in names]
        return {"timeout_s": max(t.timeout for t in templates),
                "idle_timeout_s": max(t.idleTimeout or t.timeout for t in templates)}

    private = service.spec.visibility == "private"
    main = tuple(target(s.revision, s.percent) for s in resolved.main)
    routes = []
    if main:
        routes.append(xds.HostRoute(
            name=service.name,
            service=service.name,
            domains=tuple(service_hosts(service.name, service.spec, gateway)),
            targets=main,
            tagged=tuple((tag, target(revision, 100)) for tag, revision in resolved.tags) if gateway.tagHeader else (),
            sticky_cookie=sticky_cookie(service),
            internal_only=private,
            **timeouts(*(t.revision for t in main)),
        ))
    for tag, revision in resolved.tags:
        routes.append(xds.HostRoute(
            name=f"{service.name}/tag/{tag}",
            service=service.name,
            domains=(tag_host(tag, service.name, gateway),),
            targets=(target(revision, 100),),
            internal_only=private,
            **timeouts(revision),
        ))
    return tuple(routes)


def reachable(runtime: RevisionRuntime, service: ServiceRuntime | None) -> bool:
    """Routed now, named by the file's traffic, or the newest revision of a service that follows the latest:
    only an unreachable revision may go below its min scale (to zero, when idle)."""
    if service is None:
        return False
    name = runtime.name
    if name in service.wanted or (service.traffic is not None and name in service.traffic.revisions()):
        return True
    traffic = service.spec.traffic
    return name == service.current.name and (traffic is None or any(t.latestRevision for t in traffic))


def wants_activator(runtime: RevisionRuntime, holding: bool) -> bool:
    """Whether the revision's EDS names the activator: while it must hold requests (no ready instance, scaling to
    zero, inactive: `holding`, from the autoscaler), and at every scale for a revision with a concurrency limit:
    only the activator sees every gateway's requests, so only it can hold each instance to the limit (Knative puts
    a queue-proxy beside each instance for that; ferry has none). So does one whose response must start sooner
    than its timeout: Envoy has no time-to-first-byte timer (Knative's queue-proxy keeps it).

    Knative also keeps the activator in the path while the ready instances cannot absorb the target burst
    (burstCapacity). For a revision without a concurrency limit ferry does not: there Knative's activator only
    proxies (an infinite breaker, and power-of-two-choices balancing), which is what Envoy's least-request
    balancing already does, in C++ and without a second hop (bench/autoscaling.py: the hop cost about three
    quarters of the throughput)."""
    template = runtime.revision.template
    return holding or template.concurrency > 0 or template.response_start_timeout < template.timeout
