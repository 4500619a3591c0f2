"""ADS protocol behaviour, driven by a Python gRPC client speaking to ferry's real server over loopback."""

from __future__ import annotations

import asyncio


from ferry.xds import resources as xds
from ferry.xds.cache import SnapshotCache

from .helpers import wait_until
from .xds_client import (
    READ_TIMEOUT,
    Harness,
    cla,
    cluster,
    delta,
    names_of,
    node,
    read,
    route_table,
    sotw,
)


async def test_sotw_ack_then_push_only_on_change():
    cache = SnapshotCache()
    cache.update({xds.CLUSTER: {"a": cluster("a")}})
    async with Harness(cache) as h:
        call = h.stub.StreamAggregatedResources()
        await call.write(sotw(xds.CLUSTER, node_=node("gw")))
        first = await read(call)
        assert names_of(first) == ["a"]
        await call.write(sotw(xds.CLUSTER, nonce=first.nonce, version=first.version_info))
        assert await h.gateways.wait_in_sync(READ_TIMEOUT, 1)
        status = h.gateways.status()[0]
        assert status["acked"]["CDS"] == first.version_info and status["last_nack"] is None

        cache.update({xds.CLUSTER: {"a": cluster("a")}})  # identical content: nothing to send
        cache.update({xds.CLUSTER: {"b": cluster("b")}})
        second = await read(call)
        assert names_of(second) == ["a", "b"]  # CDS is state-of-the-world: the full set
        assert second.version_info != first.version_info
        await call.write(sotw(xds.CLUSTER, nonce=second.nonce, version=second.version_info))

        cache.update({xds.CLUSTER: {"a": None}})
        third = await read(call)
        assert names_of(third) == ["b"]  # a missing cluster is a deletion
        call.cancel()


async def test_versions_derive_from_content():
    one, two = SnapshotCache(), SnapshotCache()
    one.update({xds.CLUSTER: {"a": cluster("a"), "b": cluster("b")}})
    two.update({xds.CLUSTER: {"b": cluster("b")}})
    two.update({xds.CLUSTER: {"a": cluster("a")}})
    assert one.group("default").versions() == two.group("default").versions()


async def test_nack_is_recorded_and_not_resent():
    cache = SnapshotCache()
    cache.update({xds.CLUSTER: {"a": cluster("a")}, xds.ENDPOINT: {"a": cla("a", 1000)}})
    async with Harness(cache) as h:
        call = h.stub.StreamAggregatedResources()
        await call.write(sotw(xds.CLUSTER, node_=node("gw")))
        good = await read(call)
        await call.write(sotw(xds.CLUSTER, nonce=good.nonce, version=good.version_info))
        await call.write(sotw(xds.ENDPOINT, names=["a"]))
        eds = await read(call)
        await call.write(sotw(xds.ENDPOINT, names=["a"], nonce=eds.nonce, version=eds.version_info))

        cache.update({xds.CLUSTER: {"a": cluster("a", timeout=2.0)}})
        bad = await read(call)
        assert bad.type_url == xds.CLUSTER
        # The EDS refresh that follows any cluster change: ACK it.
        refresh = await read(call)
        assert refresh.type_url == xds.ENDPOINT
        await call.write(sotw(xds.ENDPOINT, names=["a"], nonce=refresh.nonce, version=refresh.version_info))
        await call.write(sotw(xds.CLUSTER, nonce=bad.nonce, version=good.version_info, error="bad cluster a"))

        await wait_until(lambda: h.gateways.status()[0]["last_nack"], READ_TIMEOUT, "the NACK to be processed")
        # The rejected version is not sent again: the next message is an unrelated EDS change.
        cache.update({xds.ENDPOINT: {"a": cla("a", 1001)}})
        after = await read(call)
        assert after.type_url == xds.ENDPOINT
        status = h.gateways.status()[0]
        assert status["last_nack"]["message"] == "bad cluster a"
        assert status["last_nack"]["type"] == "CDS"
        assert status["acked"]["CDS"] == good.version_info  # the gateway runs the last accepted version
        assert not status["in_sync"]

        # A new version is sent, and accepting it clears the error.
        cache.update({xds.CLUSTER: {"a": cluster("a", timeout=3.0)}})
        fixed = await read(call)
        assert fixed.type_url == xds.CLUSTER and fixed.version_info not in (good.version_info, bad.version_info)
        await call.write(sotw(xds.CLUSTER, nonce=fixed.nonce, version=fixed.version_info))
        await call.write(sotw(xds.ENDPOINT, names=["a"], nonce=after.nonce, version=after.version_info))
        refresh = await read(call)
        await call.write(sotw(xds.ENDPOINT, names=["a"], nonce=refresh.nonce, version=refresh.version_info))
        assert await h.gateways.wait_in_sync(READ_TIMEOUT, 1)
        assert h.gateways.status()[0]["last_nack"] is None
        call.cancel()


async def test_stale_nonce_is_ignored_in_sotw():
    cache = SnapshotCache()
    cache.update({xds.CLUSTER: {"a": cluster("a")}})
    async with Harness(cache) as h:
        call = h.stub.StreamAggregatedResources()
        await call.write(sotw(xds.CLUSTER, node_=node("gw")))
        first = await read(call)
        await call.write(sotw(xds.CLUSTER, nonce=first.nonce, version=first.version_info))
        cache.update({xds.CLUSTER: {"b": cluster("b")}})
        second = await read(call)
        # A NACK that carries the *old* nonce answers nothing we have in flight: it must be ignored.
        await call.write(sotw(xds.CLUSTER, nonce=first.nonce, version=first.version_info, error="stale"))
        await call.write(sotw(xds.CLUSTER, nonce=second.nonce, version=second.version_info))
        assert await h.gateways.wait_in_sync(READ_TIMEOUT, 1)
        status = h.gateways.status()[0]
        assert status["last_nack"] is None
        assert status["acked"]["CDS"] == second.version_info
        call.cancel()


async def test_routes_wait_for_their_clusters_and_endpoints():
    """Make before break: a route table naming a new cluster goes out only after CDS and EDS are ACKed."""
    cache = SnapshotCache()
    cache.update({
        xds.CLUSTER: {"a": cluster("a")},
        xds.ENDPOINT: {"a": cla("a", 1000)},
        xds.ROUTE: {"svc": route_table("svc", "a")},
    })
    async with Harness(cache) as h:
        call = h.stub.StreamAggregatedResources()
        # Subscribe to everything at once, routes first, as an impatient client might.
        await call.write(sotw(xds.ROUTE, names=["svc"], node_=node("gw")))
        await call.write(sotw(xds.CLUSTER))
        cds = await read(call)
        assert cds.type_url == xds.CLUSTER
        await call.write(sotw(xds.CLUSTER, nonce=cds.nonce, version=cds.version_info))
        await call.write(sotw(xds.ENDPOINT, names=["a"]))
        eds = await read(call)
        assert eds.type_url == xds.ENDPOINT
        await call.write(sotw(xds.ENDPOINT, names=["a"], nonce=eds.nonce, version=eds.version_info))
        rds = await read(call)
        assert rds.type_url == xds.ROUTE

        # Now a change that adds cluster b and routes to it: CDS first, then EDS for b, then routes.
        await call.write(sotw(xds.ROUTE, names=["svc"], nonce=rds.nonce, version=rds.version_info))
        cache.update({
            xds.CLUSTER: {"b": cluster("b")},
            xds.ENDPOINT: {"b": cla("b", 1001)},
            xds.ROUTE: {"svc": route_table("svc", "a", "b")},
        })
        cds = await read(call)
        assert cds.type_url == xds.CLUSTER
        await call.write(sotw(xds.CLUSTER, nonce=cds.nonce, version=cds.version_info))
        await call.write(sotw(xds.ENDPOINT, names=["a", "b"], nonce=eds.nonce, version=eds.version_info))
        eds = await read(call)
        assert eds.type_url == xds.ENDPOINT and names_of(eds) == ["b"]  # only what changed
        await call.write(sotw(xds.ENDPOINT, names=["a", "b"], nonce=eds.nonce, version=eds.version_info))
        rds = await read(call)
        assert rds.type_url == xds.ROUTE
        call.cancel()


async def test_reconnect_with_current_version_gets_no_resend():
    cache = SnapshotCache()
    cache.update({xds.CLUSTER: {"a": cluster("a")}, xds.ENDPOINT: {"a": cla("a", 1000)}})
    async with Harness(cache) as h:
        call = h.stub.StreamAggregatedResources()
        await call.write(sotw(xds.CLUSTER, node_=node("gw")))
        first = await read(call)
        await call.write(sotw(xds.CLUSTER, nonce=first.nonce, version=first.version_info))
        call.cancel()

        again = h.stub.StreamAggregatedResources()
        await again.write(sotw(xds.CLUSTER, version=first.version_info, node_=node("gw")))
        await again.write(sotw(xds.ENDPOINT, names=["a"]))
        response = await read(again)
        assert response.type_url == xds.ENDPOINT  # CDS was current: nothing re-sent for it
        again.cancel()


async def test_delta_subscribe_unsubscribe_and_removals():
    cache = SnapshotCache()
    cache.update({xds.ENDPOINT: {"a": cla("a", 1000), "b": cla("b", 1001)}})
    async with Harness(cache) as h:
        call = h.stub.DeltaAggregatedResources()
        await call.write(delta(xds.ENDPOINT, subscribe=["a", "b"], node_=node("gw")))
        first = await read(call)
        assert sorted(r.name for r in first.resources) == ["a", "b"]
        assert all(r.version for r in first.resources)
        await call.write(delta(xds.ENDPOINT, nonce=first.nonce))

        await call.write(delta(xds.ENDPOINT, unsubscribe=["b"]))
        (stream,) = h.gateways.streams
        await wait_until(lambda: "b" not in stream.types[xds.ENDPOINT].subscribed, READ_TIMEOUT, "the unsubscribe")
        cache.update({xds.ENDPOINT: {"a": None, "b": None}})
        removed = await read(call)
        assert list(removed.removed_resources) == ["a"]  # b was unsubscribed: not the client's business
        assert not removed.resources

        # A subscription with a stale nonce is still honoured in delta.
        await call.write(delta(xds.ENDPOINT, subscribe=["c"], nonce=first.nonce))
        await call.write(delta(xds.ENDPOINT, nonce=removed.nonce))
        cache.update({xds.ENDPOINT: {"c": cla("c", 1002)}})
        added = await read(call)
        assert [r.name for r in added.resources] == ["c"]
        call.cancel()


async def test_delta_wildcard_and_initial_versions():
    cache = SnapshotCache()
    cache.update({xds.CLUSTER: {"a": cluster("a"), "b": cluster("b")}})
    version_a = cache.group("default").stores[xds.CLUSTER].entries["a"].version
    async with Harness(cache) as h:
        call = h.stub.DeltaAggregatedResources()
        await call.write(delta(xds.CLUSTER, initial={"a": version_a, "gone": "v0"}, node_=node("gw")))
        first = await read(call)
        assert [r.name for r in first.resources] == ["b"]  # a is already current on the client
        assert list(first.removed_resources) == ["gone"]
        await call.write(delta(xds.CLUSTER, nonce=first.nonce, error="rejected b"))
        cache.update({xds.CLUSTER: {"c": cluster("c")}})
        second = await read(call)
        assert [r.name for r in second.resources] == ["c"]  # the NACKed b is not resent
        assert h.gateways.status()[0]["last_nack"]["message"] == "rejected b"
        call.cancel()


async def test_two_groups_get_their_own_snapshots():
    cache = SnapshotCache()
    cache.update({xds.LISTENER: {xds.LISTENER_NAME: xds.listener("127.0.0.1", 8080)}})  # each moved to its address
    async with Harness(cache) as h:
        one = h.stub.StreamAggregatedResources()
        two = h.stub.StreamAggregatedResources()
        await one.write(sotw(xds.LISTENER, node_=node("gw-1", "edge", "127.0.0.1:18081")))
        await two.write(sotw(xds.LISTENER, node_=node("gw-2", "internal", "127.0.0.1:18082")))
        from envoy.config.listener.v3 import listener_pb2

        def port_of(response):
            message = listener_pb2.Listener()
            message.ParseFromString(response.resources[0].value)
            return message.address.socket_address.port_value

        r1, r2 = await read(one), await read(two)
        assert (port_of(r1), port_of(r2)) == (18081, 18082)
        await one.write(sotw(xds.CLUSTER))
        await two.write(sotw(xds.CLUSTER))
        empty1, empty2 = await read(one), await read(two)  # a wildcard subscriber always gets a first answer
        assert empty1.type_url == xds.CLUSTER and not empty1.resources and not empty2.resources
        await one.write(sotw(xds.CLUSTER, nonce=empty1.nonce, version=empty1.version_info))
        await two.write(sotw(xds.CLUSTER, nonce=empty2.nonce, version=empty2.version_info))
        cache.update({xds.CLUSTER: {"only-edge": cluster("only-edge")}}, ["edge@127.0.0.1:18081"])
        cache.update({xds.CLUSTER: {"everyone": cluster("everyone")}})
        got1, got2 = await read(one), await read(two)
        assert names_of(got1) == ["everyone", "only-edge"]
        assert names_of(got2) == ["everyone"]
        groups = {g["node"]: g["group"] for g in h.gateways.status()}
        assert groups == {"gw-1": "edge", "gw-2": "internal"}
        one.cancel()
        two.cancel()


async def test_delta_explicit_wildcard_for_routes_and_endpoints():
    """"*" subscribes to every name of any type (what a follower replica asks); an empty first subscription
    stays a wildcard only for LDS, CDS and SRDS."""
    cache = SnapshotCache()
    cache.update({
        xds.CLUSTER: {"a": cluster("a")},  # the route table names it
        xds.ENDPOINT: {"a": cla("a", 1000), "b": cla("b", 1001)},
        xds.ROUTE: {"svc": route_table("svc", "a")},
    })
    async with Harness(cache) as h:
        call = h.stub.DeltaAggregatedResources()
        await call.write(delta(xds.CLUSTER, subscribe=["*"], node_=node("replica")))
        cds = await read(call)
        await call.write(delta(xds.CLUSTER, nonce=cds.nonce))  # routes wait for the clusters they name
        await call.write(delta(xds.ENDPOINT, subscribe=["*"]))
        eds = await read(call)
        assert sorted(r.name for r in eds.resources) == ["a", "b"]
        await call.write(delta(xds.ENDPOINT, nonce=eds.nonce))
        await call.write(delta(xds.ROUTE, subscribe=["*"]))
        rds = await read(call)
        assert [r.name for r in rds.resources] == ["svc"]
        await call.write(delta(xds.ROUTE, nonce=rds.nonce))
        await wait_until(lambda: h.gateways.all_in_sync(1), 5, "the route table ACKed")  # else "a" waits for it

        cache.update({xds.ENDPOINT: {"a": None, "c": cla("c", 1002)}})
        changed = await read(call)
        assert [r.name for r in changed.resources] == ["c"] and list(changed.removed_resources) == ["a"]
        await call.write(delta(xds.ENDPOINT, nonce=changed.nonce))

        # Leaving the wildcard drops what it brought; naming one of those again sends it again.
        await call.write(delta(xds.ENDPOINT, unsubscribe=["*"]))
        await call.write(delta(xds.ENDPOINT, subscribe=["b"]))
        again = await read(call)
        assert [r.name for r in again.resources] == ["b"]
        call.cancel()

        named = h.stub.DeltaAggregatedResources()
        await named.write(delta(xds.ENDPOINT, node_=node("gw")))
        await named.write(delta(xds.CLUSTER))
        first = await read(named)
        assert first.type_url == xds.CLUSTER  # EDS with no names is no wildcard: nothing to answer
        stream = next(s for s in h.gateways.streams if s.node_id == "gw")
        assert not stream.types[xds.ENDPOINT].wildcard and stream.types[xds.CLUSTER].wildcard
        named.cancel()


async def test_a_reconnecting_gateway_drops_a_cluster_only_once_its_routes_no_longer_name_it():
    """Delta, a gateway that held another control plane's state (a ferry that restarted): its old route table names
    cluster `old`, which this cache does not have. `old` is removed only after the new route table is ACKed, never
    before: a route naming a missing cluster answers 503."""
    cache = SnapshotCache()
    cache.update({xds.CLUSTER: {"new": cluster("new")}, xds.ENDPOINT: {"new": cla("new", 1000)},
                  xds.ROUTE: {"svc": route_table("svc", "new")}})
    ready = asyncio.Event()  # as after a restart: the gateway's resubscriptions are all in before any answer
    async with Harness(cache, ready) as h:
        call = h.stub.DeltaAggregatedResources()
        await call.write(delta(xds.CLUSTER, initial={"old": "v0"}, node_=node("gw")))
        await call.write(delta(xds.ENDPOINT, subscribe=["old", "new"], initial={"old": "v0"}))
        await call.write(delta(xds.ROUTE, subscribe=["svc"], initial={"svc": "v0"}))
        await wait_until(lambda: h.gateways.streams and next(iter(h.gateways.streams)).types[xds.ROUTE].requested, 5,
                         "the three subscriptions")
        ready.set()
        cds = await read(call)
        assert [r.name for r in cds.resources] == ["new"] and not cds.removed_resources
        await call.write(delta(xds.CLUSTER, nonce=cds.nonce))
        eds = await read(call)
        assert [r.name for r in eds.resources] == ["new"] and not eds.removed_resources
        await call.write(delta(xds.ENDPOINT, nonce=eds.nonce))
        rds = await read(call)
        assert rds.type_url == xds.ROUTE and [r.name for r in rds.resources] == ["svc"]
        stream = next(iter(h.gateways.streams))
        assert not stream.in_sync()  # the removals are still owed
        await call.write(delta(xds.ROUTE, nonce=rds.nonce))
        removals = {(r.type_url, tuple(r.removed_resources)) for r in (await read(call), await read(call))}
        assert removals == {(xds.CLUSTER, ("old",)), (xds.ENDPOINT, ("old",))}
        call.cancel()


async def test_a_large_delta_change_goes_out_in_parts_each_after_the_last_is_acked(monkeypatch):
    """Memory: a Delta response carries at most MAX_RESPONSE_BYTES of resources; the rest follows once the part
    before is ACKed, and route tables still wait until every cluster (all parts) is ACKed with its endpoints."""
    from ferry.xds import stream as stream_module

    names = [f"c{i}" for i in range(10)]
    clusters = {n: cluster(n) for n in names}
    monkeypatch.setattr(stream_module, "MAX_RESPONSE_BYTES", 3 * len(clusters["c0"].body))
    cache = SnapshotCache()
    cache.update({xds.CLUSTER: clusters, xds.ENDPOINT: {n: cla(n, 1000 + i) for i, n in enumerate(names)},
                  xds.ROUTE: {"svc": route_table("svc", *names)}})
    async with Harness(cache) as h:
        call = h.stub.DeltaAggregatedResources()
        await call.write(delta(xds.CLUSTER, node_=node("gw")))
        await call.write(delta(xds.ENDPOINT, subscribe=names))
        await call.write(delta(xds.ROUTE, subscribe=["svc"]))
        got: dict[str, list[str]] = {xds.CLUSTER: [], xds.ENDPOINT: []}
        parts = 0
        while True:
            response = await read(call)
            assert response.type_url != xds.ROUTE or sorted(got[xds.CLUSTER]) == sorted(names), \
                "a route table went out before all its clusters"
            if response.type_url == xds.ROUTE:
                break
            part = [r.name for r in response.resources]
            assert part and (response.type_url != xds.CLUSTER or len(part) <= 3)
            parts += response.type_url == xds.CLUSTER
            # each cluster once (endpoints are sent again after their cluster: a new cluster warms only on EDS)
            assert response.type_url != xds.CLUSTER or not set(part) & set(got[xds.CLUSTER])
            got[response.type_url] += part
            await call.write(delta(response.type_url, nonce=response.nonce))
        assert sorted(got[xds.CLUSTER]) == sorted(names) and set(got[xds.ENDPOINT]) == set(names)
        assert parts >= 4  # 10 clusters, at most 3 a part
        assert [r.name for r in response.resources] == ["svc"]
        await call.write(delta(xds.ROUTE, nonce=response.nonce))
        assert await h.gateways.wait_in_sync(READ_TIMEOUT, 1)
        call.cancel()
