"""The controller: a validated routes file + revision readiness -> running instances + what every gateway serves.

It orchestrates; the decisions are rules.py's pure functions, the bookkeeping rollouts.py's, the staging
publisher.py's. It keeps, per service, the routes it last published and, per revision, what runs and where.
Every change is local: a service whose spec did not change is not touched, an endpoint change is one EDS
entry, and a traffic change is one small RouteConfiguration (each service has its own, selected by host
scopes).

Knative's rules for safety: a route moves only when every revision it names is ready (until then the
previous route keeps serving), and a revision that leaves the route is stopped only after every gateway
has acknowledged the route without it.

Managed revisions (those ferry runs) are autoscaled; their EDS entry holds either their ready instances or,
while they are at zero or short of burst capacity, the activator. Switching between the two is an
endpoint-only change: routes and clusters stay as they are.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from ..autoscaler.metrics import ActivatorCounts
from ..autoscaler.runner import Autoscaler, Sources
from ..autoscaler.scaler import Step
from ..backends.base import Backend, DrainHook, Durable, Endpoint, EndpointsChanged, Workload
from ..rollout import machine
from ..rollout.runner import ActiveRollout, RolloutRunner
from ..routing.certificates import resolve
from ..routing.revisions import Revision, RevisionStore
from ..routing.schema import Gateway, HostPort
from ..routing.traffic import ResolvedTraffic, Unresolved, resolve_traffic
from ..tasks import Background
from ..xds import resources as xds
from ..xds.cache import SnapshotCache
from . import rules, status
from .census import GatewayCensus
from .certs import HttpsState
from .config import Config
from .model import ENDED_BADLY, RevisionRuntime, ServiceRuntime
from .observe import RevisionObserver
from .publisher import Publisher, RouteTables
from .rollouts import Floor, LatestReady, RolloutBook

log = logging.getLogger("ferry.controller")

BackendFactory = Callable[[EndpointsChanged, DrainHook], Backend]


class ActivatorLink(Protocol):
    """What the controller tells the activator (which instances each revision has), and asks it."""

    host: str
    port: int

    def set_revision(self, revision: str, endpoints: Sequence[tuple[str, int]], *, concurrency: int,
                     timeout_s: float, response_start_s: float | None = None) -> None: ...

    def remove_revision(self, revision: str) -> None: ...

    def keep_only_known(self) -> None:
        """Forget every revision this controller did not set (what a previous ferry left)."""

    async def in_flight(self, revision: str, endpoint: tuple[str, int]) -> int: ...

    def stats(self) -> Mapping[str, ActivatorCounts]: ...


class Controller:
    def __init__(
        self,
        store: RevisionStore,
        backend_factory: BackendFactory,
        cache: SnapshotCache,
        census: GatewayCensus,
        *,
        activator: ActivatorLink,
        activator_address: HostPort | None = None,
        activator_key: str | None = None,
        cluster_linger_s: float = 10.0,
        sync_timeout_s: float = 10.0,
        autoscale_tick_s: float = 2.0,
        retained_revisions: int = 10,
    ):
        self.store = store
        self.census = census
        self.backend = backend_factory(self.on_endpoints, self._drain)
        self.durable = self.backend if isinstance(self.backend, Durable) else None
        self.activator = activator
        self.activator_address = activator_address or HostPort(activator.host, activator.port)  # as gateways see it
        self.autoscaler = Autoscaler(self, Sources(admins=census.admins, activator=activator.stats),
                                     tick_s=autoscale_tick_s)
        self.rollout_runner = RolloutRunner(self, census.admins)
        self.observer = RevisionObserver(self, census.admins, activator.stats)  # per-revision series, traffic
        self.cluster_linger_s = cluster_linger_s
        self.retained_revisions = retained_revisions  # per service, for a backend that keeps stopped revisions
        self.sync_timeout_s = sync_timeout_s
        self.config: Config | None = None
        self.publisher = Publisher(cache)
        self.activator_key = activator_key  # on the activator's EDS endpoint: gateways send it there only
        self.tables = RouteTables(self.publisher)
        self.https = HttpsState(self.publisher)  # gateway.tls: the HTTPS listener and its certificates (SDS)
        self.latest_ready = LatestReady(store)
        self.floor = Floor(self._floor_changed)
        self.rollouts = RolloutBook(store, self.latest_ready, self.floor, self._instances)
        self.services: dict[str, ServiceRuntime] = {}
        self.revisions: dict[str, RevisionRuntime] = {}
        self.views = status.Views()  # the status's JSON views, kept while their inputs stay the same
        self.timings: dict[str, float] = {}  # how long the last apply took, for status and the bench
        self._resolving: ServiceRuntime | None = None  # whose revisions _reconcile is starting (under the lock)
        self._lock = asyncio.Lock()
        self._background = Background(log)
        self._closing = False

    @property
    def gateway(self) -> Gateway:
        return self.config.loaded.spec.gateway

    # -- applying a routes file -----------------------------------------------------------------------

    async def start(self) -> None:
        """Before the first apply. What outlived the last ferry is taken back first: instances that still run are
        adopted at their scale with their endpoints, and on Kubernetes the revision history kept on the
        Deployments is read, so a new leader (or a pod that lost its emptyDir) names templates as the last one
        did."""
        if self.durable is not None:
            found = await self.durable.recover(self.store)
            log.info("took back what outlived the last ferry", extra={"found": found})

    async def apply(self, config: Config) -> None:
        """Converge on a validated, committed configuration (reconcile/config.py makes one)."""
        async with self._lock:
            started = time.perf_counter()
            previous, self.config = self.config, config
            spec = config.loaded.spec
            gateway_changed = previous is None or previous.loaded.spec.gateway != spec.gateway
            self.tables.strip_headers = RouteTables.ALWAYS_STRIPPED + (() if spec.gateway.tagHeader else xds.TAG_HEADERS)
            before = previous.loaded.spec.gateway if previous is not None else None
            # Every listener runs the same HTTP connection manager: what it records (gateway.accessLog,
            # gateway.tracing) changing re-puts them all.
            observe, observe_changed = observed(config), previous is None or observed(previous) != observed(config)
            if spec.gateway.tracing is not None:  # before the listeners that name it (CDS is pushed before LDS)
                otlp = spec.gateway.tracing.otlp
                self.publisher.put(xds.CLUSTER, xds.otlp_cluster(otlp.host, otlp.port))
            elif before is not None and before.tracing is not None:
                self.publisher.delete(xds.CLUSTER, xds.OTLP_CLUSTER)
            if before is None or before.listen != spec.gateway.listen or observe_changed:
                self.publisher.put(xds.LISTENER, xds.listener(spec.gateway.listen.host, spec.gateway.listen.port,
                                                              observe=observe))
            if (before.internal if before else None) != spec.gateway.internal or observe_changed:
                self._put_internal_listener(spec.gateway, observe)
            if self.https.configure(config.loaded, observe):
                self.tables.https_redirect = self.https.redirect()  # gateway_changed: every table is rebuilt
            for name in [n for n in self.services if n not in spec.services]:
                self._remove_service(name)
            touched: list[ServiceRuntime] = []
            for name, service_spec in spec.services.items():
                service = self.services.get(name)
                current = config.plan.current[name]
                if service is None:
                    service = self.services[name] = ServiceRuntime(name, service_spec, current)
                    self.rollouts.restore(service)
                elif (service.spec is service_spec or service.spec == service_spec) and service.current == current \
                        and not gateway_changed:
                    continue  # untouched: a one-service edit reconciles one service
                service.spec, service.current = service_spec, current
                self.rollouts.follow_file(service)
                if gateway_changed:
                    service.routes = ()  # hosts derive from the domain: rebuild
                await self._reconcile(service)
                touched.append(service)
            self._commit()
            self._background.spawn(status.render(self, touched), "status views")
            self.timings["apply_ms"] = round((time.perf_counter() - started) * 1000, 2)
            # Everything alive now is long-lived config: keep the cyclic GC from rescanning it (at 10,000
            # services a full collection took 0.5 s, stalling pushes that were already under way; one before the
            # freeze took 0.4 s after a whole new file and found nothing to free).
            gc.freeze()

    def _put_internal_listener(self, gateway: Gateway, observe: xds.Observe) -> None:
        """The listener of private services (and public ones), or none."""
        if gateway.internal is None:
            self.publisher.delete(xds.LISTENER, xds.INTERNAL_LISTENER_NAME)
        else:
            self.publisher.put(xds.LISTENER, xds.listener(gateway.internal.host, gateway.internal.port,
                                                          name=xds.INTERNAL_LISTENER_NAME, mark="internal",
                                                          observe=observe))

    async def rotate_certificates(self, tls, pairs) -> bool:
        """New contents of gateway.tls's certificate files (reconcile/certs.py read and checked them): published
        as new versions of the same secrets. False: gateway.tls changed meanwhile, or nothing did."""
        async with self._lock:
            if not self.https.rotate(tls, pairs):
                return False
            self._commit()
            return True

    def _commit(self) -> None:
        """Persist what changed about latest-ready revisions, then publish what is staged."""
        self.latest_ready.save()
        self.publisher.publish()

    async def _reconcile(self, service: ServiceRuntime) -> None:
        self._resolving = service
        try:
            resolved = await self._run_wanted(service)
        finally:
            self._resolving = None
        service.wanted = resolved.revisions() if isinstance(resolved, ResolvedTraffic) else frozenset()
        if service.override is not None and isinstance(resolved, ResolvedTraffic):
            steady = resolve_traffic(service.spec, self.latest_ready.get(service.name))
            if isinstance(steady, ResolvedTraffic) and set(steady.main) == set(service.override):
                self.rollouts.clear_override(service, "the file now says the same")
        if isinstance(resolved, Unresolved):
            service.waiting = resolved.reason
        else:
            self._route(service, resolved)
        needed = rules.needed_revisions(service, resolved)
        for name in service.revisions - needed:
            self._retire_revision(name)
        service.revisions &= needed

    async def _run_wanted(self, service: ServiceRuntime) -> ResolvedTraffic | Unresolved:
        """Start what the traffic names; starting one may make it ready at once (endpoints given in the file),
        which can change what latestRevision means: resolve until it settles."""
        while True:
            latest_ready = self.latest_ready.get(service.name)
            resolved = rules.shape(service, resolve_traffic(service.spec, latest_ready))
            needed = rules.needed_revisions(service, resolved)
            for name in needed - service.revisions:
                await self._start_revision(name)
            service.revisions |= needed
            if self.latest_ready.get(service.name) == latest_ready:
                return resolved

    def _route(self, service: ServiceRuntime, resolved: ResolvedTraffic) -> None:
        # Ready now, not "once": a revision brought back from retirement waits for its new instances.
        not_ready = rules.not_ready(resolved, self.revisions)
        if not_ready:
            service.waiting = f"waiting for revision {', '.join(not_ready)} to become ready"
            return
        service.waiting = None
        routes = rules.host_routes(service, resolved, self.gateway, self.revisions)
        if routes != service.routes:
            service.routes = routes
            self.tables.put(service.name, routes)
        service.traffic = resolved

    def _remove_service(self, name: str) -> None:
        service = self.services.pop(name)
        self.tables.remove(name)
        for revision in service.revisions:
            self._retire_revision(revision)

    # -- revisions ------------------------------------------------------------------------------------

    async def _start_revision(self, name: str) -> None:
        runtime = self.revisions.get(name)
        if runtime is not None:
            if runtime.retiring:  # wanted again before it stopped
                runtime.retiring = False
                if runtime.retire_task is not None:
                    runtime.retire_task.cancel()
                    runtime.retire_task = None
                if runtime.managed:
                    runtime.instances = self.autoscaler.track(name, self.floor.settings(runtime.revision)).scale
                    self._take_endpoints(runtime, runtime.endpoints)
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
                cwd=self.config.loaded.base_dir,
                env=dict(template.env),
                readiness_path=template.readiness.path if template.readiness else None,
                timeout_s=template.timeout,
                image=template.image,
                args=tuple(template.args) if template.args is not None else None,
                port=template.port,
                protocol=template.protocol,
                resources=template.resources.model_dump(mode="json", exclude_defaults=True)
                if template.resources is not None else None,
            )
        runtime = RevisionRuntime(revision, workload, instances=template.scale.initial)
        self.revisions[name] = runtime
        self.publisher.put(xds.CLUSTER, xds.cluster(runtime.cluster, http2=template.protocol == "h2c",
                                                    keyed=workload is not None and self.activator_key is not None))
        if workload is None:
            self._take_endpoints(runtime, tuple(Endpoint(h, p) for h, p in template.endpoints))
        else:
            # A backend that outlives ferry (Kubernetes) may already run it: adopt its scale and endpoints.
            adopted = self.durable.replicas(name) if self.durable is not None else None
            state = self.autoscaler.track(name, self.floor.settings(revision), adopted=adopted)
            runtime.instances = state.scale
            # Knative: a revision that starts at zero is ready at once. One the last ferry ran was served: until
            # its adopted instances answer (or replacements do), the activator holds its requests.
            runtime.proven = state.scale == 0 or adopted is not None
            self._take_endpoints(runtime, self.backend.endpoints(name) if adopted else ())
            await self.backend.scale(workload, runtime.instances)
        log.info("revision started", extra={"revision": name, "instances": runtime.instances})

    def _revision(self, name: str) -> Revision:
        """Revisions of the applied plan are in memory; older ones (named in traffic) come from the store."""
        runtime = self.revisions.get(name)
        if runtime is not None:
            return runtime.revision
        return self.config.planned.get(name) or self.store.get(name)

    def _retire_revision(self, name: str) -> None:
        runtime = self.revisions.get(name)
        if runtime is None or runtime.retiring:
            return
        runtime.retiring = True
        self.autoscaler.untrack(name)
        runtime.retire_task = self._background.spawn(self._retire(runtime), f"retire {name}")

    async def _retire(self, runtime: RevisionRuntime) -> None:
        """Stop a revision only once no gateway routes to it, then drop its cluster after a linger."""
        await self._publish_and_sync()
        if runtime.managed:
            await self.backend.stop(runtime.name)
        log.info("revision stopped", extra={"revision": runtime.name})
        await self._collect_garbage()
        # Envoy does not swap routes and clusters atomically: keep the cluster a while (net-kourier: 15 s).
        await asyncio.sleep(self.cluster_linger_s)
        if runtime.retiring and self.revisions.get(runtime.name) is runtime:
            del self.revisions[runtime.name]
            if runtime.managed:
                self.activator.remove_revision(runtime.name)
            self.publisher.delete(xds.CLUSTER, runtime.cluster)
            self.publisher.delete(xds.ENDPOINT, runtime.cluster)
            self._commit()

    async def _collect_garbage(self) -> None:
        """A backend that keeps stopped revisions (Kubernetes: Deployments at 0) deletes all but the newest
        `retained_revisions` of each service, and never one that is still wanted."""
        if self.durable is None:
            return
        keep = {name for name, runtime in self.revisions.items() if not runtime.retiring}
        for service in self.services:
            keep |= {r.name for r in self.store.revisions(service)[-self.retained_revisions:]}
        try:
            deleted = await self.durable.collect_garbage(keep)
        except Exception as err:  # the API may be down; the next retirement tries again
            log.warning("garbage collection failed", extra={"error": str(err)})
            return
        if deleted:
            log.info("old revisions deleted", extra={"deleted": ", ".join(deleted)})

    async def _publish_and_sync(self) -> None:
        self._commit()
        if not await self.census.wait_in_sync(self.sync_timeout_s):
            log.warning("gateways not in sync; stopping anyway", extra={"timeout_s": self.sync_timeout_s})

    def _instances(self, revision: str) -> int | None:
        runtime = self.revisions.get(revision)
        return runtime.instances if runtime is not None else None

    def _floor_changed(self, revision: str) -> None:
        """A rollout put a floor under the revision's scale or lifted it: its autoscaling settings changed."""
        runtime = self.revisions.get(revision)
        if runtime is not None and runtime.managed and not runtime.retiring:
            self.autoscaler.track(revision, self.floor.settings(runtime.revision))

    # -- endpoints and readiness ----------------------------------------------------------------------

    def on_endpoints(self, revision: str, endpoints: Sequence[tuple[str, int]]) -> None:
        """What a backend reports when a revision's ready endpoints change."""
        runtime = self.revisions.get(revision)
        if runtime is None:
            return
        self._take_endpoints(runtime, tuple(Endpoint(h, p) for h, p in endpoints))
        self._commit()

    def _take_endpoints(self, runtime: RevisionRuntime, endpoints: tuple[Endpoint, ...]) -> None:
        was_routable = runtime.routable
        runtime.endpoints = endpoints
        if runtime.managed:
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
                response_start_s=template.responseStartTimeout,
            )
            # A retiring revision is routed nowhere: nothing should wake it.
            runtime.activator_in_path = not runtime.retiring and rules.wants_activator(
                runtime, self.autoscaler.must_hold(runtime.name, len(endpoints)))
            if endpoints:
                runtime.proven = True
        self._stage_endpoints(runtime)
        if runtime.routable and not was_routable:
            self._became_ready(runtime)

    def _live_endpoints(self, runtime: RevisionRuntime) -> tuple[Endpoint, ...]:
        """Instances still running, draining ones included."""
        return tuple(i.endpoint for i in self.backend.instances(runtime.name) if i.endpoint and i.alive)

    def _stage_endpoints(self, runtime: RevisionRuntime) -> None:
        """The revision's EDS entry: its ready instances, or the activator (one address for http1 and h2c revisions:
        the activator tells an h2c cluster's HTTP/2 connections from HTTP/1.1 ones by their first bytes). The
        activator's carries its key, which the cluster's filter sends to it alone (xds.cluster)."""
        if runtime.activator_in_path:
            address = self.activator_address
            self.publisher.put(xds.ENDPOINT, xds.load_assignment(
                runtime.cluster, (Endpoint(address.host, address.port),), key=self.activator_key))
        else:
            self.publisher.put(xds.ENDPOINT, xds.load_assignment(runtime.cluster, runtime.endpoints))

    def _became_ready(self, runtime: RevisionRuntime) -> None:
        """A newer ready revision is what latestRevision means now; a route waiting for this one may move."""
        revision = runtime.revision
        service = self.services.get(revision.service)
        latest = self.latest_ready.get(revision.service)
        # A revision whose rollout failed is never the latest again, unless `ferry rollout retry`; a route that
        # names it (a tag) still moves once it is ready.
        failed = service is not None and revision.name in service.failed
        newer = not failed and revision.generation > (self._revision(latest).generation if latest else 0)
        if newer:
            self.latest_ready.set(revision.service, revision.name)
            if service is not None and service.spec.rollout is not None and latest is not None:
                rollout = service.rollout
                if rollout is None or not rollout.active or rollout.candidate != revision.name:
                    self.rollouts.start(service, stable=latest, candidate=revision.name)
        # Not for the service being resolved: what it routes is decided after its revisions started, from their
        # readiness then (a new file of 10,000 services made 10,000 tasks here, each reconciling again for nothing).
        if service is not None and not runtime.retiring and (newer or service.waiting is not None) \
                and service is not self._resolving:
            self._background.spawn(self._reconcile_now(service), f"route {service.name}")

    async def _reconcile_now(self, service: ServiceRuntime) -> None:
        async with self._lock:
            if self.services.get(service.name) is service:
                await self._reconcile(service)
                self._commit()

    async def _drain(self, revision: str, endpoint: Endpoint) -> None:
        """Before SIGTERM: every gateway has dropped the endpoint and the activator's requests to it have
        finished. (The backend then waits for the gateways' own requests: it can see the instance's
        connections, which Envoy closes once a removed host's last request is answered.) When ferry stops
        everything, its Envoy is gone already: there is no gateway left to wait for."""
        if not self._closing:
            await self._publish_and_sync()
        while await self.activator.in_flight(revision, endpoint):
            await asyncio.sleep(0.02)

    # -- rollouts (the RolloutRunner's target) and `ferry traffic` -------------------------------------

    def active_rollouts(self) -> dict[str, ActiveRollout]:
        return self.rollouts.active(self.services)

    async def rollout_changed(
        self, service_name: str, rollout: machine.Rollout, *, previous: machine.Rollout | None, decided_at: float
    ) -> None:
        async with self._lock:
            service = self.services.get(service_name)
            if service is None or service.rollout is not previous:
                return  # it moved on while this step was being decided
            self.rollouts.step(service, rollout, previous)
            await self._reconcile(service)
            self._commit()
        if rollout.phase in ENDED_BADLY and previous is not None and previous.active:
            # The whole point of a rollback is speed: measure it to the last gateway's ACK.
            if await self.census.wait_in_sync(self.sync_timeout_s):
                service.rollback_ms = round((time.perf_counter() - decided_at) * 1000, 2)

    async def rollout_action(self, service_name: str, action: str) -> machine.Rollout:
        """`ferry rollout promote|abort|retry`. KeyError: no such service; ValueError: not possible now (says why)."""
        service = self.services[service_name]
        previous = service.rollout
        following = self.rollouts.decide(service, action)
        if action == "retry":
            await self._reconcile_now(service)
        else:
            await self.rollout_changed(service_name, following, previous=previous, decided_at=time.perf_counter())
        await self.census.wait_in_sync(self.sync_timeout_s)  # answered once the gateways serve it (as `kn` waits)
        return service.rollout

    async def set_traffic(self, service_name: str, splits: list[tuple[str, int]] | None) -> None:
        """`ferry traffic`: an imperative main split (None resets to the file). ValueError says what is wrong."""
        service = self.services[service_name]
        if splits is not None:
            self.rollouts.check_override(service, splits)
        async with self._lock:
            self.rollouts.set_override(service, splits)
            await self._reconcile(service)
            self._commit()
        await self.census.wait_in_sync(self.sync_timeout_s)  # answered once the gateways serve it (as `kn` waits)

    # -- autoscaling (the Autoscaler's ScaleTarget) ----------------------------------------------------

    def ready_instances(self, revision: str) -> int:
        runtime = self.revisions.get(revision)
        return len(runtime.endpoints) if runtime else 0

    def reachable(self, revision: str) -> bool:
        runtime = self.revisions.get(revision)
        return runtime is not None and rules.reachable(runtime, self.services.get(runtime.revision.service))

    async def apply_step(self, revision: str, step: Step) -> None:
        runtime = self.revisions.get(revision)
        if runtime is None or runtime.retiring or not runtime.managed:
            return
        if step.scale is not None and step.scale != runtime.instances:
            log.info("scaling", extra={"revision": revision, "from": runtime.instances, "to": step.scale,
                                       "reason": step.reason})
            runtime.note_scale(
                {"at": round(time.time(), 3), "from": runtime.instances, "to": step.scale, "reason": step.reason})
            runtime.instances = step.scale
            await self.backend.scale(runtime.workload, step.scale)
        if runtime.retiring:  # retired while the backend was scaling
            return
        in_path = rules.wants_activator(runtime, step.holding)
        if in_path != runtime.activator_in_path:
            runtime.activator_in_path = in_path
            log.info("activator in path" if in_path else "activator out of path",
                     extra={"revision": revision, "ready": len(runtime.endpoints)})
            self._stage_endpoints(runtime)
            self._commit()

    def wake(self, revision: str) -> None:
        """The activator holds a request for a revision with no ready instance."""
        self.autoscaler.poke(revision)

    # -- taking over from another ferry ----------------------------------------------------------------

    async def release_leftovers(self) -> None:
        """After a restart, once every gateway runs this controller's state: what the last ferry left that
        nothing here wants goes (the activator's other revisions; instances of revisions no apply claimed)."""
        await self.census.wait_in_sync(self.sync_timeout_s)
        async with self._lock:
            self.activator.keep_only_known()
        await self._collect_garbage()

    def drop_inherited_later(self) -> None:
        """After taking over a cache another leader filled (a follower's mirror, which gateways stay connected
        to): once the first apply published this controller's state, what only the old leader published goes,
        after the same linger as a retired revision's cluster (a request may still be on its way to it)."""

        async def drop() -> None:
            await asyncio.sleep(self.cluster_linger_s)
            async with self._lock:
                dropped = self.publisher.stage_inherited_deletions()
                self._commit()
            if dropped:
                log.info("dropped what the previous leader published and this one does not",
                         extra={"resources": dropped})

        self._background.spawn(drop(), "drop inherited resources")

    # -- status and lifecycle --------------------------------------------------------------------------

    def status(self, service: str | None = None) -> dict:
        return status.status(self, service)

    def status_chunks(self, service: str | None = None, head: dict | None = None) -> Iterator[bytes]:
        return status.status_chunks(self, service, head)

    def revisions_status(self, service: str | None) -> Iterator[dict]:
        return status.revisions_status(self, service)

    def revision_status(self, name: str) -> dict:
        return status.revision_status(self, name)

    def services_status(self, service: str | None = None) -> Iterator[dict]:
        return status.services_status(self, service)

    def rollout_status(self, service: str) -> dict:
        return status.rollout_status(self, service)

    async def aclose(self) -> None:
        self._closing = True
        await self.autoscaler.aclose()
        await self._background.aclose()
        await self.backend.aclose()


def observed(config: Config) -> xds.Observe:
    """What the gateway's HTTP connection managers record for `config`: gateway.accessLog (a file path made
    absolute against the routes file's folder, its folder created) and gateway.tracing."""
    gateway, base_dir = config.loaded.spec.gateway, config.loaded.base_dir
    access_log: str | None = None
    if gateway.accessLog == "stdout":
        access_log = "stdout"
    elif gateway.accessLog != "off":
        path = resolve(base_dir, gateway.accessLog).absolute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # Envoy says so too, refusing the listener; the log names the folder
            log.warning("cannot create the access log's folder", extra={"path": str(path.parent), "error": str(e)})
        access_log = str(path)
    tracing = gateway.tracing
    return xds.Observe(access_log, tracing is not None, tracing.sampling if tracing is not None else 1.0)
