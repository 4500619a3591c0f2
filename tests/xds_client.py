"""Shared by the xDS tests: an ADS client's requests, resource builders, cache contents, and in-process servers
(Harness: one ADS server and a client stub; Leader and Follower: a leader's serving half and a mirroring replica)."""

from __future__ import annotations

import asyncio

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from ferry.xds import resources as xds
from ferry.xds.cache import SnapshotCache
from ferry.xds.mirror import XdsMirror
from ferry.xds.server import AdsServicer, GatewayRegistry, start_xds_server
from ferry.xds.types import Resource

from .helpers import free_port, wait_until

READ_TIMEOUT = 5.0
MIRROR_TIMEOUT = 10.0


# -- requests and responses -------------------------------------------------------------------------------


def node(node_id: str, group: str = "default", listen: str | None = None) -> base_pb2.Node:
    n = base_pb2.Node(id=node_id, cluster=group)
    if listen:
        n.metadata.fields["ferry.listen"].CopyFrom(struct_pb2.Value(string_value=listen))
    return n


def sotw(type_url, *, names=(), nonce="", version="", error=None, node_=None):
    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if error:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    if node_ is not None:
        request.node.CopyFrom(node_)
    return request


def delta(type_url, *, subscribe=(), unsubscribe=(), nonce="", error=None, initial=None, node_=None):
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if error:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    if node_ is not None:
        request.node.CopyFrom(node_)
    return request


async def read(call):
    return await asyncio.wait_for(call.read(), READ_TIMEOUT)


def names_of(response) -> list[str]:
    """The names of the clusters or endpoints a SotW response carries, sorted."""
    out = []
    for any_ in response.resources:
        if response.type_url == xds.CLUSTER:
            out.append(cluster_pb2.Cluster.FromString(any_.value).name)
        else:
            out.append(endpoint_pb2.ClusterLoadAssignment.FromString(any_.value).cluster_name)
    return sorted(out)


# -- resources --------------------------------------------------------------------------------------------


def cluster(name: str, timeout: float = 1.0) -> Resource:
    return xds.cluster(name, connect_timeout_s=timeout)


def cla(name: str, port: int) -> Resource:
    return xds.load_assignment(name, [("127.0.0.1", port)])


def route_table(name: str, *clusters: str) -> Resource:
    """A route table for host <name>.test splitting evenly between `clusters`."""
    targets = tuple(xds.WeightedTarget(c, c, 100 // len(clusters)) for c in clusters)
    return xds.route_table(name, [xds.HostRoute(name, name, (f"{name}.test",), targets, 30)])


def service(name: str, port: int, revisions: tuple[str, ...] = ("r1",), *, host: str | None = None) -> dict:
    """What the controller publishes for one service: a cluster and endpoints per revision, a route table
    splitting between them, and the host scope that selects the table."""
    host = host or f"{name}.test"
    clusters = [xds.cluster_name(name, r) for r in revisions]
    targets = tuple(xds.WeightedTarget(c, r, 100 // len(revisions)) for c, r in zip(clusters, revisions, strict=True))
    return {
        xds.CLUSTER: {c: xds.cluster(c) for c in clusters},
        xds.ENDPOINT: {c: cla(c, port) for c in clusters},
        xds.ROUTE: {name: xds.route_table(name, [xds.HostRoute(name, name, (host,), targets, 30)])},
        xds.SCOPED_ROUTE: {host: xds.host_scope(host, name)},
    }


def gateway_listener(port: int) -> dict:
    return {xds.LISTENER: {xds.LISTENER_NAME: xds.listener("127.0.0.1", port)}}


def merged(*parts: dict) -> dict:
    out: dict = {t: {} for t in xds.PUSH_ORDER}
    for part in parts:
        for type_url, entries in part.items():
            out[type_url].update(entries)
    return out


def removal(part: dict) -> dict:
    return {type_url: dict.fromkeys(entries) for type_url, entries in part.items()}


def contents(cache: SnapshotCache, group: str = SnapshotCache.DEFAULT) -> dict:
    return {t: {n: r.body for n, r in s.entries.items()} for t, s in cache.group(group).stores.items()}


# -- in-process servers ------------------------------------------------------------------------------------


class Leader:
    """A leader's serving half: cache, ADS server on a loopback port; stop() and start() again to restart it."""

    def __init__(self, port: int | None = None):
        self.cache = SnapshotCache()
        self.gateways = GatewayRegistry()
        self.port = port or free_port()
        self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "Leader":
        servicer = AdsServicer(self.cache, self.gateways)
        self.server = await start_xds_server(servicer, self.address)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


class Follower:
    """A follower replica: its own cache and ADS server, filled by an XdsMirror of whatever `upstream` names."""

    def __init__(self, upstream: str | None):
        self.upstream = upstream
        self.cache = SnapshotCache()
        self.gateways = GatewayRegistry()
        self.port = free_port()
        self.mirror = XdsMirror(self.cache, lambda: self.upstream, node_id="replica-2", backoff_max_s=0.5)
        self.server = None
        self.task: asyncio.Task | None = None

    def point_at(self, upstream: str | None) -> None:
        self.upstream = upstream
        self.mirror.notify_upstream_changed()

    async def __aenter__(self) -> "Follower":
        servicer = AdsServicer(self.cache, self.gateways)
        self.server = await start_xds_server(servicer, f"127.0.0.1:{self.port}")
        self.task = asyncio.create_task(self.mirror.run())
        return self

    async def __aexit__(self, *exc) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.server is not None:
            await self.server.stop(0)

    async def mirrors(self, leader: Leader) -> None:
        await wait_until(lambda: contents(self.cache) == contents(leader.cache), MIRROR_TIMEOUT, "the follower to mirror")


class Harness:
    """ferry's ADS server over `cache` on a loopback port, and a client stub (`stub`) connected to it."""

    def __init__(self, cache: SnapshotCache, ready: asyncio.Event | None = None):
        self.cache = cache
        self.gateways = GatewayRegistry()
        self.servicer = AdsServicer(cache, self.gateways, ready=ready)
        self.server = None
        self.channel = None

    async def __aenter__(self):
        port = free_port()
        self.server = await start_xds_server(self.servicer, f"127.0.0.1:{port}")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.channel.close()
        await self.server.stop(0)
