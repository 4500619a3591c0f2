"""`ferry up`: the control plane, its API, the file watch, and optionally one local Envoy, as one process.

Every part is owned here: started in order, stopped in reverse, and nothing outlives `run()`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from .activator import Activator
from .api import build_api
from .backends.local import LocalProcessBackend
from .controller import Controller
from .envoy.bootstrap import BootstrapOptions
from .envoy.process import EnvoyProcess
from .replicas import API_ANNOTATION, LOCAL_PATHS, XDS_ANNOTATION, Follower
from .routing.errors import ConfigError
from .routing.loader import load_routes
from .routing.revisions import RevisionStore, default_store_path
from .routing.schema import HostPort
from .xds.cache import SnapshotCache
from .xds.mirror import route_dependencies
from .xds.server import AdsServicer, GatewayRegistry, XdsMetrics, start_xds_server

log = logging.getLogger("ferry")


@dataclass
class DaemonOptions:
    routes: Path
    state: Path | None = None  # default: .ferry/state.db beside routes.yaml
    xds: HostPort = HostPort("127.0.0.1", 18000)
    api: HostPort = HostPort("127.0.0.1", 8090)
    admin: HostPort = HostPort("127.0.0.1", 9901)
    run_envoy: bool = True
    delta: bool = True
    watch: bool = True
    test_hooks: bool = False
    cluster_linger_s: float = 10.0
    node_id: str = "ferry-local"
    activator: HostPort = HostPort("127.0.0.1", 8012)
    advertise_activator: HostPort | None = None  # what EDS tells gateways, when they cannot use `activator`
    retained_revisions: int = 10  # Kubernetes: stopped revisions kept per service
    leader_elect: bool = False  # Kubernetes: lead only while holding the Lease; follow (mirror) the leader otherwise
    advertise: str | None = None  # the host other replicas and gateways reach this one at (a pod's IP)
    lease_duration_s: float = 15.0
    queue_limit: int = 10_000
    autoscale_tick_s: float = 2.0

    @property
    def state_path(self) -> Path:
        return self.state or default_store_path(self.routes)


class GcPauseLog:
    """Logs garbage-collector pauses long enough to delay pushes (they stop ferry's whole event loop)."""

    def __init__(self, threshold_s: float = 0.05):
        self.threshold_s = threshold_s
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif (paused := time.perf_counter() - self._started) >= self.threshold_s:
            log.warning("long garbage-collector pause", extra={
                "generation": info.get("generation"), "ms": round(paused * 1000, 1), "collected": info.get("collected")})


class _Leading:
    """The controller's operations for the API, once there is a controller (a follower forwards them)."""

    def __init__(self, controller):
        self._controller = controller

    def __getattr__(self, name: str):
        return getattr(self._controller(), name)


@dataclass
class Daemon:
    options: DaemonOptions
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (or SIGINT/SIGTERM), then tear everything down."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        loaded = load_routes(self.options.routes)  # a bad file at start-up is the user's first error: fail loudly
        await self._serve(loaded, stop)

    def _elector(self, loaded, lost: asyncio.Event):
        """--leader-elect: the Lease in the backend's namespace, advertising where this replica serves."""
        from .backends.kube_lease import LeaseElector
        from .backends.kubernetes import api_client_for

        options = self.options
        backend = loaded.spec.backend
        if backend.kind != "kubernetes":
            raise OSError("--leader-elect needs backend: kubernetes in the routes file (the Lease lives in its namespace)")
        host = options.advertise or options.xds.host
        if host in ("0.0.0.0", "::", ""):
            raise OSError("--leader-elect: other replicas must reach this one; say where with --advertise HOST "
                          "(in a pod: $(POD_IP))")
        duration = options.lease_duration_s
        return LeaseElector(
            api_client_for(backend.kubeconfig, backend.context, loaded.base_dir), backend.namespace,
            duration_s=duration, renew_every_s=duration / 5, retry_every_s=min(2.0, duration / 5),
            on_stopped_leading=lost.set,
            advertise={XDS_ANNOTATION: f"{host}:{options.xds.port}", API_ANNOTATION: f"{host}:{options.api.port}"},
        )

    async def _serve(self, loaded, stop: asyncio.Event) -> None:
        """Every replica serves xDS, the activator and the API from the start. Without --leader-elect it leads
        at once; with it, it follows (mirrors the leader) until the Lease is its own, then leads with the
        same cache, so the gateways connected to it stay connected."""
        options = self.options
        workdir = options.state_path.parent
        store = RevisionStore(options.state_path)
        gateways = GatewayRegistry()
        envoy: EnvoyProcess | None = None
        if options.run_envoy:
            envoy = EnvoyProcess(
                BootstrapOptions(
                    node_id=options.node_id, xds_host=options.xds.host, xds_port=options.xds.port,
                    admin_host=options.admin.host, admin_port=options.admin.port, delta=options.delta,
                ),
                workdir,
            )
        cache = SnapshotCache()
        controller: Controller | None = None
        follower: Follower | None = None
        lost = asyncio.Event()
        elector = self._elector(loaded, lost) if options.leader_elect else None
        activator = Activator(
            host=options.activator.host, port=options.activator.port, queue_limit=options.queue_limit,
            # Requests reach this activator only once this replica leads (EDS names the leader's).
            on_demand=lambda revision: controller.wake(revision) if controller else None, registry=self.registry,
        )
        applies = Counter("ferry_config_applies", "routes.yaml applications", ["result"], registry=self.registry)
        metrics = XdsMetrics(self.registry, gateways)

        def dependencies(type_url, resource):
            return controller.dependencies(type_url, resource) if controller else route_dependencies(type_url, resource)

        servicer = AdsServicer(cache, gateways, metrics, dependencies, Controller.snapshot_key)

        async def apply_text(path: Path, text: str | None = None) -> None:
            try:
                started = time.perf_counter()
                loaded = load_routes(path, text, previous=controller.loaded)
                if loaded is controller.loaded:
                    return  # a save that changed nothing
                controller.timings["load_ms"] = round((time.perf_counter() - started) * 1000, 2)
                await controller.apply(loaded)
            except ConfigError as err:
                applies.labels("rejected").inc()
                controller.record_error(str(err))
                log.error("configuration rejected; the last good configuration keeps serving\n%s", err)
                raise
            applies.labels("applied").inc()
            log.info("configuration applied", extra={"file": str(path)})

        async def poison(body: dict) -> None:
            controller.publish_poisoned_routes()

        async def set_endpoints(body: dict) -> None:
            """Bench hook: an endpoint change as a backend would report it, without running instances."""
            controller.set_endpoints(body["revision"], [HostPort.parse(e) for e in body["endpoints"]])

        ready = asyncio.Event()  # /readyz: this replica has a whole state to serve (applied, or mirrored)

        def replica_status() -> dict:
            if follower is not None:
                return follower.status()
            return {"role": "leader", "identity": elector.identity if elector else None}

        xds_server = api_runner = None
        tasks: list[asyncio.Task] = []
        gc_log = GcPauseLog()
        gc.callbacks.append(gc_log)
        # ferry makes little cyclic garbage but allocates in bursts (a /status at 10,000 services is ~10^5
        # objects): with CPython's default thresholds that meant a 50-250 ms full collection every second,
        # finding nothing. Collect young objects every 50,000 allocations and the old ones rarely.
        gc.set_threshold(50_000, 20, 100)
        activator_started = False
        try:
            try:
                await activator.start()
                activator_started = True
            except OSError as err:
                raise OSError(
                    f"cannot serve the activator on {options.activator}: {err.strerror} (use --activator to move it)"
                ) from None
            hooks = {"poison-routes": poison, "endpoints": set_endpoints} if options.test_hooks else None
            operations = _Leading(lambda: controller)
            api = build_api(lambda service: controller.status(service), self.registry, apply_text, operations,
                            test_hooks=hooks)
            async def replica(request: web.Request) -> web.Response:
                return web.json_response(replica_status())

            async def readyz(request: web.Request) -> web.Response:
                """Ready = holds a whole state to serve: applied (leader) or mirrored (follower)."""
                if ready.is_set():
                    return web.Response(text="ready\n")
                return web.Response(status=503, text="not serving yet\n")

            api.router.add_get("/replica", replica)
            api.router.add_get("/readyz", readyz)

            async def report(request: web.Request) -> web.Response:
                body = await request.json()
                controller.report_gateways(request.match_info["replica"], list(body["gateways"]), float(body["ttl_s"]))
                return web.json_response({"leader": elector.identity if elector else None})

            api.router.add_put("/replicas/{replica}/gateways", report)

            @web.middleware
            async def not_before_leading(request: web.Request, handler) -> web.StreamResponse:
                if controller is None and request.path not in LOCAL_PATHS:
                    return web.json_response({"error": "this replica is starting to lead: try again in a moment"},
                                             status=503)
                return await handler(request)

            if elector is not None:
                tasks.append(asyncio.create_task(elector.run(), name="leader election"))
                follower = Follower(elector, cache, gateways)
                api.middlewares.append(follower.forward)  # outermost: while following, nothing below runs
                cache.on_new_group = follower.mirror.listener_for_group
            api.middlewares.append(not_before_leading)
            api_runner = web.AppRunner(api, access_log=None)
            await api_runner.setup()

            async def start_api() -> None:
                try:
                    await web.TCPSite(api_runner, options.api.host, options.api.port).start()
                except OSError as err:
                    raise OSError(
                        f"cannot serve ferry's API on {options.api}: {err.strerror} (use --api to move it)") from None

            xds_server = await start_xds_server(servicer, str(options.xds))
            if follower is not None:
                await start_api()  # a follower answers /readyz and /replica, and forwards the rest

            if follower is not None:
                if not await self._follow(follower, elector, tasks[0], stop, ready):
                    return  # asked to stop while following
                follower.following = False
                log.info("leading", extra={"identity": elector.identity})

            controller = Controller(
                store,
                self._backend_factory(loaded, workdir),
                cache,
                gateways,
                activator=activator,
                activator_address=options.advertise_activator or (
                    HostPort(options.advertise, options.activator.port) if options.advertise else None),
                local_admins=[envoy.admin] if envoy else [],
                cluster_linger_s=options.cluster_linger_s,
                autoscale_tick_s=options.autoscale_tick_s,
                retained_revisions=options.retained_revisions,
            )
            inherited = follower is not None and follower.mirror.synced.is_set()
            controller.adopt_groups()
            cache.on_new_group = controller.listener_for_group  # each group's listener is the controller's call
            await controller.start()
            if follower is not None:
                loaded = load_routes(options.routes)  # it may have changed while this replica followed
            await controller.apply(loaded)
            applies.labels("applied").inc()
            ready.set()
            if inherited:
                controller.drop_inherited_later()
            tasks.append(asyncio.create_task(controller.autoscaler.run(), name="autoscaler"))
            tasks.append(asyncio.create_task(controller.rollouts.run(), name="rollouts"))
            if follower is None:
                await start_api()
            if options.watch:
                watching = asyncio.Event()
                tasks.append(asyncio.create_task(self._watch(options.routes, apply_text, watching), name="watch routes"))
                await asyncio.wait_for(watching.wait(), 10)
            if envoy:
                await envoy.start()
            log.info(
                "ferry is up",
                extra={"routes": str(options.routes), "xds": str(options.xds), "api": str(options.api),
                       "gateway": str(loaded.spec.gateway.listen) if envoy else "external"},
            )
            if envoy:
                tasks.append(asyncio.create_task(envoy.supervise(), name="supervise envoy"))
            waits = {asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())}
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()
            if lost.is_set() and not stop.is_set():
                # client-go's advice: a replica that lost the lease stops, and comes back as a follower.
                raise RuntimeError("lost the leader lease: stopping so that only the new leader writes")
        finally:
            election = tasks[0] if elector is not None and tasks else None
            for task in reversed(tasks):
                if task is not election:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if api_runner:
                await api_runner.cleanup()
            if envoy:
                await envoy.stop()
            if controller is not None:
                await controller.aclose()
            if elector is not None:
                await elector.release()  # after everything stopped writing: a follower takes over at once
            if activator_started:
                await activator.aclose()
            if xds_server:
                await xds_server.stop(grace=0.5)
            store.close()
            gc.callbacks.remove(gc_log)
            log.info("ferry stopped")

    @staticmethod
    async def _follow(follower: Follower, elector, election: asyncio.Task, stop: asyncio.Event,
                      ready: asyncio.Event) -> bool:
        """Mirror the leader (ready once a whole state arrived) until this replica leads: True; or is asked to
        stop: False."""
        following = asyncio.create_task(follower.run(), name="follow the leader")

        def synced(task: asyncio.Task) -> None:
            if not task.cancelled():
                ready.set()
                log.info("serving the leader's state", extra={"leader": elector.leader})

        mirrored = asyncio.create_task(follower.mirror.synced.wait())
        mirrored.add_done_callback(synced)
        leading = asyncio.create_task(elector.wait_leading())
        stopping = asyncio.create_task(stop.wait())
        log.info("following until the leader lease is ours", extra={"identity": elector.identity})
        try:
            await asyncio.wait({leading, stopping, election}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (mirrored, leading, stopping, following):
                task.cancel()
            await asyncio.gather(following, return_exceptions=True)
        if election.done() and not election.cancelled() and election.exception() is not None:
            raise RuntimeError(f"leader election failed: {election.exception()}")
        if not elector.is_leader:
            return False
        follower.following = False
        log.info("leading", extra={"identity": elector.identity})
        return True

    @staticmethod
    def _backend_factory(loaded, workdir: Path):
        """Where revisions run, as the file's `backend:` says: local processes, or Deployments in a namespace."""
        backend = loaded.spec.backend
        if backend.kind == "kubernetes":
            from .backends.kubernetes import KubernetesBackend, api_client_for

            api_client = api_client_for(backend.kubeconfig, backend.context, loaded.base_dir)
            return lambda on_endpoints, drain: KubernetesBackend(
                on_endpoints, drain=drain, namespace=backend.namespace, api_client=api_client, retain=True
            )
        return lambda on_endpoints, drain: LocalProcessBackend(on_endpoints, drain=drain, log_dir=workdir / "logs")

    @staticmethod
    async def _watch(path: Path, apply_text, watching: asyncio.Event) -> None:
        """Re-apply on every save. Watching the folder survives editors that save by rename.

        The file's own folder and, when it is a symlink, its target's folder are watched: a Kubernetes
        ConfigMap volume updates by swapping the `..data` symlink in the mounted folder (the file itself is a
        symlink through it), so any `..`-named entry changing there means "read the file again" (an unchanged
        text costs nothing). The watcher yields on a short idle timeout too: its first yield proves it is
        registered, and then the file is read once more, so a save made while ferry was starting is not missed."""
        from watchfiles import Change, awatch

        target = path.absolute()
        names = {target, target.resolve()}
        folders = sorted({str(p.parent) for p in names})

        def touches(kind: Change, changed: str) -> bool:
            changed_path = Path(changed)
            return (changed_path in names and kind != Change.deleted) or changed_path.name.startswith("..")

        async for changes in awatch(
            *folders, debounce=10, step=5, recursive=False, rust_timeout=100, yield_on_timeout=True
        ):
            if not watching.is_set():
                watching.set()
                changes = {(Change.modified, str(target))}
            if any(touches(kind, p) for kind, p in changes):
                try:
                    await apply_text(target)
                except ConfigError:
                    pass  # logged and recorded in status; the last good configuration keeps serving
                except OSError as err:
                    log.error("cannot read %s: %s", target, err)

