"""A follower becoming leader: the controller takes over the cache the follower's mirror filled, keeps each
gateway group's own listener, and drops only what the old leader published and it does not. And the
follower's API: forwarded to the leader, or a clear 503 when no leader is known."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from ferry.backends.local import LocalProcessBackend
from ferry.reconcile.census import GatewayCensus
from ferry.reconcile.config import ConfigSource
from ferry.reconcile.controller import Controller
from ferry.replicas import API_ANNOTATION, Follower
from ferry.routing.loader import load_routes
from ferry.routing.revisions import RevisionStore
from ferry.xds import resources as xds
from ferry.xds.cache import SnapshotCache
from ferry.xds.server import GatewayRegistry

from .helpers import free_port, wait_until
from .reconcile_fakes import FakeActivator

ROUTES = """\
gateway: {listen: 127.0.0.1:8080, domain: localhost}
services:
  hello:
    template:
      endpoints: [127.0.0.1:9001]
"""


def names(cache: SnapshotCache, type_url: str, group: str = SnapshotCache.DEFAULT) -> set[str]:
    return set(cache.group(group).stores[type_url].entries)


async def test_a_new_leader_keeps_the_mirrored_state_it_agrees_with_and_drops_the_rest(tmp_path: Path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    cache = SnapshotCache()
    # What the follower mirrored from the old leader: a cluster only the old leader had (a revision it retired)
    # and a gateway group with its own listen address.
    cache.update({xds.CLUSTER: {"gone": xds.cluster("gone")},
                  xds.LISTENER: {xds.LISTENER_NAME: xds.listener("127.0.0.1", 8080)}})
    own = "edge@127.0.0.1:7070"
    cache.group(own)
    own_listener = xds.listener("127.0.0.1", 7070)
    assert cache.group(own).stores[xds.LISTENER].entries[xds.LISTENER_NAME] == own_listener

    store = RevisionStore(tmp_path / "state.db")
    controller = Controller(
        store, lambda on_endpoints, drain: LocalProcessBackend(on_endpoints, drain=drain, log_dir=tmp_path),
        cache, GatewayCensus(GatewayRegistry()), activator=FakeActivator(), cluster_linger_s=0.05,
    )
    try:
        await controller.start()
        await ConfigSource(routes, store, controller.apply, CollectorRegistry()).apply(loaded=load_routes(routes))
        mine = names(cache, xds.CLUSTER) - {"gone"}
        assert mine and "gone" in names(cache, xds.CLUSTER)  # kept through the first apply: it may be in use
        assert cache.group(own).stores[xds.LISTENER].entries[xds.LISTENER_NAME] == own_listener

        controller.drop_inherited_later()
        await wait_until(lambda: "gone" not in names(cache, xds.CLUSTER), 5, "the inherited cluster dropped")
        assert names(cache, xds.CLUSTER) == mine and "gone" not in names(cache, xds.CLUSTER, own)
        assert names(cache, xds.ROUTE) and names(cache, xds.ENDPOINT) == mine
        assert cache.group(own).stores[xds.LISTENER].entries[xds.LISTENER_NAME] == own_listener
    finally:
        await controller.aclose()
        store.close()


class FakeElector:
    identity = "replica-b"

    def __init__(self, leader: str | None, annotations: dict[str, str]):
        self.leader = leader
        self.leader_annotations = annotations


async def test_a_follower_forwards_the_api_to_the_leader_and_says_when_there_is_none():
    leader_api = web.Application()

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"from": "leader", "query": request.query_string})

    leader_api.router.add_get("/status", status)
    runner = web.AppRunner(leader_api)
    await runner.setup()
    leader_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", leader_port).start()

    elector = FakeElector("replica-a", {API_ANNOTATION: f"127.0.0.1:{leader_port}"})
    follower = Follower(elector, SnapshotCache(), GatewayRegistry())
    follower._session = aiohttp.ClientSession()  # run() makes it; the middleware alone is under test
    api = web.Application(middlewares=[follower.forward])
    async def local(request: web.Request) -> web.Response:
        return web.json_response({"local": True} if request.path == "/replica" else {"from": "follower"})

    api.router.add_get("/replica", local)
    api.router.add_get("/status", local)
    api_runner = web.AppRunner(api)
    await api_runner.setup()
    port = free_port()
    await web.TCPSite(api_runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/status?service=hello") as response:
                assert response.status == 200 and response.headers["X-Ferry-Leader"] == "replica-a"
                assert await response.json() == {"from": "leader", "query": "service=hello"}
            async with session.get(f"http://127.0.0.1:{port}/replica") as response:
                assert await response.json() == {"local": True}

            elector.leader, elector.leader_annotations = None, {}  # the lease lapsed
            async with session.get(f"http://127.0.0.1:{port}/status") as response:
                assert response.status == 503 and "none holds the lease" in (await response.json())["error"]

            elector.leader = "replica-b"  # this replica is about to lead: answer for itself
            follower.following = False
            async with session.get(f"http://127.0.0.1:{port}/status") as response:
                assert await response.json() == {"from": "follower"}
    finally:
        await follower._session.close()
        await api_runner.cleanup()
        await runner.cleanup()
