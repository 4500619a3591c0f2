"""Follower replicas: an in-process leader (cache + ADS server), a follower mirroring it, real Envoy behind it."""

from __future__ import annotations

import asyncio
import statistics
import time
from functools import partial

import aiohttp
import grpc
import pytest
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc

from ferry.envoy.bootstrap import BootstrapOptions
from ferry.envoy.process import EnvoyProcess
from ferry.xds import resources as xds
from ferry.xds.cache import SnapshotCache
from ferry.xds.mirror import decode
from ferry.xds.types import Resource

from .helpers import free_port, wait_until
from .xds_client import cla as endpoints
from .xds_client import (
    MIRROR_TIMEOUT,
    Follower,
    Leader,
    contents,
    delta,
    gateway_listener,
    merged,
    node,
    read,
    removal,
    service,
)

pytestmark = pytest.mark.timeout(120)

TIMEOUT = MIRROR_TIMEOUT


# -- mirroring ---------------------------------------------------------------------------------------------


async def test_follower_mirrors_the_leader_and_drops_stale_state():
    leader = await Leader().start()
    try:
        state = merged(gateway_listener(8080), service("one", 9001), service("two", 9002, ("r1", "r2")))
        leader.cache.update(state)
        async with Follower(leader.address) as follower:
            # What an earlier leader left behind must not survive the first full sync.
            stale = merged(service("gone", 9009), gateway_listener(7070))
            follower.cache.update(stale)
            await asyncio.wait_for(follower.mirror.synced.wait(), TIMEOUT)
            assert contents(follower.cache) == contents(leader.cache)
            follower_group = follower.cache.group(SnapshotCache.DEFAULT)
            assert follower_group.versions() == leader.cache.group(SnapshotCache.DEFAULT).versions()
            status = follower.mirror.status()
            assert status["connected"] and status["synced"] and status["in_sync"]
            assert status["upstream"] == leader.address
            assert status["resources"] == {"CDS": 3, "EDS": 3, "SDS": 0, "LDS": 1, "SRDS": 2, "RDS": 2}
            (replica,) = leader.gateways.streams
            assert replica.node.metadata["ferry.replica"] == "true" and replica.node.group == "default"

            leader.cache.update(service("three", 9003))
            leader.cache.update({xds.ENDPOINT: {"one/r1": endpoints("one/r1", 9101)}})
            leader.cache.update(removal(service("two", 9002, ("r1", "r2"))))
            await follower.mirrors(leader)
            assert "two" not in follower_group.stores[xds.ROUTE].entries
            assert follower.mirror.status()["last_error"] is None
    finally:
        await leader.stop()


async def test_follower_keeps_serving_while_the_leader_is_away_and_converges_on_a_new_one():
    old = await Leader().start()
    new = Leader()
    try:
        old.cache.update(merged(gateway_listener(8080), service("one", 9001), service("two", 9002)))
        async with Follower(None) as follower:
            await wait_until(lambda: follower.mirror.status()["upstream"] is None, TIMEOUT, "the mirror to start")
            follower.point_at(old.address)  # the leader becomes known
            await asyncio.wait_for(follower.mirror.synced.wait(), TIMEOUT)

            # A gateway with its own listen address has its own group and listener, which no sync touches.
            own_group = "default@127.0.0.1:7001"
            follower.cache.group_of("default", {"ferry.listen": "127.0.0.1:7001"})
            own_listener = xds.listener("127.0.0.1", 7001).body

            await old.stop()
            await wait_until(lambda: not follower.mirror.status()["connected"], TIMEOUT, "the follower to notice")
            await wait_until(lambda: follower.mirror.status()["reconnects"] >= 3, TIMEOUT, "retries while it is away")
            assert contents(follower.cache) == contents(old.cache)  # nothing cleared on disconnect
            status = follower.mirror.status()
            assert follower.mirror.synced.is_set() and status["synced"] and not status["in_sync"]
            # A gateway that connects now still gets the last config.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{follower.port}") as channel:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
                await call.write(delta(xds.CLUSTER, node_=node("late-gateway")))
                assert sorted(r.name for r in (await read(call)).resources) == ["one/r1", "two/r1"]
                call.cancel()

            # The same leader back on the same port: found by the retry loop alone.
            old.cache.update(service("three", 9003))
            await old.start()
            await follower.mirrors(old)

            # A new leader elsewhere, with other content: the follower moves at once and drops the old state.
            new.cache.update(merged(gateway_listener(8080), service("two", 9202), service("four", 9004)))
            await new.start()
            follower.point_at(new.address)
            await follower.mirrors(new)
            status = follower.mirror.status()
            assert status["upstream"] == new.address and status["in_sync"] and status["reconnects"] >= 4
            assert "UNAVAILABLE" in status["last_error"]
            own = contents(follower.cache, own_group)
            assert own.pop(xds.LISTENER) == {xds.LISTENER_NAME: own_listener}
            assert own == {t: e for t, e in contents(new.cache).items() if t != xds.LISTENER}
    finally:
        await old.stop()
        await new.stop()


async def test_follower_rejects_what_it_cannot_parse():
    leader = await Leader().start()
    try:
        leader.cache.update(merged(gateway_listener(8080), service("one", 9001)))
        async with Follower(leader.address) as follower:
            await asyncio.wait_for(follower.mirror.synced.wait(), TIMEOUT)
            leader.cache.update({xds.CLUSTER: {"bad": Resource.of("bad", b"\xff\xff\xff")}})
            await wait_until(lambda: leader.gateways.status()[0]["last_nack"], TIMEOUT, "the follower's NACK")
            assert "bad" not in follower.cache.group(SnapshotCache.DEFAULT).stores[xds.CLUSTER].entries
            assert "cannot be parsed" in follower.mirror.status()["last_error"]
            # The next version is taken again.
            leader.cache.update({xds.CLUSTER: {"bad": None}})
            leader.cache.update(service("two", 9002))
            await follower.mirrors(leader)
            assert leader.gateways.status()[0]["last_nack"] is None
    finally:
        await leader.stop()


def test_a_follower_reads_the_references_the_leader_set():
    """Every route shape resources.py builds (single, split, sticky split, tag routes, tag hosts): the clusters
    the builder says a route table names (the targets of its HostRoutes) are what a follower decodes from it; a
    host scope names its route table; a cluster names nothing."""
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2

    def decoded(type_url: str, resource: Resource) -> Resource:
        response = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, resources=[discovery_pb2.Resource(
            name=resource.name, resource=any_pb2.Any(type_url=type_url, value=resource.body))])
        return decode(response)[resource.name]

    weights = (("r1", 80), ("r2", 20), ("r3", 100))
    r1, r2, r3 = (xds.WeightedTarget(xds.cluster_name("svc", r), r, w) for r, w in weights)
    shapes = {
        "single": (xds.HostRoute("svc", "svc", ("svc.test",), (r1,), 30),),
        "split": (xds.HostRoute("svc", "svc", ("svc.test",), (r1, r2), 30),),
        "sticky": (xds.HostRoute("svc", "svc", ("svc.test",), (r1, r2), 30, sticky_cookie="ferry-rollout-svc"),),
        "tagged": (
            xds.HostRoute("svc", "svc", ("svc.test",), (r1, r2), 30, tagged=(("canary", r3),), sticky_cookie="c"),
            xds.HostRoute("svc/tag/canary", "svc", ("canary-svc.test",), (r3,), 30),
        ),
    }
    for shape, routes in shapes.items():
        table = xds.route_table("svc", routes)
        expected = frozenset(t.cluster for r in routes for t in r.targets)
        assert table.refs == expected, shape
        assert decoded(xds.ROUTE, table) == table, shape
    scope = xds.host_scope("svc.test", "svc")
    assert scope.refs == {"svc"} and decoded(xds.SCOPED_ROUTE, scope) == scope
    assert decoded(xds.CLUSTER, xds.cluster("svc/r1")).refs == frozenset()


# -- real Envoy behind a follower ---------------------------------------------------------------------------


async def start_backend(answer: str) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=answer)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def answers(session: aiohttp.ClientSession, port: int, host: str, expected: str) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/", headers={"Host": host}) as response:
            return response.status == 200 and await response.text() == expected
    except aiohttp.ClientError:
        return False


async def test_envoy_served_by_a_follower_follows_the_leader(tmp_path):
    runners: list[web.AppRunner] = []
    envoys: list[EnvoyProcess] = []
    leader = await Leader().start()
    try:
        for answer in ("blue", "green"):
            runner, port = await start_backend(answer)
            runners.append(runner)
        blue, green = (r.addresses[0][1] for r in runners)
        gateway_port, own_port = free_port(), free_port()
        leader.cache.update(merged(gateway_listener(gateway_port), service("web", blue)))
        async with Follower(leader.address) as follower:
            await asyncio.wait_for(follower.mirror.synced.wait(), TIMEOUT)
            for options in (
                BootstrapOptions("gw-shared", xds_port=follower.port, admin_port=free_port()),
                BootstrapOptions("gw-own", xds_port=follower.port, admin_port=free_port(),
                                 listen=f"127.0.0.1:{own_port}"),
            ):
                envoy = EnvoyProcess(options, tmp_path)
                envoys.append(envoy)
                await envoy.start()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                for port in (gateway_port, own_port):
                    await wait_until(partial(answers, session, port, "web.test", "blue"), 30, f"{port}: blue")
                assert not await answers(session, gateway_port, "nobody.test", "blue")

                # An endpoint change on the leader reaches both gateways through the follower.
                leader.cache.update({xds.ENDPOINT: {"web/r1": endpoints("web/r1", green)}})
                for port in (gateway_port, own_port):
                    await wait_until(partial(answers, session, port, "web.test", "green"), TIMEOUT, f"{port}: green")
            assert [g.name for g in follower.cache.groups()] == ["default", f"default@127.0.0.1:{own_port}"]
            own_group = follower.cache.group(f"default@127.0.0.1:{own_port}")
            assert own_group.stores[xds.LISTENER].entries[xds.LISTENER_NAME] == xds.listener("127.0.0.1", own_port)
            assert await follower.gateways.wait_in_sync(TIMEOUT, 2)
    finally:
        for envoy in envoys:
            await envoy.stop()
        for runner in runners:
            await runner.cleanup()
        await leader.stop()


# -- one change at a time -----------------------------------------------------------------------------------


class _Changed:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    def resources_changed(self, changed) -> None:
        self.event.set()


async def test_every_change_reaches_the_follower_in_turn():
    """Fifty endpoint changes, each waited for: each arrives whole (the follower never holds one that the leader
    did not publish), and the follower ends equal to the leader. The time each took is printed (the hop's cost
    is measured by bench/kube.py, end to end)."""
    leader = await Leader().start()
    try:
        leader.cache.update(merged(gateway_listener(8080), service("probe", 9001)))
        async with Follower(leader.address) as follower:
            await asyncio.wait_for(follower.mirror.synced.wait(), TIMEOUT)
            watcher = _Changed()
            group = follower.cache.group(SnapshotCache.DEFAULT)
            group.watchers.add(watcher)
            published = {endpoints("probe/r1", port).version for port in range(20_000, 20_050)}
            took = []
            for port in range(20_000, 20_050):
                resource = endpoints("probe/r1", port)
                watcher.event.clear()
                start = time.perf_counter()
                leader.cache.update({xds.ENDPOINT: {"probe/r1": resource}})
                while (held := group.stores[xds.ENDPOINT].entries["probe/r1"]) != resource:
                    assert held.version in published or held == endpoints("probe/r1", 9001)
                    await asyncio.wait_for(watcher.event.wait(), TIMEOUT)
                    watcher.event.clear()
                took.append(time.perf_counter() - start)
            assert contents(follower.cache) == contents(leader.cache)
        ms = sorted(t * 1000 for t in took)
        print(f"\nleader -> follower cache: median {statistics.median(ms):.2f} ms, "
              f"p90 {ms[int(len(ms) * 0.9)]:.2f} ms, max {ms[-1]:.2f} ms over {len(ms)} changes")
    finally:
        await leader.stop()
