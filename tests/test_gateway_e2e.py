"""End to end: `ferry up` as a subprocess, a real Envoy, real app processes, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import aiohttp
import pytest

from ferry.envoy.admin import EnvoyAdmin
from ferry.envoy.bootstrap import BootstrapOptions
from ferry.envoy.process import EnvoyProcess

from . import ferry_process
from .ferry_process import HELLO_APP, FerryProcess, get, update_counts
from .helpers import free_port, wait_until
from .load import Load, count_revisions

pytestmark = pytest.mark.timeout(240)


def hello(message: str, traffic: str = "", **env) -> str:
    return ferry_process.hello(message, extra=(traffic,), **env)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_hello_answers_from_its_revision(ferry, delta):
    f = ferry(delta=delta)
    f.write_routes(hello("v1"))
    await f.start()
    status = await f.wait_converged()
    assert status["services"]["hello"]["latest_ready"] == "hello-00001"
    assert status["revisions"]["hello-00001"]["ready"] == 1
    gateway = status["gateways"][0]
    assert gateway["protocol"] == ("delta" if delta else "sotw")
    assert set(gateway["acked"]) == {"CDS", "EDS", "LDS", "SRDS", "RDS"}
    async with aiohttp.ClientSession() as session:
        assert await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")
        assert await get(session, f.gateway, f"hello.localhost:{f.gateway_port}") == (200, "hello-00001")
        assert (await get(session, f.gateway, "nobody.localhost"))[0] == 404
        async with session.get(f"{f.api}/metrics") as response:
            metrics = await response.text()
    assert "ferry_xds_connected_gateways 1.0" in metrics
    for kind in ("CDS", "EDS", "LDS", "SRDS", "RDS"):
        assert f'ferry_xds_acks_total{{type="{kind}"}}' in metrics and f'ferry_xds_pushes_total{{type="{kind}"}}' in metrics
    assert "ferry_xds_nacks_total{" not in metrics  # a labelled series appears with its first NACK
    assert 'ferry_xds_push_latency_seconds_count{type="RDS"}' in metrics


async def test_split_90_10_and_tag_url(ferry):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    f.write_routes(
        hello(
            "v2",
            """
      traffic:
        - revision: hello-00001
          percent: 90
        - latestRevision: true
          percent: 10
          tag: canary
    """,
        )
    )
    await wait_until(lambda: _traffic_is(f, {"hello-00001": 90, "hello-00002": 10}), 30, "the 90/10 split")
    await f.wait_converged()
    counts = await count_revisions(f.gateway, "hello.localhost", 2000)
    assert sum(counts.values()) == 2000 and set(counts) <= {"hello-00001", "hello-00002"}, counts
    share = counts["hello-00001"] / 2000 * 100
    assert 87 <= share <= 93, counts
    tagged = await count_revisions(f.gateway, "canary-hello.localhost", 200)
    assert tagged == {"hello-00002": 200}
    async with aiohttp.ClientSession() as session:
        for host, revisions in (("hello.localhost", {"hello-00001", "hello-00002"}), ("canary-hello.localhost", {"hello-00002"})):
            async with session.get(f"{f.gateway}/headers", headers={"Host": host}) as response:
                seen = await response.json()
            # Each split names its revision to the app (and, later, to the activator).
            assert seen["ferry-revision"] in revisions and seen["ferry-service"] == "hello"
            assert seen["ferry-revision"] == response.headers["x-revision"]
            # (Envoy appends its own address to x-forwarded-for when the client is on loopback.)
            assert seen["x-forwarded-for"] and seen["x-forwarded-proto"] == "http"
            assert seen["forwarded"] == "for=127.0.0.1;proto=http"
    status = await f.status()
    assert {"revision": "hello-00002", "tag": "canary", "url": f"http://canary-hello.localhost:{f.gateway_port}"} in status["services"]["hello"]["traffic"]


async def _traffic_is(f: FerryProcess, expected: dict[str, int]) -> bool:
    status = await f.status()
    got = {t["revision"]: t["percent"] for t in status["services"]["hello"]["traffic"] if "percent" in t}
    return got == expected


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_blue_green_switch_under_load_has_zero_errors(ferry, delta):
    f = ferry(delta=delta)
    f.write_routes(hello("blue"))
    await f.start()
    await f.wait_converged()
    async with Load(f.gateway, "hello.localhost", concurrency=8) as load:
        await load.wait_for(300)
        f.write_routes(hello("green", STARTUP_DELAY="0.3"))
        await wait_until(lambda: _traffic_is(f, {"hello-00002": 100}), 30, "traffic on green")
        # Until blue has been drained, stopped and its cluster removed from the gateway.
        await wait_until(lambda: _revision_gone(f, "hello-00001"), 30, "blue to be retired")
        await f.wait_converged()
        await load.wait_for(300)
    assert load.failures == 0, (load.statuses, load.errors, load.bad)
    assert load.revisions["hello-00001"] > 0 and load.revisions["hello-00002"] > 0


async def _revision_gone(f: FerryProcess, revision: str) -> bool:
    return revision not in (await f.status())["revisions"]


async def test_rejected_config_is_reported_not_resent_and_old_config_keeps_serving(ferry):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    admin = EnvoyAdmin("127.0.0.1", f.admin_port)
    assert (await f.post("/debug/poison-routes"))[0] == 200

    async def nack_reported() -> dict | None:
        gateways = (await f.status())["gateways"]
        return gateways[0]["last_nack"]

    nack = await wait_until(nack_reported, 20, "the NACK in status")
    assert nack["type"] == "RDS"
    assert "domain" in nack["message"].lower(), nack  # Envoy's own words about the duplicate domain
    assert not (await f.status())["gateways"][0]["in_sync"]
    async with aiohttp.ClientSession() as session:
        assert await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")

    # A good change is accepted; the rejected table was never sent again in between.
    f.write_routes(hello("v1", "traffic: [{revision: hello-00001, percent: 100, tag: pinned}]"))
    await f.wait_converged()
    stats = await admin.get("/stats?filter=rds\\.hello\\.update_rejected")
    assert b"update_rejected: 1" in stats[1], stats
    assert (await f.status())["gateways"][0]["last_nack"] is None
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{f.api}/metrics") as response:
            assert 'ferry_xds_nacks_total{type="RDS"} 1.0' in await response.text()
    async with aiohttp.ClientSession() as session:
        assert await get(session, f.gateway, "pinned-hello.localhost") == (200, "hello-00001")


@pytest.fixture
def apps():
    """Example app processes that ferry does not manage (template.endpoints)."""
    started: list[subprocess.Popen] = []

    def start(revision: str) -> int:
        port = free_port()
        env = {**os.environ, "PORT": str(port), "K_REVISION": revision, "MESSAGE": revision}
        started.append(subprocess.Popen([sys.executable, str(HELLO_APP)], env=env, stdout=subprocess.DEVNULL))
        return port

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def endpoints_service(name: str, port: int) -> str:
    return f"""
    {name}:
      template:
        name: {name}-at-{port}
        endpoints: [127.0.0.1:{port}]
    """


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "sotw"])
async def test_killing_ferry_under_load_keeps_envoy_serving_and_resync_changes_nothing(ferry, apps, tmp_path, delta):
    blue, green = apps("blue"), apps("green")
    f = ferry(envoy=False)
    f.write_routes(endpoints_service("hello", blue))
    await f.start()
    await f.wait_converged(gateways=0)
    admin_port = free_port()
    envoy = EnvoyProcess(
        BootstrapOptions(node_id="edge-1", xds_port=f.xds_port, admin_port=admin_port, delta=delta, all_stats=True),
        tmp_path / "envoy",  # all its stats: the EDS update counters are per cluster
    )
    await envoy.start()
    try:
        await f.wait_converged(gateways=1)
        await wait_until(lambda: _answers(f.gateway, "hello.localhost", "blue"), 20, "the gateway")
        updates_before = await update_counts(envoy.admin)
        async with Load(f.gateway, "hello.localhost", concurrency=8) as load:
            await load.wait_for(200)
            await f.kill()
            await load.wait_for(500)  # served with no control plane at all
            await f.start()
            await f.wait_converged(gateways=1)
            await load.wait_for(300)
        assert load.failures == 0, (load.statuses, load.errors, load.bad)
        assert await update_counts(envoy.admin) == updates_before  # resync re-sent nothing
        status = await f.status()
        assert status["gateways"][0]["node"] == "edge-1" and status["gateways"][0]["in_sync"]

        # The resynced stream still carries changes.
        f.write_routes(endpoints_service("hello", green))
        await wait_until(lambda: _answers(f.gateway, "hello.localhost", "green"), 20, "the change")
    finally:
        await envoy.stop()


async def _answers(url: str, host: str, app: str) -> bool:
    async with aiohttp.ClientSession() as session:
        try:
            return await get(session, url, host) == (200, app)
        except aiohttp.ClientError:
            return False


async def test_gateways_in_other_groups_and_with_their_own_listeners(ferry, tmp_path):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    edge_port, neighbour_port = free_port(), free_port()
    gateways = [
        # Another group, speaking SotW while the local gateway speaks Delta.
        EnvoyProcess(BootstrapOptions(node_id="edge-2", group="edge", xds_port=f.xds_port, admin_port=free_port(),
                                      listen=f"127.0.0.1:{edge_port}", delta=False), tmp_path / "edge"),
        # The local gateway's own group, with its own listener (what the README's `ferry bootstrap --listen` does).
        EnvoyProcess(BootstrapOptions(node_id="neighbour", xds_port=f.xds_port, admin_port=free_port(),
                                      listen=f"127.0.0.1:{neighbour_port}"), tmp_path / "neighbour"),
    ]
    try:
        for gateway in gateways:
            await gateway.start()
        await f.wait_converged(gateways=3)
        async with aiohttp.ClientSession() as session:
            for port in (f.gateway_port, edge_port, neighbour_port):
                assert await get(session, f"http://127.0.0.1:{port}", "hello.localhost") == (200, "hello-00001")
        status = (await f.status())["gateways"]
        assert {g["node"]: g["group"] for g in status} == {"ferry-local": "default", "edge-2": "edge", "neighbour": "default"}
        listeners = {g["node"]: g["acked"]["LDS"] for g in status}
        assert len(set(listeners.values())) == 3, listeners  # three different listeners
    finally:
        for gateway in gateways:
            await gateway.stop()


async def test_bad_edit_is_reported_and_last_good_config_keeps_serving(ferry):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    f.write_routes(hello("v1", "traffic: [{revision: hello-00001, percent: 90}]"))

    async def error_reported() -> str | None:
        return (await f.status())["config"]["last_error"]

    error = await wait_until(error_reported, 20, "the error in status")
    assert "routes.yaml" in error and "services.hello.traffic" in error and "100" in error
    async with aiohttp.ClientSession() as session:
        assert await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")
    assert list((await f.status())["revisions"]) == ["hello-00001"]


async def test_a_revision_that_never_gets_ready_never_takes_traffic(ferry):
    f = ferry()
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    broken = hello("v2").replace(f"command: [{sys.executable}, {HELLO_APP}]", f"command: [{sys.executable}, -c, 'raise SystemExit(3)']")
    f.write_routes(broken)

    # latestRevision means the latest *ready* revision: hello-00002 exists, crashes, and gets no traffic.
    await wait_until(lambda: _revision_restarted(f, "hello-00002"), 30, "hello-00002 to crash and restart")
    status = await f.status()
    assert status["services"]["hello"]["latest_created"] == "hello-00002"
    assert status["services"]["hello"]["latest_ready"] == "hello-00001"
    counts = await count_revisions(f.gateway, "hello.localhost", 100)
    assert counts == {"hello-00001": 100}


async def _revision_restarted(f: FerryProcess, revision: str) -> bool:
    status = (await f.status())["revisions"].get(revision)
    return status is not None and status["ready"] == 0 and any(i["restarts"] >= 1 for i in status["instances"])


async def test_extra_hosts_and_removing_a_service(ferry):
    f = ferry()
    both = hello("v1").replace("hello:\n", "hello:\n      hosts: [hello.example.com]\n", 1) + """
    other:
      template:
        command: [%s, %s]
    """ % (sys.executable, HELLO_APP)
    f.write_routes(both)
    await f.start()
    await f.wait_converged()
    async with aiohttp.ClientSession() as session:
        assert await get(session, f.gateway, "hello.example.com") == (200, "hello-00001")
        assert await get(session, f.gateway, "other.localhost") == (200, "other-00001")
    # The host moves to a service that comes first in the file: its new scope must survive the old one's removal.
    other_first = """
    other:
      hosts: [hello.example.com]
      template:
        command: [%s, %s]
    """ % (sys.executable, HELLO_APP) + hello("v1")
    f.write_routes(other_first)
    await wait_until(lambda: _answers(f.gateway, "hello.example.com", "other-00001"), 30, "the host to move")
    await f.wait_converged()
    async with aiohttp.ClientSession() as session:
        assert await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")

    f.write_routes(hello("v1"))
    await wait_until(lambda: _revision_gone(f, "other-00001"), 30, "other's revision to be retired")
    async with aiohttp.ClientSession() as session:
        assert (await get(session, f.gateway, "other.localhost"))[0] == 404
        assert await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")
        assert (await get(session, f.gateway, "hello.example.com"))[0] == 404
    assert list((await f.status())["services"]) == ["hello"]


async def test_traffic_back_to_a_stopped_revision_waits_for_its_new_instances(ferry):
    f = ferry(extra=("--cluster-linger", "60"))  # keep blue's cluster while it has no instances
    f.write_routes(hello("blue"))
    await f.start()
    await f.wait_converged()
    f.write_routes(hello("green"))
    await wait_until(lambda: _stopped(f, "hello-00001"), 30, "blue stopped, its cluster lingering")
    async with Load(f.gateway, "hello.localhost", concurrency=8) as load:
        await load.wait_for(200)
        f.write_routes(hello("green", "traffic: [{revision: hello-00001, percent: 100}]"))
        await wait_until(lambda: _traffic_is(f, {"hello-00001": 100}), 30, "traffic back on blue")
        await f.wait_converged()
        await load.wait_for(300)
    assert load.failures == 0, (load.statuses, load.errors, load.bad)
    assert load.revisions["hello-00001"] > 0


async def _stopped(f: FerryProcess, revision: str) -> bool:
    status = (await f.status())["revisions"].get(revision)
    return status is not None and status["state"] == "retiring" and status["total"] == 0


async def test_the_revision_timeout_bounds_requests(ferry):
    f = ferry()
    slow = hello("slow", LATENCY_MS="3000").replace("readiness: {path: /healthz}", "readiness: {path: /healthz}\n        timeout: 1s")
    f.write_routes(slow)
    await f.start()
    await f.wait_converged()
    async with aiohttp.ClientSession() as session:
        started = asyncio.get_running_loop().time()
        async with session.get(f.gateway, headers={"Host": "hello.localhost"}) as response:
            assert response.status == 504
        assert 0.9 <= asyncio.get_running_loop().time() - started < 2.5
