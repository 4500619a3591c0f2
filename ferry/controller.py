"""The reconciler: routes.yaml + revision readiness -> running instances + what every gateway should serve.

It keeps, per service, the routes it last published and, per revision, what runs and where. Every change
is local: a service whose spec did not change is not touched, an endpoint change is one EDS entry, and a
traffic change is one small RouteConfiguration (each service has its own, selected by host scopes).

Knative's rules for safety: a route moves only when every revision it names is ready (until then the
previous route keeps serving), and a revision that leaves the route is stopped only after every gateway
has acknowledged the route without it.

Autoscaled revisions (those ferry runs) have an autoscaler state; their EDS entry holds either their ready
instances or, while they are at zero or short of burst capacity, the activator. Switching between the two
is an endpoint-only change: routes and clusters stay as they are.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable

from .activator import Activator
from .autoscaler.runner import Autoscaler, Sources
from .autoscaler.scaler import Step
from .autoscaler.settings import settings_for
from .backends.base import Backend, DrainHook, Endpoint, EndpointsChanged, Workload
from .envoy.admin import EnvoyAdmin
from .envoy.bootstrap import ADMIN_METADATA_KEY, LISTEN_METADATA_KEY
from .rollout import machine
from .rollout.config import rollout_spec
from .rollout.runner import ActiveRollout, RolloutRunner
from .routing.errors import ConfigError, Problem
from .routing.loader import LoadedRoutes, validate
from .routing.revisions import Revision, RevisionPlan, RevisionStore
from .routing.schema import PREVIEW_TAG, HostPort, ServiceSpec, service_hosts, tag_host
from .routing.traffic import ResolvedTraffic, Split, Unresolved, blend, resolve_traffic
from .xds import resources as xds
from .xds.cache import Resource, SnapshotCache
from .xds.server import GatewayRegistry

log = logging.getLogger("ferry.controller")

BackendFactory = Callable[[EndpointsChanged, DrainHook], Backend]

ENDED_BADLY = ("rolled-back", "aborted")


@dataclass
class RevisionRuntime:
    revision: Revision
    workload: Workload | None  # None: endpoints managed elsewhere (template.endpoints)
    instances: int
    endpoints: tuple[Endpoint, ...] = ()  # ready ones
    retiring: bool = False
    retire_task: asyncio.Task | None = None
    activator_in_path: bool = False  # autoscaled only: EDS points at the activator, not the instances
    scale_events: deque = field(default_factory=lambda: deque(maxlen=20))  # the latest scale changes, for status
    proven: bool = False  # became ready once (or starts at zero): the activator may wake it for a route

    @property
    def autoscaled(self) -> bool:
        return self.workload is not None

    @property
    def routable(self) -> bool:
        """Requests sent to it now are answered: it has ready instances, or the activator holds them
        while it wakes (Knative routes to a Ready revision even at zero)."""
        return bool(self.endpoints) or (self.autoscaled and self.proven and self.activator_in_path)

    @property
    def name(self) -> str:
        return self.revision.name

    @property
    def cluster(self) -> str:
        return xds.cluster_name(self.revision.service, self.revision.name)


@dataclass
class ServiceRuntime:
    name: str
    spec: ServiceSpec
    current: Revision  # the revision of the file's template (Knative's latestCreatedRevision)
    routes: tuple[xds.HostRoute, ...] = ()  # what the route table holds for this service
    traffic: ResolvedTraffic | None = None  # the split those routes implement
    waiting: str | None = None  # why the file's traffic is not (yet) what gateways serve
    revisions: set[str] = field(default_factory=set)  # revisions this service keeps running
    wanted: frozenset[str] = frozenset()  # what the file's traffic names now, routed or still becoming ready
    rollout: machine.Rollout | None = None  # in progress, or the last one (for status)
    failed: set[str] = field(default_factory=set)  # revisions whose rollout was rolled back or aborted
    override: tuple[Split, ...] | None = None  # `ferry traffic`: an imperative main split, until the file agrees
    rollback_ms: float | None = None  # the last rollback: failing check -> every gateway in sync


class Controller:
    def __init__(
        self,
        store: RevisionStore,
        backend_factory: BackendFactory,
        cache: SnapshotCache,
        gateways: GatewayRegistry,
        *,
        activator: Activator,
        activator_address: HostPort | None = None,
        local_admins: Iterable[EnvoyAdmin] = (),
        cluster_linger_s: float = 10.0,
        sync_timeout_s: float = 10.0,
        autoscale_tick_s: float = 2.0,
        retained_revisions: int = 10,
    ):
        self.store = store
        self.cache = cache
        self.gateways = gateways
        self.backend = backend_factory(self._on_endpoints, self._drain)
        self.activator = activator
        self.activator_address = activator_address  # as gateways reach it; None: where it listens
        self.local_admins = list(local_admins)
        self.autoscaler = Autoscaler(
            self, Sources(admins=self.gateway_admins, activator=activator.stats), tick_s=autoscale_tick_s
        )
        self.cluster_linger_s = cluster_linger_s
        self.retained_revisions = retained_revisions  # per service, for a backend that keeps stopped revisions
        self.sync_timeout_s = sync_timeout_s
        self.loaded: LoadedRoutes | None = None
        self.plan: RevisionPlan | None = None
        self._planned: dict[str, Revision] = {}  # the plan's revisions by name
        self._latest_ready_cache: dict[str, str | None] = {}
        self._latest_ready_unsaved: dict[str, str] = {}
        self.services: dict[str, ServiceRuntime] = {}
        self.revisions: dict[str, RevisionRuntime] = {}
        self.last_applied: float | None = None
        self.last_error: str | None = None
        self.timings: dict[str, float] = {}  # how long the last load/apply took, for status and the bench
        self.poison_routes = False  # test hook: the next route table built is one Envoy must reject
        self._route_refs: dict[str, frozenset[str]] = {}  # service -> clusters its route table names
        self._scopes: dict[str, set[str]] = {}  # service -> hosts scoped to its route table
        self._scope_owner: dict[str, str] = {}  # host -> the service its scope points at
        self._pending: dict[str, dict[str, Resource | None]] = {t: {} for t in xds.PUSH_ORDER}
        self._group_listen: dict[str, HostPort | None] = {}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.rollouts = RolloutRunner(self, self.gateway_admins)
        self._protected: dict[str, int] = {}  # a rollout's stable revision -> the scale it keeps at least
        self._owned: dict[str, set[str]] = {t: set() for t in xds.PUSH_ORDER}  # what this controller published
        self._replica_gateways: dict[str, tuple[float, list[dict]]] = {}  # replica -> (expires, its gateways)

    # -- applying a routes file -----------------------------------------------------------------------

    async def start(self) -> None:
        """Before the first apply. A backend that outlives ferry (Kubernetes) is read first: the revision
        history recorded there is taken in, so a new leader (or a pod that lost its emptyDir) names templates
        as the last one did, and what already runs is adopted at its scale with its endpoints."""
        share = getattr(self.backend, "share_history", None)
        if share is not None:
            log.info("reading the revision history recorded on the Deployments")
            added = await share(self.store)
            log.info("revision history read", extra={"revisions_added": added})

    async def apply(self, loaded: LoadedRoutes) -> None:
        """Validate against the revision history, then converge. Raises ConfigError and changes nothing."""
        async with self._lock:
            started = time.perf_counter()
            if self.loaded is not None and loaded.spec.backend != self.loaded.spec.backend:
                raise ConfigError(str(loaded.path), [Problem(
                    "backend", "where revisions run is chosen when ferry starts: restart `ferry up` to change the "
                    "backend (revision names and history are kept)")])
            plan = validate(loaded, self.store, (self.loaded, self.plan) if self.loaded and self.plan else None)
            self.store.commit(plan)
            self.plan = plan
            self._planned = {r.name: r for r in plan.current.values()}
            previous = self.loaded
            self.loaded = loaded
            gateway_changed = previous is None or previous.spec.gateway != loaded.spec.gateway
            if previous is None or previous.spec.gateway.listen != loaded.spec.gateway.listen:
                self._publish_listeners()
            for name in [n for n in self.services if n not in loaded.spec.services]:
                self._remove_service(name)
            for name, spec in loaded.spec.services.items():
                service = self.services.get(name)
                current = plan.current[name]
                if service is None:
                    service = self.services[name] = ServiceRuntime(name, spec, current)
                    self._restore_rollout_state(service)
                elif (service.spec is spec or service.spec == spec) and service.current == current and not gateway_changed:
                    continue  # untouched: a one-service edit reconciles one service
                service.spec, service.current = spec, current
                self._rollout_follows_file(service)
                if gateway_changed:
                    service.routes = ()  # hosts derive from the domain: rebuild
                await self._reconcile_service(service)
            self._publish()
            self.timings["apply_ms"] = round((time.perf_counter() - started) * 1000, 2)
            # Everything alive now is long-lived config: keep the cyclic GC from rescanning it (at 10,000
            # services a full collection took 0.5 s, stalling pushes that were already under way).
            gc.freeze()
            self.last_applied = time.time()
            self.last_error = None

    def publish_poisoned_routes(self) -> None:
        """Test hook: publish a route table that passes ferry's checks but that Envoy rejects (a
        duplicate domain), to exercise NACK handling end to end. The service's next route change replaces it."""
        self.poison_routes = True
        for service in self.services.values():
            if service.routes:
                self._put_routes(service.name, service.routes)
                break
        self.poison_routes = False
        self._publish()

    def record_error(self, message: str) -> None:
        self.last_error = message

    async def _reconcile_service(self, service: ServiceRuntime) -> None:
        resolved = await self._run_wanted_revisions(service)
        service.wanted = resolved.revisions() if isinstance(resolved, ResolvedTraffic) else frozenset()
        if service.override is not None and isinstance(resolved, ResolvedTraffic):
            steady = resolve_traffic(service.spec, self._latest_ready(service.name))
            if isinstance(steady, ResolvedTraffic) and set(steady.main) == set(service.override):
                self._clear_override(service, "the file now says the same")
        if isinstance(resolved, Unresolved):
            service.waiting = resolved.reason
        else:
            self._route_service(service, resolved)
        needed = self._needed_revisions(service, resolved)
        for name in service.revisions - needed:
            self._retire_revision(name)
        service.revisions &= needed

    async def _run_wanted_revisions(self, service: ServiceRuntime) -> ResolvedTraffic | Unresolved:
        """Start what the traffic names; starting one may make it ready at once (endpoints managed
        elsewhere), which can change what latestRevision means: resolve until it settles."""
        while True:
            latest_ready = self._latest_ready(service.name)
            resolved = self._shape(service, resolve_traffic(service.spec, latest_ready))
            needed = self._needed_revisions(service, resolved)
            for name in needed - service.revisions:
                await self._start_revision(name)
            service.revisions |= needed
            if self._latest_ready(service.name) == latest_ready:
                return resolved

    def _shape(self, service: ServiceRuntime, steady: ResolvedTraffic | Unresolved) -> ResolvedTraffic | Unresolved:
        """Who owns the main split: a rollout in progress (part way from the stable revision's traffic to the
        file's), else a `ferry traffic` override, else the file."""
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

    @staticmethod
    def _sticky_cookie(service: ServiceRuntime) -> str | None:
        """During a sticky rollout, a cookie per service keeps each client on the revision it first got."""
        rollout, block = service.rollout, service.spec.rollout
        if rollout is None or not rollout.active or block is None or not block.sticky:
            return None
        return f"ferry-rollout-{service.name}"

    @staticmethod
    def _needed_revisions(service: ServiceRuntime, resolved: ResolvedTraffic | Unresolved) -> set[str]:
        """What the traffic names, what gateways still route to, and the newest revision (it must run
        to become ready; not once its rollout failed)."""
        needed = {service.current.name} - service.failed
        if isinstance(resolved, ResolvedTraffic):
            needed |= resolved.revisions()
        if service.traffic is not None:
            needed |= service.traffic.revisions()
        return needed

    def _route_service(self, service: ServiceRuntime, resolved: ResolvedTraffic) -> None:
        # Ready now, not "once": a revision brought back from retirement waits for its new instances.
        not_ready = [r for r in sorted(resolved.revisions()) if not self.revisions[r].routable]
        if not_ready:
            service.waiting = f"waiting for revision {', '.join(not_ready)} to become ready"
            return
        service.waiting = None
        routes = self._host_routes(service, resolved)
        if routes == service.routes:
            service.traffic = resolved
            return
        service.routes, service.traffic = routes, resolved
        self._put_routes(service.name, routes)

    def _put_routes(self, service: str, routes: tuple[xds.HostRoute, ...]) -> None:
        """One service's route table, and a host scope for each of its hosts."""
        vhosts = [xds.virtual_host(r) for r in routes]
        if self.poison_routes and vhosts:
            vhosts.append(vhosts[0])  # a duplicate domain: Envoy must reject the table
        self._put(xds.ROUTE, service, xds.route_configuration(service, vhosts))
        self._route_refs[service] = frozenset(t.cluster for r in routes for t in r.targets)
        self._check_references(service)
        hosts = {host for r in routes for host in r.domains}
        self._release_hosts(service, self._scopes.get(service, set()) - hosts)
        for host in hosts - self._scopes.get(service, set()):
            self._scope_owner[host] = service
            self._put(xds.SCOPED_ROUTE, host, xds.host_scope(host, service))
        self._scopes[service] = hosts

    def _release_hosts(self, service: str, hosts: set[str]) -> None:
        """Delete the scopes of hosts the service no longer has, unless another service took them over in
        this same change (services are processed in file order, so the taker may have come first)."""
        for host in hosts:
            if self._scope_owner.get(host) == service:
                del self._scope_owner[host]
                self._put(xds.SCOPED_ROUTE, host, None)

    def _host_routes(self, service: ServiceRuntime, resolved: ResolvedTraffic) -> tuple[xds.HostRoute, ...]:
        gateway = self.loaded.spec.gateway
        runtime = self.revisions

        def target(revision: str, percent: int) -> xds.WeightedTarget:
            return xds.WeightedTarget(runtime[revision].cluster, revision, percent)

        main = tuple(target(s.revision, s.percent) for s in resolved.main)
        routes = []
        if main:
            routes.append(
                xds.HostRoute(
                    name=service.name,
                    service=service.name,
                    domains=tuple(service_hosts(service.name, service.spec, gateway)),
                    targets=main,
                    timeout_s=max(runtime[t.revision].revision.template.timeout for t in main),
                    tagged=tuple((tag, target(revision, 100)) for tag, revision in resolved.tags),
                    sticky_cookie=self._sticky_cookie(service),
                )
            )
        for tag, revision in resolved.tags:
            routes.append(
                xds.HostRoute(
                    name=f"{service.name}/tag/{tag}",
                    service=service.name,
                    domains=(tag_host(tag, service.name, gateway),),
                    targets=(target(revision, 100),),
                    timeout_s=runtime[revision].revision.template.timeout,
                )
            )
        return tuple(routes)

    def _remove_service(self, name: str) -> None:
        service = self.services.pop(name)
        self._release_hosts(name, self._scopes.pop(name, set()))
        if self._route_refs.pop(name, None) is not None:
            self._put(xds.ROUTE, name, None)
        for revision in service.revisions:
            self._retire_revision(revision)

    # -- revisions ------------------------------------------------------------------------------------

    async def _start_revision(self, name: str) -> None:
        runtime = self.revisions.get(name)
        if runtime is not None:
            if runtime.retiring:
                runtime.retiring = False
                if runtime.retire_task is not None:
                    runtime.retire_task.cancel()
                    runtime.retire_task = None
                if runtime.workload is not None:
                    state = self.autoscaler.track(name, self._settings(runtime.revision))
                    runtime.instances = state.scale
                    self._set_endpoints(runtime, runtime.endpoints)
                    await self.backend.scale(runtime.workload, runtime.instances)
            return
        revision = self._revision(name)
        template = revision.template
        workload = None
        if template.command or template.image:
            workload = Workload(
                service=revision.service,
                revision=revision.name,
                command=tuple(template.command or ()),
                cwd=self.loaded.base_dir,
                env=dict(template.env),
                readiness_path=template.readiness.path if template.readiness else None,
                timeout_s=template.timeout,
                image=template.image,
                args=tuple(template.args) if template.args is not None else None,
                port=template.port,
                resources=template.resources.model_dump(mode="json", exclude_defaults=True)
                if template.resources is not None else None,
            )
        runtime = RevisionRuntime(revision, workload, instances=template.scale.initial)
        self.revisions[name] = runtime
        self._put(xds.CLUSTER, runtime.cluster, xds.cluster(runtime.cluster))
        if workload is None:
            self._set_endpoints(runtime, tuple(Endpoint(h, p) for h, p in template.endpoints))
        else:
            # A backend that outlives ferry (Kubernetes) may already run it: adopt its scale and endpoints.
            running = getattr(self.backend, "replicas", None)
            adopted = running(name) if running is not None else None
            state = self.autoscaler.track(name, self._settings(revision), adopted=adopted)
            runtime.instances = state.scale
            runtime.proven = state.scale == 0  # Knative: a revision that starts at zero is ready at once
            self._set_endpoints(runtime, self.backend.endpoints(name) if adopted else ())
            await self.backend.scale(workload, runtime.instances)
        log.info("revision started", extra={"revision": name, "instances": runtime.instances})

    def _revision(self, name: str) -> Revision:
        """Revisions of the applied plan are in memory; older ones (named in traffic) come from the store."""
        runtime = self.revisions.get(name)
        if runtime is not None:
            return runtime.revision
        return self._planned.get(name) or self.store.get(name)

    def _retire_revision(self, name: str) -> None:
        runtime = self.revisions.get(name)
        if runtime is None or runtime.retiring:
            return
        runtime.retiring = True
        self.autoscaler.untrack(name)
        runtime.retire_task = self._spawn(self._retire(runtime), f"retire {name}")

    async def _retire(self, runtime: RevisionRuntime) -> None:
        """Stop a revision only once no gateway routes to it, then drop its cluster after a linger."""
        await self._publish_and_sync()
        if runtime.workload is not None:
            await self.backend.stop(runtime.name)
        log.info("revision stopped", extra={"revision": runtime.name})
        await self._collect_garbage()
        # Envoy does not swap routes and clusters atomically: keep the cluster a while (net-kourier: 15 s).
        await asyncio.sleep(self.cluster_linger_s)
        if runtime.retiring and self.revisions.get(runtime.name) is runtime:
            del self.revisions[runtime.name]
            if runtime.autoscaled:
                self.activator.remove_revision(runtime.name)
            self._put(xds.CLUSTER, runtime.cluster, None)
            self._put(xds.ENDPOINT, runtime.cluster, None)
            self._publish()

    async def _collect_garbage(self) -> None:
        """A backend that keeps stopped revisions (Kubernetes: Deployments at 0) deletes all but the newest
        `retained_revisions` of each service, and never one that is still wanted."""
        collect = getattr(self.backend, "collect_garbage", None)
        if collect is None:
            return
        keep = {name for name, runtime in self.revisions.items() if not runtime.retiring}
        for service in self.services:
            keep |= {r.name for r in self.store.revisions(service)[-self.retained_revisions:]}
        try:
            deleted = await collect(keep)
        except Exception as err:  # the API may be down; the next retirement tries again
            log.warning("garbage collection failed", extra={"error": str(err)})
            return
        if deleted:
            log.info("old revisions deleted", extra={"deleted": ", ".join(deleted)})

    async def _publish_and_sync(self) -> None:
        self._publish()
        if not await self.gateways.wait_in_sync(self.sync_timeout_s):
            log.warning("gateways not in sync; stopping anyway", extra={"timeout_s": self.sync_timeout_s})

    def set_endpoints(self, revision: str, endpoints) -> None:
        """What a backend reports when a revision's ready endpoints change."""
        self._on_endpoints(revision, tuple(Endpoint(h, p) for h, p in endpoints))

    def _latest_ready(self, service: str) -> str | None:
        """The store is the truth across restarts; this process is its only writer, so reads come from memory."""
        if service not in self._latest_ready_cache:
            self._latest_ready_cache[service] = self.store.latest_ready(service)
        return self._latest_ready_cache[service]

    def _on_endpoints(self, revision: str, endpoints: tuple[Endpoint, ...]) -> None:
        runtime = self.revisions.get(revision)
        if runtime is None:
            return
        self._set_endpoints(runtime, endpoints)
        self._publish()

    def _set_endpoints(self, runtime: RevisionRuntime, endpoints: tuple[Endpoint, ...]) -> None:
        was_routable = runtime.routable
        runtime.endpoints = endpoints
        if runtime.autoscaled:
            template = runtime.revision.template
            # The activator learns first: a request it holds may go to a new instance at once, and none
            # goes to an instance that is leaving. Except when the whole revision is retiring: requests Envoy
            # routed to it just before the route moved still reach the activator, and they have nowhere else
            # to go, so its instances stay there until they stop (as Knative's activator keeps them).
            self.activator.set_revision(
                runtime.name,
                self._live_endpoints(runtime) if runtime.retiring else endpoints,
                concurrency=template.concurrency,
                timeout_s=template.timeout,
            )
            # A retiring revision is routed nowhere: nothing should wake it.
            runtime.activator_in_path = not runtime.retiring and self._wants_activator(
                runtime, self.autoscaler.activator_in_path(runtime.name, len(endpoints))
            )
            if endpoints:
                runtime.proven = True
        self._put_endpoints(runtime)
        if runtime.routable and not was_routable:
            self._became_ready(runtime)

    def _live_endpoints(self, runtime: RevisionRuntime) -> tuple[Endpoint, ...]:
        """Instances still running, draining ones included."""
        return tuple(i.endpoint for i in self.backend.instances(runtime.name) if i.endpoint and i.alive)

    def _put_endpoints(self, runtime: RevisionRuntime) -> None:
        address = self.activator_address or HostPort(self.activator.host, self.activator.port)
        endpoints = (Endpoint(address.host, address.port),) if runtime.activator_in_path else runtime.endpoints
        self._put(xds.ENDPOINT, runtime.cluster, xds.load_assignment(runtime.cluster, endpoints))

    def _became_ready(self, runtime: RevisionRuntime) -> None:
        """A newer ready revision is what latestRevision means now; a route waiting for this one may move."""
        revision = runtime.revision
        service = self.services.get(revision.service)
        if service is not None and revision.name in service.failed:
            return  # its rollout failed: it is never the latest again, unless `ferry rollout retry`
        latest = self._latest_ready(revision.service)
        newer = revision.generation > (self._revision(latest).generation if latest else 0)
        if newer:
            self._set_latest_ready(revision.service, revision.name)
            if service is not None and service.spec.rollout is not None and latest is not None:
                rollout = service.rollout
                if rollout is None or not rollout.active or rollout.candidate != revision.name:
                    self._start_rollout(service, stable=latest, candidate=revision.name)
        if service is not None and not runtime.retiring and (newer or service.waiting is not None):
            self._spawn(self._reconcile_after_ready(service), f"route {service.name}")

    def _set_latest_ready(self, service: str, revision: str) -> None:
        self._latest_ready_cache[service] = revision
        self._latest_ready_unsaved[service] = revision  # written with the next publish

    async def _reconcile_after_ready(self, service: ServiceRuntime) -> None:
        async with self._lock:
            if self.services.get(service.name) is service:
                await self._reconcile_service(service)
                self._publish()

    async def _drain(self, revision: str, endpoint: Endpoint) -> None:
        """Before SIGTERM: every gateway has dropped the endpoint and the activator's requests to it have
        finished. (The backend then waits for the gateways' own requests: it can see the instance's
        connections, which Envoy closes once a removed host's last request is answered.)"""
        await self._publish_and_sync()
        while self.activator.in_flight(revision, endpoint):
            await asyncio.sleep(0.02)

    # -- rollouts (the RolloutRunner's RolloutTarget) ---------------------------------------------------

    def _restore_rollout_state(self, service: ServiceRuntime) -> None:
        """After a restart: which revisions failed, any `ferry traffic` override, and a rollout to resume at
        the step it had reached (its analysis window starts afresh: the gateways' counters did too)."""
        results = self.store.results(service.name)
        service.failed = {revision for revision, (result, _, _) in results.items() if result in ENDED_BADLY}
        override = self.store.traffic_override(service.name)
        service.override = tuple(Split(r, p) for r, p in override) if override else None
        text = self.store.rollout(service.name)
        if text:
            rollout = machine.Rollout.from_json(text)
            if rollout.active:
                rollout = machine.resume(rollout, now=time.time())
                self._protect(rollout.stable)
            service.rollout = rollout
        self._rollout_follows_file(service)

    def _rollout_follows_file(self, service: ServiceRuntime) -> None:
        """A rollout in progress ends when the file moves on: a newer template supersedes its candidate (which
        then counts as aborted), and a removed rollout block leaves the file's split in charge."""
        rollout = service.rollout
        if rollout is None or not rollout.active:
            return
        if rollout.candidate != service.current.name:
            self._end_rollout(service, machine.abort(
                rollout, now=time.time(), reason=f"superseded by the newer revision {service.current.name}"))
        elif service.spec.rollout is None:
            self._end_rollout(service, machine.promote(rollout, self._rollout_spec(service), now=time.time()))

    def _rollout_spec(self, service: ServiceRuntime) -> machine.RolloutSpec:
        block = service.spec.rollout
        return rollout_spec(block) if block is not None else machine.RolloutSpec(strategy=service.rollout.strategy)

    def _start_rollout(self, service: ServiceRuntime, *, stable: str, candidate: str) -> None:
        rollout = machine.start(
            self._rollout_spec(service), service=service.name, stable=stable, candidate=candidate, now=time.time()
        )
        service.rollout = rollout
        service.rollback_ms = None  # belongs to the rollout it measured
        self.store.save_rollout(service.name, rollout.to_json())
        self._protect(stable)
        log.info("rollout started", extra={"service": service.name, "strategy": rollout.strategy,
                                            "stable": stable, "candidate": candidate, "weight": rollout.weight})

    def _end_rollout(self, service: ServiceRuntime, rollout: machine.Rollout) -> None:
        """Record how it ended. A failure makes the stable revision the latest again and keeps the candidate
        out of latestRevision until a retry."""
        service.rollout = rollout
        self.store.save_rollout(service.name, rollout.to_json())
        self._unprotect(rollout.stable)
        if rollout.phase in ENDED_BADLY:
            self.store.set_result(rollout.candidate, rollout.phase, rollout.reason)
            service.failed.add(rollout.candidate)
            if self._latest_ready(service.name) == rollout.candidate:
                self._set_latest_ready(service.name, rollout.stable)
            log.warning("rollout %s", rollout.phase, extra={
                "service": service.name, "candidate": rollout.candidate, "stable": rollout.stable,
                "reason": rollout.reason})
        else:
            self.store.set_result(rollout.candidate, rollout.phase, rollout.reason)
            log.info("rollout promoted", extra={"service": service.name, "candidate": rollout.candidate})

    def active_rollouts(self) -> dict[str, ActiveRollout]:
        return {
            name: ActiveRollout(s.rollout, self._rollout_spec(s), xds.cluster_name(name, s.rollout.candidate))
            for name, s in self.services.items()
            if s.rollout is not None and s.rollout.active
        }

    async def rollout_changed(
        self, service_name: str, rollout: machine.Rollout, *, previous: machine.Rollout | None, decided_at: float
    ) -> None:
        async with self._lock:
            service = self.services.get(service_name)
            if service is None or service.rollout is not previous:
                return  # it moved on while this step was being decided
            if previous is not None and previous.active and not rollout.active:
                self._end_rollout(service, rollout)
            else:
                service.rollout = rollout
                self.store.save_rollout(service_name, rollout.to_json())
                if previous is not None and rollout.weight != previous.weight:
                    log.info("rollout step", extra={"service": service_name, "candidate": rollout.candidate,
                                                     "weight": rollout.weight, "step": rollout.step})
            await self._reconcile_service(service)
            self._publish()
        if rollout.phase in ENDED_BADLY and previous is not None and previous.active:
            # The whole point of a rollback is speed: measure it to the last gateway's ACK.
            if await self.gateways.wait_in_sync(self.sync_timeout_s):
                service.rollback_ms = round((time.perf_counter() - decided_at) * 1000, 2)

    async def rollout_action(self, service_name: str, action: str) -> machine.Rollout:
        """`ferry rollout promote|abort|retry`. KeyError: no such service; ValueError: not possible now (says why)."""
        service = self.services[service_name]
        rollout = service.rollout
        now = time.time()
        if action == "retry":
            if rollout is None or rollout.phase not in ENDED_BADLY:
                raise ValueError(f"service {service_name} has no rolled-back or aborted rollout to retry")
            if rollout.candidate != service.current.name:
                raise ValueError(f"revision {rollout.candidate} is no longer the newest ({service.current.name} is); "
                                 "a template change starts a fresh rollout by itself")
            self.store.clear_result(rollout.candidate)
            service.failed.discard(rollout.candidate)
            following = machine.retry(rollout, self._rollout_spec(service), now=now)
            service.rollback_ms = None
            self._protect(following.stable)
        elif rollout is None or not rollout.active:
            raise ValueError(f"service {service_name} has no rollout in progress")
        elif action == "promote":
            following = machine.promote(rollout, self._rollout_spec(service), now=now)
        elif action == "abort":
            following = machine.abort(rollout, now=now, reason="aborted with `ferry rollout abort`")
        else:
            raise ValueError(f"unknown rollout action {action!r}: promote, abort or retry")
        if action == "retry":
            async with self._lock:
                service.rollout = following
                self.store.save_rollout(service_name, following.to_json())
                await self._reconcile_service(service)
                self._publish()
        else:
            await self.rollout_changed(service_name, following, previous=rollout, decided_at=time.perf_counter())
        return service.rollout

    async def set_traffic(self, service_name: str, splits: list[tuple[str, int]] | None) -> None:
        """`ferry traffic`: an imperative main split (None resets to the file). ValueError says what is wrong."""
        service = self.services[service_name]
        if splits is not None:
            if service.rollout is not None and service.rollout.active:
                raise ValueError(f"a rollout owns the split of {service_name}; promote or abort it first")
            known = {r.name for r in self.store.revisions(service_name)}
            unknown = [r for r, _ in splits if r not in known]
            if unknown:
                raise ValueError(f"{', '.join(unknown)}: not a revision of {service_name} "
                                 f"(known: {', '.join(sorted(known)[-10:])})")
            if sum(p for _, p in splits) != 100 or any(not 0 <= p <= 100 for _, p in splits):
                raise ValueError(f"percents must be 0..100 and sum to exactly 100, got {sum(p for _, p in splits)}")
            if len({r for r, _ in splits}) != len(splits):
                raise ValueError("each revision may appear once")
        async with self._lock:
            self.store.set_traffic_override(service_name, splits)
            service.override = tuple(Split(r, p) for r, p in splits if p > 0) if splits is not None else None
            await self._reconcile_service(service)
            self._publish()

    def _clear_override(self, service: ServiceRuntime, why: str) -> None:
        self.store.set_traffic_override(service.name, None)
        service.override = None
        log.info("traffic override cleared", extra={"service": service.name, "why": why})

    # -- a rollout's stable revision keeps its capacity --------------------------------------------------

    def _settings(self, revision: Revision):
        """The revision's autoscaling settings; while a rollout may fall back to it, its scale at the rollout's
        start is a floor (Flagger keeps the primary scaled the same way)."""
        settings = settings_for(revision.template)
        floor = self._protected.get(revision.name)
        if floor is None:
            return settings
        if settings.max_scale:
            floor = min(floor, settings.max_scale)
        return replace(settings, min_scale=max(settings.min_scale, floor))

    def _protect(self, revision: str) -> None:
        runtime = self.revisions.get(revision)
        self._protected[revision] = max(1, runtime.instances if runtime is not None else 1)
        if runtime is not None and runtime.autoscaled and not runtime.retiring:
            self.autoscaler.track(revision, self._settings(runtime.revision))

    def _unprotect(self, revision: str) -> None:
        if self._protected.pop(revision, None) is None:
            return
        runtime = self.revisions.get(revision)
        if runtime is not None and runtime.autoscaled and not runtime.retiring:
            self.autoscaler.track(revision, self._settings(runtime.revision))

    # -- autoscaling (the Autoscaler's ScaleTarget) ----------------------------------------------------

    def ready(self, revision: str) -> int:
        runtime = self.revisions.get(revision)
        return len(runtime.endpoints) if runtime else 0

    def reachable(self, revision: str) -> bool:
        """Routed now, named by the file's traffic, or the newest revision of a service that follows the
        latest: only an unreachable revision may go below its min scale (to zero, when idle)."""
        runtime = self.revisions.get(revision)
        if runtime is None:
            return False
        service = self.services.get(runtime.revision.service)
        if service is None:
            return False
        if revision in service.wanted or (service.traffic is not None and revision in service.traffic.revisions()):
            return True
        traffic = service.spec.traffic
        return revision == service.current.name and (traffic is None or any(t.latestRevision for t in traffic))

    async def apply_step(self, revision: str, step: Step) -> None:
        runtime = self.revisions.get(revision)
        if runtime is None or runtime.retiring or runtime.workload is None:
            return
        if step.scale is not None and step.scale != runtime.instances:
            log.info("scaling", extra={"revision": revision, "from": runtime.instances, "to": step.scale,
                                       "reason": step.reason})
            runtime.scale_events.append(
                {"at": round(time.time(), 3), "from": runtime.instances, "to": step.scale, "reason": step.reason}
            )
            runtime.instances = step.scale
            await self.backend.scale(runtime.workload, step.scale)
        if runtime.retiring:  # retired while the backend was scaling
            return
        in_path = self._wants_activator(runtime, step.activator_in_path)
        if in_path != runtime.activator_in_path:
            runtime.activator_in_path = in_path
            log.info("activator in path" if in_path else "activator out of path",
                     extra={"revision": revision, "ready": len(runtime.endpoints)})
            self._put_endpoints(runtime)
            self._publish()

    @staticmethod
    def _wants_activator(runtime: RevisionRuntime, autoscaler_says: bool) -> bool:
        """A revision with a concurrency limit keeps the activator in its path at every scale: only the
        activator sees every gateway's requests, so only it can hold each instance to the limit (Knative
        puts a queue-proxy beside each instance for that; ferry has none)."""
        return autoscaler_says or runtime.revision.template.concurrency > 0

    def wake(self, revision: str) -> None:
        """The activator holds a request for a revision with no ready instance."""
        self.autoscaler.poke(revision)

    def report_gateways(self, replica: str, gateways: list[dict], ttl_s: float) -> None:
        """What a follower replica serves: its gateways count for autoscaling and status until `ttl_s` passes
        without a new report (a follower that died takes its gateways' reports with it)."""
        self._replica_gateways[replica] = (time.monotonic() + ttl_s, gateways)

    def _live_replica_gateways(self) -> list[tuple[str, dict]]:
        now = time.monotonic()
        for replica in [r for r, (expires, _) in self._replica_gateways.items() if expires < now]:
            del self._replica_gateways[replica]
        return [(r, g) for r, (_, gateways) in self._replica_gateways.items() for g in gateways]

    def _replica_gateways_status(self) -> list[dict]:
        return [{**gateway, "via": replica} for replica, gateway in self._live_replica_gateways()]

    def gateway_admins(self) -> list[EnvoyAdmin]:
        """Every gateway that told us its admin address (directly, or through a follower replica), and our own
        Envoy: the autoscaler's and the rollout analysis' sources."""
        admins = {(a.host, a.port): a for a in self.local_admins}
        addresses = [stream.node.metadata.get(ADMIN_METADATA_KEY) if stream.node is not None else None
                     for stream in list(self.gateways.streams)]
        addresses += [gateway.get("admin") for _, gateway in self._live_replica_gateways()]
        for address in addresses:
            if address:
                try:
                    parsed = HostPort.parse(address)
                except ValueError:
                    continue
                admins.setdefault((parsed.host, parsed.port), EnvoyAdmin(parsed.host, parsed.port, timeout=1.0))
        return list(admins.values())

    # -- publishing -----------------------------------------------------------------------------------

    def _put(self, type_url: str, name: str, body: bytes | None) -> None:
        self._pending[type_url][name] = None if body is None else Resource.of(name, body)
        if body is None:
            self._owned[type_url].discard(name)
        else:
            self._owned[type_url].add(name)

    def drop_inherited_later(self) -> None:
        """After taking over a cache another leader filled (a follower's mirror, which gateways stay connected
        to): once the first apply published this controller's state, what only the old leader published goes,
        after the same linger as a retired revision's cluster (a request may still be on its way to it)."""

        async def drop() -> None:
            await asyncio.sleep(self.cluster_linger_s)
            async with self._lock:
                stores = self.cache.group(SnapshotCache.DEFAULT).stores
                inherited = {t: set(stores[t].entries) - self._owned[t]
                             for t in xds.PUSH_ORDER if t != xds.LISTENER}  # listeners: listener_for_group's
                for type_url, names in inherited.items():
                    for name in names:
                        self._pending[type_url][name] = None
                dropped = sum(len(names) for names in inherited.values())
                self._publish()
            if dropped:
                log.info("dropped what the previous leader published and this one does not",
                         extra={"resources": dropped})

        self._spawn(drop(), "drop inherited resources")

    def _publish(self) -> None:
        if self._latest_ready_unsaved:
            self.store.set_latest_ready_many(self._latest_ready_unsaved)
            self._latest_ready_unsaved = {}
        changes = {t: entries for t, entries in self._pending.items() if entries}
        if not changes:
            return
        self._pending = {t: {} for t in xds.PUSH_ORDER}
        self.cache.update(changes)

    def _check_references(self, service: str) -> None:
        """Every cluster a route names exists in what we are about to publish (go-control-plane skips this)."""
        published = self.cache.group(SnapshotCache.DEFAULT).stores[xds.CLUSTER].entries
        pending = self._pending[xds.CLUSTER]
        missing = [
            c for c in self._route_refs[service]
            if (pending[c] is None if c in pending else c not in published)
        ]
        if missing:
            raise AssertionError(f"routes of {service} name clusters that would not exist: {sorted(missing)}")

    def dependencies(self, type_url: str, resource: Resource) -> frozenset[str]:
        """What a gateway must hold before this resource may be sent: a route table's clusters."""
        if type_url == xds.ROUTE:
            return self._route_refs.get(resource.name, frozenset())
        return frozenset()

    # -- listeners (per group: a gateway may ask for its own listen address) ---------------------------

    @staticmethod
    def snapshot_key(node) -> str:
        """A gateway that asks for its own listen address needs its own snapshot, even within its group."""
        listen = node.metadata.get(LISTEN_METADATA_KEY)
        return f"{node.group}@{listen}" if listen else node.group

    def listener_for_group(self, group: str, metadata) -> dict:
        """SnapshotCache hook for a new group: its listener, from node metadata or gateway.listen."""
        override = metadata.get(LISTEN_METADATA_KEY)
        self._group_listen[group] = HostPort.parse(override) if override else None
        return {xds.LISTENER: {xds.LISTENER_NAME: self._listener_resource(group)}}

    def adopt_groups(self) -> None:
        """Taking over a cache whose groups another leader specialised: their listen addresses are in their
        snapshot keys (see snapshot_key), so the first publish keeps each gateway's own listener."""
        for snapshot in list(self.cache.groups()):
            if "@" in snapshot.name and snapshot.name not in self._group_listen:
                self._group_listen[snapshot.name] = HostPort.parse(snapshot.name.split("@", 1)[1])

    def _listener_resource(self, group: str) -> Resource:
        listen = self._group_listen.get(group) or (
            self.loaded.spec.gateway.listen if self.loaded else HostPort("127.0.0.1", 8080)
        )
        return Resource.of(xds.LISTENER_NAME, xds.listener(listen.host, listen.port))

    def _publish_listeners(self) -> None:
        for snapshot in list(self.cache.groups()):
            self.cache.update({xds.LISTENER: {xds.LISTENER_NAME: self._listener_resource(snapshot.name)}}, [snapshot.name])

    # -- lifecycle ------------------------------------------------------------------------------------

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task failed", extra={"task": name}, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    async def aclose(self) -> None:
        await self.autoscaler.aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backend.aclose()

    # -- status ---------------------------------------------------------------------------------------

    def status(self, service: str | None = None) -> dict:
        """Everything, or one service and its revisions (cheap at any scale). KeyError: no such service."""
        chosen = sorted(self.services) if service is None else [self.services[service].name]
        revisions = sorted(
            name for name, runtime in self.revisions.items()
            if service is None or runtime.revision.service == service
        )
        services = {name: self._service_status(self.services[name]) for name in chosen}
        revision_status = {name: self._revision_status(self.revisions[name]) for name in revisions}
        return {
            "config": {
                "file": str(self.loaded.path) if self.loaded else None,
                "last_applied": self.last_applied,
                "last_error": self.last_error,
                **self.timings,
            },
            "services": services,
            "revisions": revision_status,
            "gateways": self.gateways.status() + self._replica_gateways_status(),
        }

    def _service_status(self, service: ServiceRuntime) -> dict:
        gateway = self.loaded.spec.gateway
        port = "" if gateway.listen.port == 80 else f":{gateway.listen.port}"
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
            "hosts": hosts,
            "latest_created": service.current.name,
            "latest_ready": self._latest_ready(service.name),
            "traffic": traffic,
            "routed": service.waiting is None,
            "waiting": service.waiting,
            "split_owner": self._split_owner(service),
            "traffic_override": [[s.revision, s.percent] for s in service.override] if service.override else None,
            "rollout": self.rollout_status(service.name) if service.rollout is not None else None,
        }

    def revisions_status(self, service_name: str) -> list[dict]:
        """`ferry revisions`: every revision the service ever had, newest first, with its traffic and how its
        rollout ended."""
        service = self.services[service_name]
        results = self.store.results(service_name)
        served = {s.revision: s.percent for s in service.traffic.main} if service.traffic else {}
        tags: dict[str, list[str]] = {}
        for tag, revision in service.traffic.tags if service.traffic else ():
            tags.setdefault(revision, []).append(tag)
        out = []
        for revision in reversed(self.store.revisions(service_name)):
            runtime = self.revisions.get(revision.name)
            result = results.get(revision.name)
            out.append({
                "name": revision.name,
                "generation": revision.generation,
                "created_at": revision.created_at,
                "state": self._revision_state(runtime, self.backend.counts(revision.name) if runtime and runtime.autoscaled else None)
                if runtime else "stopped",
                "ready": len(runtime.endpoints) if runtime else 0,
                "traffic": served.get(revision.name, 0),
                "tags": tags.get(revision.name, []),
                "latest_ready": revision.name == self._latest_ready(service_name),
                "rollout": {"result": result[0], "reason": result[1], "at": result[2]} if result else None,
            })
        return out

    @staticmethod
    def _split_owner(service: ServiceRuntime) -> str:
        """Who decides the main split now; an override differs from the file (drift) until reset or agreed."""
        if service.rollout is not None and service.rollout.active:
            return "rollout"
        return "override (drift from the file)" if service.override is not None else "file"

    def rollout_status(self, service_name: str) -> dict:
        """`ferry rollout status`: where it is, the weights gateways serve, every check and its verdict."""
        service = self.services[service_name]
        rollout = service.rollout
        if rollout is None:
            return {"service": service_name, "phase": None}
        state = json.loads(rollout.to_json())
        return {
            **state,
            "active": rollout.active,
            "preview": rollout.preview,
            "spec": json.loads(json.dumps(asdict(self._rollout_spec(service)))),
            "served": [{"revision": s.revision, "percent": s.percent} for s in service.traffic.main]
            if service.traffic else [],
            "rollback_ms": service.rollback_ms,
        }

    def _revision_status(self, runtime: RevisionRuntime) -> dict:
        managed = runtime.workload is not None
        counts = self.backend.counts(runtime.name) if managed else None
        return {
            "service": runtime.revision.service,
            "generation": runtime.revision.generation,
            "ready": counts.ready if counts else len(runtime.endpoints),
            "total": counts.total if counts else len(runtime.endpoints),
            "instances_started": counts.started if counts else None,
            "endpoints": [str(e) for e in runtime.endpoints],
            "state": self._revision_state(runtime, counts),
            "managed": managed,
            "autoscaling": self._autoscaling_status(runtime) if managed else None,
            "instances": [
                {"pid": i.pid, "endpoint": str(i.endpoint) if i.endpoint else None, "ready": i.ready,
                 "stopping": i.stopping, "restarts": i.restarts, "log": str(i.log_path)}
                for i in (self.backend.instances(runtime.name) if managed else ())
            ],
        }

    @staticmethod
    def _revision_state(runtime: RevisionRuntime, counts) -> str:
        if runtime.retiring:
            return "retiring"
        if runtime.endpoints:
            return "ready"
        if runtime.routable:  # the activator holds its requests
            return "at zero" if counts is not None and counts.total == 0 else "activating"
        return "not ready"

    def _autoscaling_status(self, runtime: RevisionRuntime) -> dict | None:
        """What `ferry status` shows about scaling: wanted vs ready, the load seen, and why."""
        state = self.autoscaler.states.get(runtime.name)
        if state is None:
            return {"activator_in_path": runtime.activator_in_path, "tracked": False}
        observed_at = self.autoscaler.observed_at
        now = self.autoscaler.clock() if observed_at is None else observed_at  # averages as decisions see them
        settings = state.settings
        load = self.autoscaler.last_load.get(runtime.name)
        decided = self.autoscaler.decisions.get(runtime.name)
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
            "last_decision": {"reason": decided[1].reason, "seconds_ago": round(self.autoscaler.clock() - decided[0], 1)}
            if decided else None,
            "scale_events": list(runtime.scale_events),
        }
