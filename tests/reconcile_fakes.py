"""The controller in-process, with a fake backend, a fake activator, fake gateways and an in-memory snapshot cache:
no Envoy, no sockets, no processes. What the gateways would serve is read back from the cache."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from prometheus_client import CollectorRegistry

from ferry.backends.base import Endpoint, InstanceCounts, InstanceInfo, Workload
from ferry.reconcile.config import ConfigSource
from ferry.reconcile.controller import Controller
from ferry.routing.revisions import RevisionStore
from ferry.xds import resources as xds
from ferry.xds.cache import SnapshotCache

GATEWAY = "gateway: {listen: 127.0.0.1:8080, domain: test}\n"


class FakeBackend:
    """Runs nothing: records what it is asked, and reports the endpoints a test says are ready."""

    def __init__(self, on_endpoints, drain):
        self._on_endpoints = on_endpoints
        self._drain = drain
        self.scaled: dict[str, int] = {}  # revision -> instances asked for last
        self.stopped: list[str] = []
        self._ready: dict[str, tuple[Endpoint, ...]] = {}

    async def scale(self, workload: Workload, instances: int) -> None:
        self.scaled[workload.revision] = instances

    def endpoints(self, revision: str) -> tuple[Endpoint, ...]:
        return self._ready.get(revision, ())

    def counts(self, revision: str) -> InstanceCounts:
        return InstanceCounts(ready=len(self.endpoints(revision)), total=self.scaled.get(revision, 0))

    def instances(self, revision: str) -> tuple[InstanceInfo, ...]:
        return tuple(InstanceInfo(i, None, e, True, False, 0, Path("/dev/null"))
                     for i, e in enumerate(self.endpoints(revision)))

    async def stop(self, revision: str) -> None:
        self.stopped.append(revision)
        self.ready(revision)

    async def aclose(self) -> None:
        pass

    def ready(self, revision: str, *ports: int) -> None:
        """The test's word: these instances of the revision are ready now (none: it has none)."""
        self._ready[revision] = tuple(Endpoint("127.0.0.1", p) for p in ports)
        self._on_endpoints(revision, self._ready[revision])


class FakeActivator:
    host, port = "127.0.0.1", 8012

    def __init__(self) -> None:
        self.revisions: dict[str, tuple] = {}  # revision -> endpoints it may send to

    def set_revision(self, revision, endpoints, *, concurrency, timeout_s, response_start_s=None) -> None:
        self.revisions[revision] = tuple(endpoints)

    def remove_revision(self, revision) -> None:
        self.revisions.pop(revision, None)

    def keep_only_known(self) -> None:
        pass

    async def in_flight(self, revision, endpoint) -> int:
        return 0

    def stats(self) -> dict:
        return {}


class FakeGateways:
    """The census: one gateway that acknowledges each publish only when `acked` is set (set by default)."""

    def __init__(self) -> None:
        self.acked = asyncio.Event()
        self.acked.set()
        self.waits = 0

    async def wait_in_sync(self, timeout: float) -> bool:
        self.waits += 1
        await self.acked.wait()
        return True

    def status(self) -> list[dict]:
        return []

    def admins(self) -> list:
        return []

    def report(self, replica, gateways, ttl_s) -> None:
        pass


class World:
    """One controller and everything around it."""

    def __init__(self, tmp_path: Path):
        self.path = tmp_path / "routes.yaml"
        self.store = RevisionStore(tmp_path / "state.db")
        self.cache = SnapshotCache()
        self.gateways = FakeGateways()
        self.activator = FakeActivator()
        self.backend: FakeBackend | None = None
        self.controller = Controller(self.store, self._backend, self.cache, self.gateways, activator=self.activator,
                                     cluster_linger_s=0.0, sync_timeout_s=5.0)
        self.source = ConfigSource(self.path, self.store, self.controller.apply, CollectorRegistry())

    def _backend(self, on_endpoints, drain) -> FakeBackend:
        self.backend = FakeBackend(on_endpoints, drain)
        return self.backend

    async def apply(self, services: str) -> None:
        """A routes file with these services (YAML under `services:`)."""
        text = GATEWAY + "services:\n" + textwrap.indent(textwrap.dedent(services).strip("\n"), "  ") + "\n"
        self.path.write_text(text)
        await self.source.apply(text)

    async def settle(self) -> None:
        """Let what the controller started in the background (re-routes, retirements) run to its end."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def close(self) -> None:
        await self.controller.aclose()
        self.store.close()

    # -- what gateways would serve ------------------------------------------------------------------------

    def entries(self, type_url: str) -> dict:
        return self.cache.group(SnapshotCache.DEFAULT).stores[type_url].entries

    def served(self, host: str) -> dict[str, int]:
        """revision -> percent of the requests for `host`, as the gateways' route tables say ({}: not served)."""
        scope = self.entries(xds.SCOPED_ROUTE).get(host)
        if scope is None:
            return {}
        table = route_pb2.RouteConfiguration.FromString(self.entries(xds.ROUTE)[next(iter(scope.refs))].body)
        vhost = next(v for v in table.virtual_hosts if host in v.domains)
        action = vhost.routes[-1].route  # the default route; tag-header and sticky routes come first
        if action.cluster:
            return {action.cluster.split("/", 1)[1]: 100}
        return {c.name.split("/", 1)[1]: c.weight.value for c in action.weighted_clusters.clusters}

    def eds(self, service: str, revision: str) -> list[int]:
        """The ports the revision's endpoints name (the activator's included)."""
        body = self.entries(xds.ENDPOINT)[xds.cluster_name(service, revision)].body
        assignment = endpoint_pb2.ClusterLoadAssignment.FromString(body)
        return [e.endpoint.address.socket_address.port_value for group in assignment.endpoints
                for e in group.lb_endpoints]


def app(message: str = "v1", **fields: object) -> str:
    """A managed template (ferry runs it), with extra template fields."""
    extra = "".join(f", {k}: {v}" for k, v in fields.items())
    return f"{{command: [app, {message}]{extra}}}"


def fixed(port: int) -> str:
    """A template whose endpoints the file gives (ferry runs nothing)."""
    return f"{{endpoints: ['127.0.0.1:{port}']}}"
