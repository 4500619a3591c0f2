"""Certificates over SDS, at the protocol: which gateways get the HTTPS listener and the private keys (xds/groups.py
serves_tls), in SotW and Delta, when the policy changes, through a follower replica; the cache's references from a
listener to its secrets; the route table's redirect and forwarded header."""

from __future__ import annotations

import asyncio

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf import struct_pb2

from ferry.xds import https
from ferry.xds import resources as xds
from ferry.xds.cache import InconsistentChanges, SnapshotCache
from ferry.xds.mirror import decode

from .xds_client import Follower, Harness, Leader, delta, merged, node, read, service, sotw

pytestmark = pytest.mark.timeout(60)

SECRET = "ferry-tls/hello.example.com"


def tls_state(groups=None, *, key: bytes = b"KEY-1") -> dict:
    """What the controller publishes for gateway.tls: the plain and HTTPS listeners, one certificate."""
    chains = [https.TlsChain(SECRET, ("hello.example.com", "*.example.com"))]
    return {
        xds.LISTENER: {xds.LISTENER_NAME: xds.listener("127.0.0.1", 8080),
                       https.HTTPS_LISTENER_NAME: https.https_listener("127.0.0.1", 8443, chains, groups=groups)},
        xds.SECRET: {SECRET: https.secret(SECRET, b"CHAIN", key)},
    }


def listener_names(response) -> set[str]:
    items = response.resources
    return {listener_pb2.Listener.FromString(i.resource.value if hasattr(i, "resource") else i.value).name
            for i in items}


def secrets_of(response) -> dict[str, bytes]:
    out = {}
    for item in response.resources:
        message = secret_pb2.Secret.FromString(item.resource.value if hasattr(item, "resource") else item.value)
        out[message.name] = message.tls_certificate.private_key.inline_bytes
    return out


def replica_node(node_id: str):
    n = node(node_id)
    n.metadata.fields["ferry.replica"].CopyFrom(struct_pb2.Value(string_value="true"))
    return n


async def nothing_more(call, seconds: float = 0.5) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(call.read(), seconds)


async def delta_gateway(h: Harness, node_):
    """A Delta stream that asks for every listener and every secret ("*"): (call, LDS answer, SDS answer)."""
    call = h.stub.DeltaAggregatedResources()
    await call.write(delta(xds.LISTENER, node_=node_))
    lds = await read(call)
    await call.write(delta(xds.LISTENER, nonce=lds.nonce))
    await call.write(delta(xds.SECRET, subscribe=["*"]))
    sds = await read(call)
    assert sds.type_url == xds.SECRET
    await call.write(delta(xds.SECRET, nonce=sds.nonce))
    return call, lds, sds


async def test_by_default_only_ferrys_own_gateway_gets_the_keys_and_the_https_listener():
    cache = SnapshotCache()
    cache.update(tls_state())
    async with Harness(cache) as h:
        own, own_lds, own_sds = await delta_gateway(h, node("ferry-local"))
        assert listener_names(own_lds) == {xds.LISTENER_NAME, https.HTTPS_LISTENER_NAME}
        assert secrets_of(own_sds) == {SECRET: b"KEY-1"}
        # A remote gateway: another group, or the same group at its own address (`ferry bootstrap --listen`).
        for remote in (node("edge-1", "edge"), node("neighbour", "default", "127.0.0.1:18081")):
            call, lds, sds = await delta_gateway(h, remote)
            assert listener_names(lds) == {xds.LISTENER_NAME}
            assert secrets_of(sds) == {}  # the wildcard's first answer, empty
            # Naming the secret does not help.
            await call.write(delta(xds.SECRET, subscribe=[SECRET]))
            await nothing_more(call)
            call.cancel()
        # A rotation reaches the gateway that serves HTTPS, and only it.
        cache.update({xds.SECRET: {SECRET: https.secret(SECRET, b"CHAIN", b"KEY-2")}})
        rotated = await read(own)
        assert secrets_of(rotated) == {SECRET: b"KEY-2"}
        await own.write(delta(xds.SECRET, nonce=rotated.nonce))
        assert await h.gateways.wait_in_sync(5)
        own.cancel()


async def test_sotw_remote_group_gets_neither():
    cache = SnapshotCache()
    cache.update(tls_state())
    async with Harness(cache) as h:
        call = h.stub.StreamAggregatedResources()
        await call.write(sotw(xds.LISTENER, node_=node("edge-1", "edge")))
        lds = await read(call)
        assert listener_names(lds) == {xds.LISTENER_NAME}
        await call.write(sotw(xds.LISTENER, nonce=lds.nonce, version=lds.version_info))
        await call.write(sotw(xds.SECRET, names=[SECRET]))
        await nothing_more(call)
        call.cancel()
        own = h.stub.StreamAggregatedResources()
        await own.write(sotw(xds.LISTENER, node_=node("ferry-local")))
        assert listener_names(await read(own)) == {xds.LISTENER_NAME, https.HTTPS_LISTENER_NAME}
        await own.write(sotw(xds.SECRET, names=[SECRET]))
        assert secrets_of(await read(own)) == {SECRET: b"KEY-1"}
        own.cancel()


async def test_tls_groups_name_who_serves_https_and_a_change_reaches_streams_at_once():
    cache = SnapshotCache()
    cache.update(tls_state(groups=["edge"]))
    async with Harness(cache) as h:
        own, own_lds, own_sds = await delta_gateway(h, node("ferry-local"))
        assert listener_names(own_lds) == {xds.LISTENER_NAME} and secrets_of(own_sds) == {}
        edge, edge_lds, edge_sds = await delta_gateway(h, node("edge-1", "edge", "10.0.0.7:8080"))
        assert listener_names(edge_lds) == {xds.LISTENER_NAME, https.HTTPS_LISTENER_NAME}
        assert secrets_of(edge_sds) == {SECRET: b"KEY-1"}
        other, _, other_sds = await delta_gateway(h, node("other-1", "other"))
        assert secrets_of(other_sds) == {}

        # The file now lists `other` instead of `edge`: edge loses the listener and the key, other gets both.
        cache.update(tls_state(groups=["other"]))
        got = {}
        for _ in range(2):
            response = await read(edge)
            got[response.type_url] = response
            await edge.write(delta(response.type_url, nonce=response.nonce))
        assert list(got[xds.LISTENER].removed_resources) == [https.HTTPS_LISTENER_NAME]
        assert list(got[xds.SECRET].removed_resources) == [SECRET]
        got = {}
        for _ in range(2):
            response = await read(other)
            got[response.type_url] = response
            await other.write(delta(response.type_url, nonce=response.nonce))
        assert https.HTTPS_LISTENER_NAME in listener_names(got[xds.LISTENER])
        assert secrets_of(got[xds.SECRET]) == {SECRET: b"KEY-1"}
        for call in (own, edge, other):
            call.cancel()


async def test_a_replica_gets_everything_and_its_own_gateways_follow_the_same_policy():
    leader = await Leader().start()
    try:
        leader.cache.update(merged(service("hello", 9001, host="hello.example.com"), tls_state(groups=["edge"])))
        async with Follower(leader.address) as follower:
            await follower.mirrors(leader)
            stores = follower.cache.group(SnapshotCache.DEFAULT).stores
            assert stores[xds.SECRET].entries[SECRET].body == leader.cache.group("default").stores[
                xds.SECRET].entries[SECRET].body
            assert stores[xds.LISTENER].entries[https.HTTPS_LISTENER_NAME].refs == {SECRET}
            h = Harness(follower.cache)
            async with h:
                _, lds, sds = await delta_gateway(h, node("edge-1", "edge"))
                assert https.HTTPS_LISTENER_NAME in listener_names(lds) and secrets_of(sds) == {SECRET: b"KEY-1"}
                _, lds, sds = await delta_gateway(h, node("gw", "default"))
                assert listener_names(lds) == {xds.LISTENER_NAME} and secrets_of(sds) == {}
                replica = h.stub.DeltaAggregatedResources()
                await replica.write(delta(xds.SECRET, subscribe=["*"], node_=replica_node("replica-3")))
                assert secrets_of(await read(replica)) == {SECRET: b"KEY-1"}
    finally:
        await leader.stop()


def test_a_listener_refers_to_its_secrets():
    cache = SnapshotCache()
    state = tls_state()
    with pytest.raises(InconsistentChanges, match=f"LDS ferry_https names SDS {SECRET}"):
        cache.update({xds.LISTENER: state[xds.LISTENER]})
    cache.update(state)
    with pytest.raises(InconsistentChanges, match=f"SDS {SECRET} would be deleted while 1 LDS"):
        cache.update({xds.SECRET: {SECRET: None}})
    cache.update({xds.LISTENER: {https.HTTPS_LISTENER_NAME: None}, xds.SECRET: {SECRET: None}})


def test_a_follower_decodes_secrets_and_a_listeners_references():
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2

    state = tls_state()
    for type_url in (xds.SECRET, xds.LISTENER):
        response = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, resources=[
            discovery_pb2.Resource(name=r.name, version=r.version, resource=any_pb2.Any(type_url=type_url, value=r.body))
            for r in state[type_url].values()])
        decoded = decode(response)
        assert decoded == state[type_url]
        assert {n: r.refs for n, r in decoded.items()} == {n: r.refs for n, r in state[type_url].items()}


def test_https_listener_chains_by_sni_with_tls_1_2_alpn_and_the_plain_listeners_manager():
    listener = listener_pb2.Listener.FromString(
        https.https_listener("0.0.0.0", 8443, [https.TlsChain("s1", ("a.test",)), https.TlsChain("s2", ("b.test",
                                                                                                       "*.b.test"))]).body)
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert [list(c.filter_chain_match.server_names) for c in listener.filter_chains] == [["a.test"],
                                                                                        ["b.test", "*.b.test"]]
    assert not listener.HasField("default_filter_chain")  # no SNI match: no certificate, the handshake fails
    context = tls_pb2.DownstreamTlsContext.FromString(listener.filter_chains[1].transport_socket.typed_config.value)
    common = context.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == ["s2"]
    assert common.tls_certificate_sds_secret_configs[0].sds_config.HasField("ads")
    assert common.tls_params.tls_minimum_protocol_version == common.tls_params.TLSv1_2
    assert list(common.alpn_protocols) == ["h2", "http/1.1"] and context.require_sni.value
    plain = listener_pb2.Listener.FromString(xds.listener("0.0.0.0", 8080).body).filter_chains[0].filters[0]
    chain = listener.filter_chains[0].filters[0]
    assert chain.name == plain.name
    manager, plain_manager = (hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value) for f in (chain, plain))
    assert manager.stat_prefix == "ferry_https"
    manager.stat_prefix = plain_manager.stat_prefix
    assert manager == plain_manager  # the same scopes, routes and edge settings


def test_redirect_route_comes_first_for_covered_hosts_only_on_plain_public_requests():
    redirect = xds.HttpsRedirect(frozenset({"hello.example.com", "*.example.com"}), 8443)
    target = xds.WeightedTarget("hello/r1", "r1", 100)
    routes = [xds.HostRoute("hello", "hello", ("hello.localhost", "hello.example.com"), (target,), 30),
              xds.HostRoute("hello/tag/next", "hello", ("next-hello.example.com",), (target,), 30),
              xds.HostRoute("hello/tag/old", "hello", ("old-hello.localhost",), (target,), 30)]
    table = route_pb2.RouteConfiguration.FromString(xds.route_table("hello", routes, https_redirect=redirect).body)
    main, tagged, plain = table.virtual_hosts
    first = main.routes[0]
    assert first.redirect.https_redirect and first.redirect.port_redirect == 8443
    assert first.redirect.response_code == first.redirect.MOVED_PERMANENTLY
    matchers = {m.name: m.string_match for m in first.match.headers}
    assert matchers["x-forwarded-proto"].exact == "http" and matchers[xds.LISTENER_HEADER].exact == "public"
    assert matchers[":authority"].safe_regex.regex == r"^(?:hello\.example\.com)$"  # not hello.localhost
    assert tagged.routes[0].HasField("redirect") and ":authority" not in {m.name for m in tagged.routes[0].match.headers}
    assert not any(r.HasField("redirect") for r in plain.routes)
    assert xds.route_table("hello", routes, https_redirect=redirect).refs == {"hello/r1"}
    at_443 = route_pb2.RouteConfiguration.FromString(xds.route_table(
        "hello", routes, https_redirect=xds.HttpsRedirect(frozenset({"*.example.com"}), 443)).body)
    assert at_443.virtual_hosts[1].routes[0].redirect.port_redirect == 0  # https's own port: none in the URL
    forwarded = {h.header.key: h.header.value for h in table.request_headers_to_add}["forwarded"]
    assert forwarded.endswith(";proto=%REQ(x-forwarded-proto)%")
