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
from .routing.errors import ConfigError
from .routing.loader import load_routes
from .routing.revisions import RevisionStore, default_store_path
from .routing.schema import HostPort
from .xds.cache import SnapshotCache
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
    leader_elect: bool = False  # Kubernetes: wait for the Lease before doing anything (active/standby replicas)
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


@dataclass
class Daemon:
    options: DaemonOptions
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (or SIGINT/SIGTERM), then tear everything down."""
        stop = stop or asyncio.Event()
        options = self.options
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass

        loaded = load_routes(options.routes)  # a bad file at start-up is the user's first error: fail loudly
        if not options.leader_elect:
            await self._serve(loaded, stop, lost=None)
            return
        leadership = await self._lead(loaded, stop)
        if leadership is None:
            return  # asked to stop while standing by
        elector, lost = leadership
        try:
            await self._serve(loaded, stop, lost=lost)
        finally:
            await elector.release()  # after everything stopped writing: a standby takes over at once

    async def _lead(self, loaded, stop: asyncio.Event) -> tuple[object, asyncio.Event] | None:
        """Active/standby: only the replica holding the Lease runs ferry; the others wait here (not ready, so a
        Kubernetes Service sends gateways to the leader). Returns None when asked to stop while waiting."""
        from .backends.kube_lease import LeaseElector

        backend = loaded.spec.backend
        if backend.kind != "kubernetes":
            raise OSError("--leader-elect needs backend: kubernetes in the routes file (the Lease lives in its namespace)")
        from .backends.kubernetes import api_client_for

        duration = self.options.lease_duration_s
        lost = asyncio.Event()
        elector = LeaseElector(
            api_client_for(backend.kubeconfig, backend.context, loaded.base_dir), backend.namespace,
            duration_s=duration, renew_every_s=duration / 5, retry_every_s=min(2.0, duration / 5),
            on_stopped_leading=lost.set,
        )
        task = asyncio.create_task(elector.run(), name="leader election")
        log.info("standing by for the leader lease", extra={"identity": elector.identity, "lease": backend.namespace + "/ferry"})
        leading = asyncio.create_task(elector.wait_leading())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({leading, stopping, task}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (leading, stopping):
            waiter.cancel()
        if not elector.is_leader:
            await elector.release()
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"leader election failed: {task.exception()}")
            return None
        log.info("leading", extra={"identity": elector.identity})
        return elector, lost

    async def _serve(self, loaded, stop: asyncio.Event, *, lost: asyncio.Event | None) -> None:
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
        backend_factory = self._backend_factory(loaded, workdir)
        cache = SnapshotCache()
        activator = Activator(
            host=options.activator.host, port=options.activator.port, queue_limit=options.queue_limit,
            # Looked up when called: requests arrive only after start(), by when the controller exists.
            on_demand=lambda revision: controller.wake(revision), registry=self.registry,
        )
        controller = Controller(
            store,
            backend_factory,
            cache,
            gateways,
            activator=activator,
            activator_address=options.advertise_activator,
            local_admins=[envoy.admin] if envoy else [],
            cluster_linger_s=options.cluster_linger_s,
            autoscale_tick_s=options.autoscale_tick_s,
            retained_revisions=options.retained_revisions,
        )
        cache.on_new_group = controller.listener_for_group  # each group's listener is the controller's call
        applies = Counter("ferry_config_applies", "routes.yaml applications", ["result"], registry=self.registry)
        metrics = XdsMetrics(self.registry, gateways)
        servicer = AdsServicer(cache, gateways, metrics, controller.dependencies, controller.snapshot_key)

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

        xds_server = api_runner = None
        watch_task = supervise_task = autoscale_task = rollout_task = None
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
            xds_server = await start_xds_server(servicer, str(options.xds))
            await controller.apply(loaded)
            applies.labels("applied").inc()
            autoscale_task = asyncio.create_task(controller.autoscaler.run(), name="autoscaler")
            rollout_task = asyncio.create_task(controller.rollouts.run(), name="rollouts")
            hooks = {"poison-routes": poison, "endpoints": set_endpoints} if options.test_hooks else None
            api = build_api(controller.status, self.registry, apply_text, controller, test_hooks=hooks)
            api_runner = web.AppRunner(api, access_log=None)
            await api_runner.setup()
            try:
                await web.TCPSite(api_runner, options.api.host, options.api.port).start()
            except OSError as err:
                raise OSError(f"cannot serve ferry's API on {options.api}: {err.strerror} (use --api to move it)") from None
            if options.watch:
                watching = asyncio.Event()
                watch_task = asyncio.create_task(self._watch(options.routes, apply_text, watching), name="watch routes")
                await asyncio.wait_for(watching.wait(), 10)
            if envoy:
                await envoy.start()
            log.info(
                "ferry is up",
                extra={"routes": str(options.routes), "xds": str(options.xds), "api": str(options.api),
                       "gateway": str(loaded.spec.gateway.listen) if envoy else "external"},
            )
            if envoy:
                supervise_task = asyncio.create_task(envoy.supervise(), name="supervise envoy")
            waits = {asyncio.create_task(stop.wait())}
            if lost is not None:
                waits.add(asyncio.create_task(lost.wait()))
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()
            if lost is not None and lost.is_set() and not stop.is_set():
                # client-go's advice: a replica that lost the lease stops, and comes back as a standby.
                raise RuntimeError("lost the leader lease: stopping so that only the new leader writes")
        finally:
            for task in (watch_task, supervise_task, autoscale_task, rollout_task):
                if task:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if api_runner:
                await api_runner.cleanup()
            if envoy:
                await envoy.stop()
            await controller.aclose()
            if activator_started:
                await activator.aclose()
            if xds_server:
                await xds_server.stop(grace=0.5)
            store.close()
            gc.callbacks.remove(gc_log)
            log.info("ferry stopped")

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

