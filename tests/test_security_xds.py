"""Hostile xDS clients against ferry's real ADS server over loopback: without the install's certificate nothing is
served; malformed, oversized and junk requests end only their own stream; streams and groups are capped; a client
that never acknowledges holds nothing up; the stats address ferry reads is the connected peer's, never one the
client names."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import struct_pb2

from ferry.certs import generate
from ferry.xds import resources as xds
from ferry.xds.cache import SnapshotCache
from ferry.xds.groups import STATS_METADATA_KEY
from ferry.xds.server import AdsServicer, GatewayRegistry, Tls, start_xds_server

from .helpers import free_port, wait_until
from .xds_client import READ_TIMEOUT, cluster, delta, node, read, sotw

pytestmark = pytest.mark.timeout(60)

DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
CERTS = generate()
OTHER_CA = generate()


def tls_of(certs: dict[str, bytes], side: str = "server") -> Tls:
    return Tls(certs[f"{side}.crt"], certs[f"{side}.key"], certs["ca.crt"])


class Server:
    def __init__(self, *, tls: Tls | None = None, max_streams: int = 1024, max_groups: int = 64):
        self.cache = SnapshotCache(max_groups=max_groups)
        self.cache.update({xds.CLUSTER: {"a": cluster("a")}})
        self.gateways = GatewayRegistry()
        self.servicer = AdsServicer(self.cache, self.gateways, max_streams=max_streams)
        self.tls = tls
        self.port = free_port()
        self.channels: list[grpc.aio.Channel] = []

    async def __aenter__(self):
        self.server = await start_xds_server(self.servicer, f"127.0.0.1:{self.port}", self.tls)
        return self

    async def __aexit__(self, *exc):
        for channel in self.channels:
            await channel.close()
        await self.server.stop(0)

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
        address = f"127.0.0.1:{self.port}"
        if credentials is None:
            channel = grpc.aio.insecure_channel(address)
        else:
            channel = grpc.aio.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "ferry")])
        self.channels.append(channel)
        return channel

    def stub(self, credentials: grpc.ChannelCredentials | None = None):
        return ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel(credentials))

    async def serves(self, stub, node_id: str = "gw", group: str = "default") -> bool:
        """Whether a SotW CDS request from `node_id` gets the cluster."""
        call = stub.StreamAggregatedResources()
        try:
            await call.write(sotw(xds.CLUSTER, node_=node(node_id, group)))
            response = await read(call)
            return len(response.resources) == 1
        finally:
            call.cancel()


async def _refused(call, request) -> grpc.StatusCode:
    """The status a stream ends with after `request` (fails the test if it is answered)."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.write(request)
        response = await read(call)
        pytest.fail(f"answered: {response}")
    return refused.value.code()


# -- mutual TLS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["plaintext", "no certificate", "certificate of another CA",
                                    "ferry's CA unknown to the client"])
async def test_mutual_tls_serves_no_client_without_the_installs_certificate(client):
    credentials = {
        "plaintext": None,
        "no certificate": grpc.ssl_channel_credentials(root_certificates=CERTS["ca.crt"]),
        "certificate of another CA": grpc.ssl_channel_credentials(
            root_certificates=CERTS["ca.crt"], private_key=OTHER_CA["gateway.key"],
            certificate_chain=OTHER_CA["gateway.crt"]),
        "ferry's CA unknown to the client": tls_of(OTHER_CA, "gateway").channel_credentials(),
    }[client]
    async with Server(tls=tls_of(CERTS)) as server:
        call = server.stub(credentials).StreamAggregatedResources()
        code = await _refused(call, sotw(xds.CLUSTER, node_=node("intruder")))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert not server.gateways.status()  # never got as far as a stream
        # ... while a gateway with the install's certificate is served
        assert await server.serves(server.stub(tls_of(CERTS, "gateway").channel_credentials()))


# -- malformed and oversized -----------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12" * 64],
                         ids=["invalid varint", "length past the end", "truncated fields"])
async def test_a_malformed_protobuf_ends_only_its_own_stream(garbage):
    async with Server() as server:
        raw = server.channel().stream_stream(DELTA_METHOD, request_serializer=None, response_deserializer=None)
        call = raw()
        await call.write(garbage)
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(call.read(), READ_TIMEOUT)
        await wait_until(lambda: not server.gateways.streams, 5, "the broken stream to be gone")
        assert await server.serves(server.stub())


async def test_an_oversized_request_is_refused():
    async with Server() as server:
        raw = server.channel().stream_stream(DELTA_METHOD, request_serializer=None, response_deserializer=None)
        call = raw()
        request = delta(xds.CLUSTER, subscribe=["x" * 1024] * (17 * 1024), node_=node("big")).SerializeToString()
        code = await _refused(call, request)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await server.serves(server.stub())


async def test_unknown_types_and_junk_names_change_nothing():
    async with Server() as server:
        call = server.stub().DeltaAggregatedResources()
        await call.write(delta("type.googleapis.com/evil.Type", subscribe=["*"], node_=node("junk")))
        await call.write(delta(xds.CLUSTER, subscribe=["../../etc/passwd", "\x00", "a" * 10_000]))
        await call.write(delta(xds.CLUSTER, nonce="never-sent", error="made up"))
        assert server.cache.group(SnapshotCache.DEFAULT).stores[xds.CLUSTER].entries.keys() == {"a"}
        call.cancel()
        assert await server.serves(server.stub())


# -- caps ------------------------------------------------------------------------------------------------


async def test_streams_beyond_the_cap_are_refused_with_resource_exhausted(caplog):
    async with Server(max_streams=3) as server:
        calls = []
        for i in range(3):
            call = server.stub().StreamAggregatedResources()
            await call.write(sotw(xds.CLUSTER, node_=node(f"gw{i}")))
            await read(call)
            calls.append(call)
        extra = server.stub().StreamAggregatedResources()
        assert await _refused(extra, sotw(xds.CLUSTER, node_=node("one-too-many"))) == \
            grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "xDS stream refused" in caplog.text
        calls.pop().cancel()
        await wait_until(lambda: len(server.gateways.streams) == 2, 5, "a stream to close")
        assert await server.serves(server.stub())  # room again


async def test_junk_groups_beyond_the_cap_are_refused_and_forgotten():
    """500 made-up node.cluster values: each group holds a copy of every resource, so they are capped; a group
    nobody is connected to any more is forgotten."""
    async with Server(max_groups=8) as server:
        served, refused = [], 0
        for i in range(40):
            call = server.stub().StreamAggregatedResources()
            try:
                await call.write(sotw(xds.CLUSTER, node_=node(f"junk{i}", group=f"group-{i}")))
                await read(call)
                served.append(call)  # kept open: its group stays
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "group" in err.details()
                refused += 1
        assert len(served) == 7 and refused == 33  # the default group and 7 more
        assert len(list(server.cache.groups())) == 8
        for call in served:
            call.cancel()
        await wait_until(lambda: len(list(server.cache.groups())) == 1, 5, "junk groups to be forgotten")
        assert await server.serves(server.stub(), group="real")


async def test_a_client_that_never_acknowledges_holds_no_change_back():
    async with Server() as server:
        silent = server.stub().StreamAggregatedResources()
        await silent.write(sotw(xds.CLUSTER, node_=node("silent")))
        await read(silent)  # ... and never an ACK
        gateway = server.stub().StreamAggregatedResources()
        await gateway.write(sotw(xds.CLUSTER, node_=node("gateway")))
        first = await read(gateway)
        await gateway.write(sotw(xds.CLUSTER, nonce=first.nonce, version=first.version_info))
        assert await server.gateways.wait_in_sync(2.0, min_gateways=1)
        silent.cancel()
        gateway.cancel()


# -- where stats are read --------------------------------------------------------------------------------


@pytest.mark.parametrize(("metadata", "expected"), [
    ({STATS_METADATA_KEY: "9902"}, ("127.0.0.1", 9902)),
    ({STATS_METADATA_KEY: "169.254.169.254:80"}, None),
    ({STATS_METADATA_KEY: "http://10.0.0.1:9901/stats"}, None),
    ({STATS_METADATA_KEY: "99999"}, None),
    ({STATS_METADATA_KEY: "0"}, None),
    ({"ferry.admin": "169.254.169.254:80"}, None),  # the old key, that named any host
])
async def test_stats_are_read_at_the_peers_own_address(metadata, expected):
    async with Server() as server:
        call = server.stub().StreamAggregatedResources()
        n = node("gw")
        for key, value in metadata.items():
            n.metadata.fields[key].CopyFrom(struct_pb2.Value(string_value=value))
        await call.write(sotw(xds.CLUSTER, node_=n))
        await read(call)
        (stream,) = server.gateways.streams
        assert stream.stats_address() == expected
        call.cancel()
