"""`ferry up`: one replica of the control plane, with its API, the file watch, and optionally one local Envoy.

Every replica serves xDS, the activator and the API from the start. Without --leader-elect it leads at once;
with it, it follows (replicas.Follower mirrors the leader) until the Lease is its own, then leads (roles.lead)
with the same cache, so the gateways connected to it stay connected. Every part is entered on one
AsyncExitStack and stopped in reverse when ferry is asked to stop.

What survives what: the data plane (the local Envoy, the activator process, the instances) is recorded in the
state folder (ferry/dataplane.py) and outlives a ferry that dies (SIGKILL, a crash): it keeps serving the last
configuration. The next `ferry up` on that folder adopts it (the same processes, nothing re-sent to Envoy), or
`ferry down` stops it. SIGINT, SIGTERM and `ferry down` stop all of it, in order.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram

from .. import dataplane, statedir
from ..tasks import LOOP_LAG_BUCKETS, watch_loop_lag
from ..activator.process import ActivatorProcess
from ..api import ApiState, build_api, loopback_hosts
from ..replicas import API_ANNOTATION, XDS_ANNOTATION, Follower
from ..routing.loader import LoadedRoutes, load_routes
from ..routing.overrides import Overrides
from ..routing.revisions import RevisionStore, default_store_path
from ..routing.fields import is_loopback
from ..routing.schema import HostPort
from ..testhooks import HOOKS
from ..tls import TlsFiles
from ..xds.cache import SnapshotCache
from ..xds.server import AdsServicer, GatewayRegistry, Tls, XdsMetrics, start_xds_server
from .memory import tune_malloc
from .roles import Shared, _run_in_background, lead

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
    token_file: Path | None = None  # the API token; default: api-token in the state folder, made if absent
    xds_tls: TlsFiles | None = None  # mutual TLS on xDS and the API between replicas (ferry certs)
    activator_key_file: Path | None = None  # what gateways add to requests for the activator; default: state folder
    overrides: Overrides = field(default_factory=Overrides)  # --listen, --domain, ...: over the file, at every load

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


@contextmanager
def _collector_tuned() -> Iterator[None]:
    """ferry makes little cyclic garbage but allocates in bursts (a /status at 10,000 services is ~10^5
    objects): with CPython's default thresholds that meant a 50-250 ms full collection every second, finding
    nothing. Collect young objects every 50,000 allocations and the old ones rarely; log long pauses."""
    pauses = GcPauseLog()
    gc.callbacks.append(pauses)
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.callbacks.remove(pauses)


async def _started(start, message: str) -> None:
    """Await a server's start; a port that cannot be bound is the user's error, said with the flag to change."""
    try:
        await start
    except OSError as err:
        raise OSError(f"{message}: {err.strerror or err}") from None


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
        tune_malloc()  # before the first file is loaded: its blocks must not set glibc's thresholds
        # a bad file at start-up is the user's first error: fail loudly (passed on, not kept in this frame: the
        # first file's objects must not outlive the next apply; at 10,000 services they are ~50 MiB)
        await self._serve([load_routes(self.options.routes, overrides=self.options.overrides)], stop)

    async def _serve(self, first: list[LoadedRoutes], stop: asyncio.Event) -> None:
        """`first`: the routes file as loaded at start, handed over (the list is emptied) to the leader."""
        loaded = first.pop()
        options = self.options
        folder = statedir.prepare(options.state_path.parent)
        token = statedir.secret(folder, statedir.API_TOKEN, options.token_file)
        statedir.remember_api(str(options.api), options.token_file or folder / statedir.API_TOKEN)
        tls = Tls(*options.xds_tls.read()) if options.xds_tls else None
        activator_key = statedir.secret(folder, statedir.ACTIVATOR_KEY, options.activator_key_file)
        async with AsyncExitStack() as stack:
            stack.callback(log.info, "ferry stopped")
            stack.enter_context(dataplane.lock(folder))
            register = dataplane.Register(folder)
            stack.callback(register.close)
            survivors = _adoptable(register, options.routes)
            register.set_meta("routes", str(options.routes.absolute()))
            stack.callback(_forget_owner, register)
            store = RevisionStore(options.state_path)
            stack.callback(store.close)
            stack.enter_context(_collector_tuned())
            lag = Histogram("ferry_event_loop_lag_seconds", "How late ferry's event loop ran a 25 ms timer: the "
                            "stretches it was blocked", buckets=LOOP_LAG_BUCKETS, registry=self.registry)
            _run_in_background(stack, watch_loop_lag(lag.observe))
            lost = asyncio.Event()
            elector = self._elector(loaded, lost) if options.leader_elect else None
            follower: Follower | None = None
            state = ApiState(
                self.registry,
                replica=lambda: follower.status() if follower is not None else {
                    "role": "leader", "identity": elector.identity if elector else None},
                leader_identity=lambda: elector.identity if elector else None,
                test_hooks=HOOKS if options.test_hooks else {},
                token=token,
                hosts=loopback_hosts(options.api.port) if is_loopback(options.api.host) else None,
                replica_certs=options.xds_tls is not None,
            )
            gateways = GatewayRegistry()
            activator = ActivatorProcess(
                options.activator.host, options.activator.port, folder, queue_limit=options.queue_limit,
                register=register,  # its wake-ups go to the controller once this replica leads (roles.lead)
                key_file=options.activator_key_file or folder / statedir.ACTIVATOR_KEY, key=activator_key)
            state.more_metrics = activator.client.metrics
            shared = Shared(options, self.registry, store, SnapshotCache(), gateways, activator, state.ready,
                            register, survivors, activator_key)

            # Gateways are answered only once this replica holds a whole state: a gateway that outlived the last
            # ferry must not be told to drop what it serves.
            xds_server = await start_xds_server(
                AdsServicer(shared.cache, gateways, XdsMetrics(self.registry, gateways), ready=state.ready),
                str(options.xds), tls)
            stack.push_async_callback(xds_server.stop, 0.5)
            await activator.start()
            stack.push_async_callback(activator.stop)
            _run_in_background(stack, activator.supervise())
            if elector is not None:
                stack.push_async_callback(elector.release)  # after everything stopped writing: a follower takes over
                election = asyncio.create_task(elector.run(), name="leader election")
                follower = Follower(elector, shared.cache, gateways, token=token, tls=options.xds_tls)
            api = web.AppRunner(build_api(state, middlewares=(follower.forward,) if follower else ()), access_log=None)
            await api.setup()
            stack.push_async_callback(api.cleanup)
            site = web.TCPSite(api, options.api.host, options.api.port,
                               ssl_context=options.xds_tls.server_context() if options.xds_tls else None)
            message = f"cannot serve ferry's API on {options.api} (use --api to move it)"

            inherited = False
            if follower is not None:
                await _started(site.start(), message)  # a follower answers /readyz and /replica, and forwards the rest
                if not await follower.until_leading(election, stop, state.ready):
                    return  # asked to stop while following
                inherited = follower.mirror.synced.is_set()
                loaded = load_routes(options.routes, overrides=options.overrides)  # it may have changed meanwhile
            gateway = str(loaded.spec.gateway.listen) if options.run_envoy else "external"
            async with lead(shared, [loaded], inherited=inherited) as leading:
                del loaded  # the controller holds what it applied; nothing else may hold the first file
                state.leading = leading
                state.revision_metrics = leading.controller.observer.chunks  # on /metrics (reconcile/observe.py)
                try:
                    if follower is None:
                        await _started(site.start(), message)
                    log.info("ferry is up", extra={
                        "routes": str(options.routes), "xds": str(options.xds), "api": str(options.api),
                        "gateway": gateway})
                    await _first(stop.wait(), lost.wait())
                    if lost.is_set() and not stop.is_set():
                        # client-go's advice: a replica that lost the lease stops, and comes back as a follower.
                        raise RuntimeError("lost the leader lease: stopping so that only the new leader writes")
                finally:
                    state.leading = None  # the API answers 503 from here on: nothing reaches a closing controller
                    state.revision_metrics = None

    def _elector(self, loaded: LoadedRoutes, lost: asyncio.Event):
        """--leader-elect: the Lease in the backend's namespace, advertising where this replica serves."""
        from ..backends.kubernetes import api_client_for
        from ..backends.kubernetes.lease import LeaseElector

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


async def _first(*waits) -> None:
    """Until the first of `waits` is done."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _forget_owner(register: dataplane.Register) -> None:
    """On the way out: once nothing of the data plane runs any more, the folder is free for any routes file."""
    if not register.entries():
        register.set_meta("routes", None)


def _adoptable(register: dataplane.Register, routes: Path) -> list[dataplane.Entry]:
    """What the last ferry on this state folder left running, to be adopted; OSError if it served another routes
    file (saying what runs and how to stop it)."""
    register.forget_dead()
    survivors = register.entries()
    recorded = register.meta("routes")
    if survivors and recorded is not None and Path(recorded) != routes.absolute():
        kinds = ", ".join(f"{sum(e.kind == k for e in survivors)} {k}" for k in sorted({e.kind for e in survivors}))
        folder = register.path.parent
        raise OSError(f"the state folder {folder} holds a running data plane of {recorded} ({kinds}): "
                      f"`ferry down --state {folder}` stops it, `ferry up {recorded}` takes it back")
    return survivors
