"""A follower replica's copy of the leader's xDS state, so that a gateway may connect to any replica.

Like envoyproxy/xds-relay, but for one upstream and one group: the follower is an ordinary Delta ADS client
of the leader (wildcard on every type), and writes what it receives into its own `SnapshotCache`, which its
own `AdsServicer` serves to its gateways. Versions are re-derived from content, as the leader derives
them, so the follower serves the very versions the leader does, and a follower that takes over as leader
hands its gateways nothing new.

A follower that loses the leader keeps serving the last state it had: gateways keep working, and new ones
still get config. Each new stream starts with the full state of every type; what the follower held that
the upstream no longer has is deleted once all types have arrived (never before, so that routes never
lose their clusters half-way).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from .cache import SnapshotCache
from .groups import REPLICA_METADATA_KEY
from .https import listener_secrets
from .resources import route_clusters
from .server import Tls
from .types import (CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SCOPED_ROUTE, SECRET, SHORT_TYPE, Changes,
                    Resource)

log = logging.getLogger("ferry.xds.mirror")


_MESSAGES = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    SCOPED_ROUTE: scoped_route_pb2.ScopedRouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SECRET: secret_pb2.Secret,
}

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),  # the leader's first answer holds every resource of a type
    # A leader whose host vanished sends no RST; pings find out within half a minute (the server allows them).
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

_INVALID_ARGUMENT = 3  # google.rpc.Code


# -- pure logic -----------------------------------------------------------------------------------------


def decode(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, Resource | None]:
    """A Delta response as cache changes for its type, each resource with the names it refers to, read from it;
    ValueError if a resource is not what it claims to be (nothing of such a response is applied: it is NACKed
    whole)."""
    message = _MESSAGES.get(response.type_url)
    if message is None:
        raise ValueError(f"unknown resource type {response.type_url!r}")
    entries: dict[str, Resource | None] = {}
    for item in response.resources:
        if not item.name or item.resource.type_url != response.type_url:
            raise ValueError(f"resource {item.name!r} is not a {SHORT_TYPE[response.type_url]} resource")
        body = item.resource.value
        try:
            parsed = message.FromString(body)
        except DecodeError as err:
            raise ValueError(f"resource {item.name!r} cannot be parsed: {err}") from err
        entries[item.name] = Resource.of(item.name, body, references(response.type_url, parsed))
    for name in response.removed_resources:
        entries[name] = None
    return entries


def references(type_url: str, message) -> frozenset[str]:
    """The names a decoded resource refers to, as the leader's builders set them (xds/resources.py)."""
    if type_url == ROUTE:
        return route_clusters(message)
    if type_url == SCOPED_ROUTE:
        return frozenset((message.route_configuration_name,))
    if type_url == LISTENER:
        return listener_secrets(message)
    return frozenset()


def stale_changes(stores: Mapping[str, Mapping[str, Resource]], seen: Mapping[str, set[str]]) -> Changes:
    """Deletions for what `stores` hold and the upstream did not send (groups.specialise keeps the listener of a
    group with its own listen address: that one never came from the upstream)."""
    changes: dict[str, dict[str, None]] = {}
    for type_url, entries in stores.items():
        gone = [name for name in entries if name not in seen[type_url]]
        if gone:
            changes[type_url] = dict.fromkeys(gone)
    return changes


def backoff_delay(failures: int, low: float, high: float) -> float:
    """Exponential in consecutive failures, capped, jittered so that followers do not reconnect in step."""
    return min(high, low * 2 ** min(failures, 32)) * random.uniform(0.5, 1.0)


@dataclass
class _Connection:
    """What one stream has delivered: the upstream's full state is known once every type has answered."""

    address: str
    connected_at: float | None = None  # wall time of the first response
    closed: bool = False
    answered: set[str] = field(default_factory=set)
    seen: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in PUSH_ORDER})
    synced: bool = False

    def record(self, type_url: str, entries: Mapping[str, Resource | None]) -> bool:
        """Note a response; True when it completes the first full state."""
        if self.synced:
            return False
        self.seen[type_url].update(name for name, resource in entries.items() if resource is not None)
        self.answered.add(type_url)
        self.synced = len(self.answered) == len(PUSH_ORDER)
        return self.synced


# -- the client -----------------------------------------------------------------------------------------


class XdsMirror:
    """Keeps `cache` equal to the upstream's `default` group, over one Delta ADS stream at a time.

    `upstream()` names the leader's xDS address ("host:port"), or None while no leader is known. Call
    `notify_upstream_changed()` when it may have changed; it is also re-read every `backoff_max_s`.
    Groups with their own listen address are the cache's business (xds/groups.py), as on the leader.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        upstream: Callable[[], str | None],
        *,
        node_id: str,
        metadata: Mapping[str, str] = {},
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 5.0,
        tls: Tls | None = None,
    ):
        self.cache = cache
        self._tls = tls  # mutual TLS with the leader (its certificate, as replicas share one)
        self._upstream = upstream
        self.node_id = node_id
        self.metadata = {**metadata, REPLICA_METADATA_KEY: "true"}
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        # Set once the cache holds a whole mirrored state, and never cleared: the last state keeps serving
        # while no leader answers (status()["in_sync"] says whether the current stream has caught up).
        self.synced = asyncio.Event()
        self.reconnects = 0
        self.last_error: str | None = None
        self.last_update: float | None = None  # wall time of the last response applied
        self.since: float | None = None  # wall time of the last connection
        self._connection: _Connection | None = None
        self._wake = asyncio.Event()
        self._notified = False

    # -- inputs ---------------------------------------------------------------------------------------

    def notify_upstream_changed(self) -> None:
        """The leader may have changed: reconnect at once if `upstream()` now names another address."""
        self._notified = True
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the upstream until cancelled: connect, mirror, and on failure retry with backoff."""
        failures = 0
        attempts = 0
        while True:
            self._notified = False
            address = self._upstream()
            if address is None:
                await self._pause(self._backoff_max_s)
                continue
            if attempts:
                self.reconnects += 1
            attempts += 1
            connected, moved = await self._follow(address)
            if moved:
                failures = 0
                continue
            failures = 0 if connected else failures + 1
            if failures == 1:  # the first failure in a row; the rest only in status()
                log.info("cannot reach upstream", extra={"upstream": address, "error": self.last_error})
            await self._pause(backoff_delay(failures, self._backoff_min_s, self._backoff_max_s))

    async def _pause(self, delay: float) -> None:
        """Wait `delay`, or less if notify_upstream_changed() is called meanwhile."""
        if self._notified:
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _follow(self, address: str) -> tuple[bool, bool]:
        """One stream to `address`, until it fails or `upstream()` names another address: (whether it
        delivered anything, whether the upstream moved)."""
        connection = _Connection(address)
        self._connection = connection
        stream = asyncio.get_running_loop().create_task(self._stream(connection), name=f"xds mirror of {address}")
        stream.add_done_callback(lambda _: self._wake.set())
        moved = False
        try:
            while True:
                self._wake.clear()
                if stream.done():
                    break
                self._notified = False
                current = self._upstream()
                if current is not None and current != address:
                    log.info("upstream changed", extra={"upstream": current, "previous": address})
                    moved = True
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), self._backoff_max_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            stream.cancel()
            (outcome,) = await asyncio.gather(stream, return_exceptions=True)
            self._disconnected(connection, None if moved else outcome)
        return connection.connected_at is not None, moved

    async def _stream(self, connection: _Connection) -> None:
        if self._tls is None:
            channel = grpc.aio.insecure_channel(connection.address, options=_CHANNEL_OPTIONS)
        else:  # the leader is reached by IP; its certificate is for its name
            channel = grpc.aio.secure_channel(connection.address, self._tls.channel_credentials(), options=[
                *_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self._tls.SERVER_NAME)])
        async with channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
            try:
                for request in self._subscriptions():
                    await call.write(request)
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        raise ConnectionError("the upstream ended the stream")
                    if connection.connected_at is None:
                        connection.connected_at = self.since = time.time()
                        log.info("connected to upstream", extra={"upstream": connection.address, "node": self.node_id})
                    await call.write(self._receive(connection, response))
            finally:
                call.cancel()

    def _subscriptions(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        requests = [
            discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=["*"])
            for type_url in PUSH_ORDER
        ]
        node = requests[0].node
        node.id, node.cluster = self.node_id, SnapshotCache.DEFAULT
        for key, value in self.metadata.items():
            node.metadata.fields[key].string_value = value
        return requests

    def _receive(self, connection: _Connection, response) -> discovery_pb2.DeltaDiscoveryRequest:
        """Apply one response to the cache and answer it: ACK, or NACK if a resource cannot be parsed."""
        answer = discovery_pb2.DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        try:
            entries = decode(response)
        except ValueError as err:
            self.last_error = f"rejected {SHORT_TYPE.get(response.type_url, response.type_url)}: {err}"
            log.warning("rejected the upstream's config", extra={"upstream": connection.address, "error": str(err)})
            answer.error_detail.CopyFrom(status_pb2.Status(code=_INVALID_ARGUMENT, message=str(err)))
            return answer
        # A type at a time, unchecked: the leader checked its whole state, and sends routes only after the
        # clusters they name (the mirror ACKs those first).
        self.cache.update({response.type_url: entries}, check=False)
        self.last_update = time.time()
        if connection.record(response.type_url, entries):
            pruned = self._prune(connection.seen)
            self.synced.set()
            log.info("mirrored the upstream's state", extra={
                "upstream": connection.address, "pruned": pruned, "resources": self._counts(),
                "took_s": round(time.time() - connection.connected_at, 3)})
        return answer

    def _prune(self, seen: Mapping[str, set[str]]) -> int:
        """Delete what the upstream did not send on this stream (the state of an earlier leader)."""
        pruned = 0
        for snapshot in list(self.cache.groups()):
            changes = stale_changes({t: s.entries for t, s in snapshot.stores.items()}, seen)
            if changes:
                pruned += sum(len(names) for names in changes.values())
                self.cache.update(changes, [snapshot.name], check=False)
        return pruned

    def _disconnected(self, connection: _Connection, outcome: object) -> None:
        """The stream ended: the cache keeps the last state (gateways keep being served from it)."""
        connection.closed = True
        error = None
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            error = self.last_error = _describe(outcome)
        if connection.connected_at is not None:
            log.log(logging.WARNING if error else logging.INFO, "disconnected from upstream", extra={
                "upstream": connection.address, "error": error,
                "connected_s": round(time.time() - connection.connected_at, 3)})

    # -- status ---------------------------------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        stores = self.cache.group(SnapshotCache.DEFAULT).stores
        return {SHORT_TYPE[t]: len(stores[t].entries) for t in PUSH_ORDER}

    def status(self) -> dict:
        connection = self._connection
        connected = connection is not None and connection.connected_at is not None and not connection.closed
        return {
            "upstream": connection.address if connected else self._upstream(),
            "connected": connected,
            "synced": self.synced.is_set(),
            "in_sync": connected and connection.synced,
            "since": self.since,
            "last_update": self.last_update,
            "resources": self._counts(),
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"
