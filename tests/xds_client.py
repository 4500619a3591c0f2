"""Shared by the xDS tests: an ADS client's requests, resource builders, and cache contents."""

from __future__ import annotations

import asyncio

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from ferry.xds import resources as xds
from ferry.xds.cache import SnapshotCache
from ferry.xds.types import Resource

READ_TIMEOUT = 5.0


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
