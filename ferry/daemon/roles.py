"""The leading role: what a replica runs while it decides (the controller, its loops, the file watch, the local
Envoy). The following role is replicas.Follower."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from .. import dataplane
from ..activator.process import ActivatorProcess
from ..backends.local import LocalProcessBackend
from ..envoy.bootstrap import BootstrapOptions, XdsTls
from ..envoy.process import EnvoyProcess
from ..reconcile.census import GatewayCensus
from ..reconcile.certs import watch_certificates
from ..reconcile.config import ConfigSource
from ..reconcile.controller import BackendFactory, Controller
from ..reconcile.observe import traffic_snapshot
from ..routing.errors import ConfigError
from ..routing.loader import LoadedRoutes, load_routes
from ..routing.revisions import RevisionStore
from ..routing.schema import HostPort
from ..tls import TlsFiles
from ..ui.history import TrafficHistory
from ..xds.cache import SnapshotCache
from ..xds.server import GatewayRegistry
from .watch import watch_file

if TYPE_CHECKING:
    from . import DaemonOptions

log = logging.getLogger("ferry")

# Gateways that outlived the last ferry reconnect within a second or two (ferry's bootstraps retry every <= 1 s).
RECONNECT_GRACE_S = 2.0


@dataclass
class Shared:
    """What every role of one replica uses, and outlives them."""

    options: DaemonOptions
    registry: CollectorRegistry
    store: RevisionStore
    cache: SnapshotCache
    gateways: GatewayRegistry
    activator: ActivatorProcess
    ready: asyncio.Event  # a whole state to serve (applied, or mirrored)
    register: dataplane.Register
    survivors: list[dataplane.Entry]  # what the last ferry left running, to adopt
    activator_key: str  # gateways add it on the hop to the activator only; the activator serves none without it


class Leading:
    """The replica that decides: the API's `Leader` (api.py)."""

    def __init__(self, controller: Controller, source: ConfigSource, census: GatewayCensus,
                 history: TrafficHistory | None = None):
        self.controller = controller
        self.source = source
        self.census = census
        self.history = history or TrafficHistory()  # the dashboard's 15 minutes of traffic per revision

    def status(self, service: str | None) -> dict:
        return {"config": self._config(), **self.controller.status(service)}

    def status_chunks(self, service: str | None) -> Iterator[bytes]:
        """The same as JSON, in pieces (KeyError at once for an unknown service)."""
        return self.controller.status_chunks(service, {"config": self._config()})

    def service_names(self) -> list[str]:
        """Every service, sorted (the dashboard searches and pages them)."""
        return sorted(self.controller.services)

    def gateways_status(self) -> list[dict]:
        return self.census.status()

    def config_status(self) -> dict:
        return self._config()

    def _config(self) -> dict:
        return {**self.source.status(), **self.controller.timings, **self.controller.https.status()}

    async def apply(self, label: str, text: str) -> None:
        await self.source.apply(text, label=label)

    def rollout_status(self, service: str) -> dict:
        return self.controller.rollout_status(service)

    async def rollout_action(self, service: str, action: str) -> Any:
        return await self.controller.rollout_action(service, action)

    def revisions_status(self, service: str | None) -> Iterator[dict]:
        return self.controller.revisions_status(service)

    def revision_status(self, name: str) -> dict:
        return self.controller.revision_status(name)

    def services_status(self, service: str | None) -> Iterator[dict]:
        return self.controller.services_status(service)

    async def set_traffic(self, service: str, splits: list[tuple[str, int]] | None) -> None:
        await self.controller.set_traffic(service, splits)

    def service_spec(self, service: str) -> dict:
        """The applied file's spec of the service (JSON, defaults left out: what its template digest counts), its
        backend, the format of the file and its current revision. KeyError: no such service."""
        config = self.source.current
        if config is None:
            raise KeyError(service)
        loaded = config.loaded
        spec = loaded.spec.services[service]
        return {"service": service, "spec": spec.model_dump(mode="json", exclude_defaults=True),
                "backend": loaded.spec.backend.model_dump(mode="json", exclude_defaults=True), "format": loaded.format,
                "revision": config.plan.current[service].name}

    def report_gateways(self, replica: str, gateways: list[dict], ttl_s: float) -> None:
        self.census.report(replica, gateways, ttl_s)


@asynccontextmanager
async def lead(shared: Shared, first: list[LoadedRoutes], *, inherited: bool) -> AsyncIterator[Leading]:
    """Lead until the block exits, then stop in reverse: the local Envoy, the watch and loops, the controller
    (and with it the backend). `inherited`: the cache was filled by a mirror of the previous leader. `first` holds
    the routes file to apply first, handed over: this frame lives as long as the leader, and must not keep it
    (it is emptied)."""
    options = shared.options
    loaded = first.pop()
    async with AsyncExitStack() as stack:
        envoy = None
        if options.run_envoy:
            envoy = EnvoyProcess(
                BootstrapOptions(
                    node_id=options.node_id, xds_host=options.xds.host, xds_port=options.xds.port,
                    admin_host=options.admin.host, admin_port=options.admin.port, delta=options.delta,
                    all_stats=loaded.spec.gateway.stats == "all",
                    # ferry's own certificate is a client one too
                    xds_tls=_xds_tls(options.xds_tls) if options.xds_tls else None,
                ),
                options.state_path.parent, register=shared.register,
            )
        census = GatewayCensus(shared.gateways, [envoy.admin] if envoy else [],
                               reconnect_grace_s=RECONNECT_GRACE_S if shared.survivors else 0.0)
        controller = Controller(
            shared.store, backend_factory(loaded, options.state_path.parent, shared), shared.cache, census,
            activator=shared.activator.client,
            activator_key=shared.activator_key,
            activator_address=options.advertise_activator or (
                HostPort(options.advertise, options.activator.port) if options.advertise else None),
            cluster_linger_s=options.cluster_linger_s,
            autoscale_tick_s=options.autoscale_tick_s,
            retained_revisions=options.retained_revisions,
        )
        stack.push_async_callback(controller.aclose)
        # Requests reach this replica's activator only while it leads (EDS names the leader's).
        shared.activator.client.on_demand = controller.wake
        stack.callback(setattr, shared.activator.client, "on_demand", lambda revision: None)
        source = ConfigSource(options.routes, shared.store, controller.apply, shared.registry,
                              own=_own_listeners(options, controller.activator_address), overrides=options.overrides)
        await controller.start()
        if shared.survivors:
            await _serve_what_survived(source, shared.store, loaded)
        await source.apply(loaded=loaded)
        del loaded  # the controller's config holds it until the next apply replaces it
        shared.ready.set()
        if inherited:
            controller.drop_inherited_later()
        # The dashboard's 15 minutes of traffic per revision, sampled from reconcile/observe.py's snapshot.
        history = TrafficHistory(lambda: traffic_snapshot(controller))
        background = [controller.autoscaler.run(), controller.rollout_runner.run(), controller.observer.run(),
                      history.run()]
        if shared.survivors:
            background.append(controller.release_leftovers())
        if options.watch:
            watching = asyncio.Event()
            background.append(watch_file(options.routes, source.apply, watching))
            background.append(watch_certificates(controller.https, controller.rotate_certificates))
        for coro in background:
            _run_in_background(stack, coro)
        if options.watch:
            await asyncio.wait_for(watching.wait(), 10)
        if envoy:
            await envoy.start()
            stack.push_async_callback(envoy.stop)
            _run_in_background(stack, envoy.supervise())
        yield Leading(controller, source, census, history)


def _run_in_background(stack: AsyncExitStack, coro) -> None:
    """A task that lives until the stack unwinds (cancelled then)."""
    task = asyncio.get_running_loop().create_task(coro, name=getattr(coro, "__qualname__", "background"))

    async def cancel() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(cancel)


async def _serve_what_survived(source: ConfigSource, store: RevisionStore, loaded: LoadedRoutes) -> None:
    """A data plane outlived the last ferry: first apply what it was serving (the last applied configuration), so
    that Envoy, the activator and the instances are taken back as they are, with nothing new to send them;
    the routes file as it is now comes next, as an ordinary change."""
    last = store.last_applied()
    if last is None or last == (loaded.path, loaded.text):
        return
    path, text = last
    try:
        await source.apply(loaded=load_routes(path, text, overrides=source.overrides))
    except ConfigError as err:
        log.warning("the last applied configuration no longer loads; applying the file as it is",
                    extra={"error": str(err).splitlines()[0]})


def backend_factory(loaded: LoadedRoutes, workdir: Path, shared: Shared) -> BackendFactory:
    """Where revisions run, as the file's `backend:` says: local processes, or Deployments in a namespace."""
    backend = loaded.spec.backend
    if backend.kind == "kubernetes":
        from ..backends.kubernetes import KubernetesBackend, api_client_for

        api_client = api_client_for(backend.kubeconfig, backend.context, loaded.base_dir)
        return lambda on_endpoints, drain: KubernetesBackend(
            on_endpoints, drain=drain, namespace=backend.namespace, api_client=api_client, retain=True
        )
    return lambda on_endpoints, drain: LocalProcessBackend(
        on_endpoints, drain=drain, log_dir=workdir / "logs", register=shared.register,
        exempt_pids=lambda: [pid] if (pid := shared.activator.pid) else [])


def _xds_tls(files: TlsFiles) -> XdsTls:
    return XdsTls(str(files.cert.absolute()), str(files.key.absolute()), str(files.ca.absolute()))


def _own_listeners(options: DaemonOptions, activator: HostPort) -> dict[HostPort, str]:
    """ferry's listeners, which no revision's endpoint may be (the gateway would publish them)."""
    own = {options.api: "its API, --api", options.xds: "its xDS server, --xds",
           options.activator: "the activator, --activator", activator: "the activator"}
    if options.run_envoy:
        own[options.admin] = "Envoy's admin API, --admin"
    if options.advertise:  # a listener on every address is reached at the advertised one too
        own.update({HostPort(options.advertise, address.port): what for address, what in list(own.items())
                    if address.host in ("0.0.0.0", "::", "")})
    return own
