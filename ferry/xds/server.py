"""gRPC ADS server (State-of-the-World and Delta) over the snapshot cache.

This layer only moves messages between sockets and `AdsStream`; protocol decisions live in stream.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .cache import SnapshotCache, TooManyGroups
from .stream import AdsStream, Nack, Node, StreamObserver
from .types import SHORT_TYPE

log = logging.getLogger("ferry.xds")

# While a route table waits for its clusters, re-check this often (the wait has a deadline).
_DEPENDENCY_POLL_S = 0.25
MAX_STREAMS = 1024  # gateways (and followers) connected at once
# A gateway that reconnects re-subscribes to every type at once; its first answer waits this long for all of them,
# so that what it holds is known before anything is removed from it (stream.py: make before break, for removals).
RESUBSCRIBE_WINDOW_S = 0.1


class XdsMetrics(StreamObserver):
    def __init__(self, registry: CollectorRegistry, gateways: "GatewayRegistry"):
        self.pushes = Counter("ferry_xds_pushes", "xDS responses sent", ["type"], registry=registry)
        self.resources = Counter("ferry_xds_pushed_resources", "Resources sent in xDS responses", ["type"], registry=registry)
        self.acks = Counter("ferry_xds_acks", "xDS responses acknowledged", ["type"], registry=registry)
        self.nacks = Counter("ferry_xds_nacks", "xDS responses rejected by a gateway", ["type"], registry=registry)
        self.push_latency = Histogram(
            "ferry_xds_push_latency_seconds",
            "From a configuration change to the gateway's ACK",
            ["type"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        connected = Gauge("ferry_xds_connected_gateways", "Gateways with an open ADS stream", registry=registry)
        connected.set_function(lambda: len(gateways.streams))
        self._gateways = gateways

    def sent(self, stream, type_url, count):
        short = SHORT_TYPE[type_url]
        self.pushes.labels(short).inc()
        self.resources.labels(short).inc(count)

    def acked(self, stream, type_url, latency_s):
        short = SHORT_TYPE[type_url]
        self.acks.labels(short).inc()
        self.push_latency.labels(short).observe(latency_s)

    def nacked(self, stream, nack: Nack):
        self.nacks.labels(SHORT_TYPE[nack.type_url]).inc()

    def state_changed(self, stream):
        self._gateways.changed()


class GatewayRegistry:
    """Open streams, plus what the last stream of each node reported (a gateway that went away stays visible)."""

    def __init__(self) -> None:
        self.streams: set[AdsStream] = set()
        self.last_seen: dict[str, dict] = {}
        self._changed = asyncio.Event()

    def add(self, stream: AdsStream) -> None:
        self.streams.add(stream)
        self.changed()

    def remove(self, stream: AdsStream) -> None:
        self.streams.discard(stream)
        if stream.node is not None:
            self.last_seen[stream.node.id] = stream.status()
        self.changed()

    def changed(self) -> None:
        self._changed.set()

    def status(self) -> list[dict]:
        live = {s.node_id: s.status() for s in self.streams if s.node is not None}
        gone = {node: status for node, status in self.last_seen.items() if node not in live}
        return sorted([*live.values(), *gone.values()], key=lambda g: g["node"])

    def all_in_sync(self, min_gateways: int = 0) -> bool:
        """Every gateway runs the current config. A client that never acknowledged anything is no gateway serving
        traffic (it would make every retirement wait out its timeout): it does not count."""
        attached = [s for s in self.streams if s.node is not None and s.serving]
        return len(attached) >= min_gateways and all(s.in_sync() for s in attached)

    async def wait_in_sync(self, timeout: float, min_gateways: int = 0) -> bool:
        """Until every connected gateway (at least `min_gateways`) runs the current config: False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.all_in_sync(min_gateways):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, _DEPENDENCY_POLL_S))
            except asyncio.TimeoutError:
                pass
        return True


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        gateways: GatewayRegistry,
        observer: StreamObserver | None = None,
        ready: asyncio.Event | None = None,
        max_streams: int = MAX_STREAMS,
    ):
        self._cache = cache
        self._gateways = gateways
        self._observer = observer
        self._max_streams = max_streams
        self._refused_at = 0.0
        self._ready = ready  # until set, streams are read but not answered: the cache is not whole yet

    def _resolve_group(self, node: Node):
        """Gateways share a snapshot by group (node.cluster), unless they ask for their own listener (groups.py)."""
        return self._cache.group_of(node.group, node.metadata)

    # grpc.aio recognises streaming handlers by their being async generator functions.
    async def StreamAggregatedResources(self, request_iterator, context):
        async for response in self._serve(False, request_iterator, context):
            yield response

    async def DeltaAggregatedResources(self, request_iterator, context):
        async for response in self._serve(True, request_iterator, context):
            yield response

    async def _serve(self, delta: bool, request_iterator, context):
        if len(self._gateways.streams) >= self._max_streams:
            self._refuse(context.peer(), f"{len(self._gateways.streams)} streams are open, the most allowed")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many xDS streams")
        stream = AdsStream(
            delta=delta,
            resolve_group=self._resolve_group,
            observer=self._observer,
        )
        stream.peer = peer_host(context.peer())
        wake = asyncio.Event()
        stream.wake = wake.set
        self._gateways.add(stream)
        reader = asyncio.create_task(self._read(stream, request_iterator, wake))
        try:
            if self._ready is not None and not self._ready.is_set():
                await self._ready.wait()
            first = True
            while True:
                timeout = _DEPENDENCY_POLL_S if stream.waiting_on_dependencies() else None
                try:
                    await asyncio.wait_for(wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                wake.clear()
                if reader.done():
                    try:
                        reader.result()  # re-raise a reader failure
                    except TooManyGroups as err:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
                    return
                if first and stream.resuming:
                    await asyncio.sleep(RESUBSCRIBE_WINDOW_S)
                first = first and stream.node is None
                for response in stream.responses():
                    yield response
                self._gateways.changed()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            stream.close()
            self._gateways.remove(stream)
            if stream.snapshot is not None:
                self._cache.forget(stream.snapshot.name)  # if no gateway uses it: it is a copy, made again on demand
            log.info("gateway disconnected", extra={"node": stream.node_id})

    def _refuse(self, peer: str, why: str) -> None:
        """Log a refusal, at most once every 10 s (a flood must not flood the log too)."""
        now = time.monotonic()
        if now - self._refused_at >= 10:
            self._refused_at = now
            log.warning("xDS stream refused", extra={"peer": peer, "why": why})

    async def _read(self, stream: AdsStream, request_iterator, wake: asyncio.Event) -> None:
        try:
            async for request in request_iterator:
                first = stream.node is None
                try:
                    stream.handle(request)
                except TooManyGroups as err:
                    self._refuse(stream.peer or "?", str(err))
                    raise
                if first and stream.node is not None:
                    log.info("gateway connected", extra={"node": stream.node.id, "group": stream.node.group,
                                                         "protocol": "delta" if stream.delta else "sotw"})
                wake.set()
        finally:
            wake.set()


def peer_host(peer: str | None) -> str | None:
    """gRPC's peer ("ipv4:10.0.0.7:51234", "ipv6:[::1]:51234") -> its IP address; None for anything else."""
    kind, _, rest = (peer or "").partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host = rest.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host or None


@dataclass(frozen=True)
class Tls:
    """PEM: this side's certificate and key, and the CA the other side's certificate must come from."""

    cert: bytes
    key: bytes
    ca: bytes

    SERVER_NAME = "ferry"  # what a client checks the server's certificate for (ferry.tls.SERVER_NAME)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


async def start_xds_server(servicer: AdsServicer, address: str, tls: Tls | None = None) -> grpc.aio.Server:
    """Serve ADS on `address`; with `tls`, only to clients with a certificate from its CA (mutual TLS)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # Followers (mirror.py) ping every 20 s to notice a vanished leader; below the default 5 min
            # floor, gRPC would answer their pings with GOAWAY too_many_pings.
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials(
            [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True))
    if bound == 0:
        raise OSError(f"cannot listen for xDS on {address}: the address is in use or invalid (use --xds to move it)")
    await server.start()
    return server
