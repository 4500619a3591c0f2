"""What keeps ferry flat at 10,000 services, checked for behaviour (the numbers live in bench/): Envoy keeps only
the stats ferry reads, /status is built from cached views and sent in slices, the event loop's stalls are measured.
"""

from __future__ import annotations

import asyncio
import json
import platform
import re
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from ferry import api
from ferry.envoy.admin import EnvoyAdmin
from ferry.envoy.bootstrap import KEPT_STATS, BootstrapOptions, bootstrap
from ferry.reconcile import status as status_views

from .ferry_process import get, hello
from .helpers import wait_until
from .reconcile_fakes import World, fixed

pytestmark = pytest.mark.timeout(120)


# -- Envoy's stats --------------------------------------------------------------------------------------------


def _kept(name: str) -> bool:
    """KEPT_STATS as Envoy applies it (RE2 and Python's re agree on these patterns)."""
    for pattern in KEPT_STATS:
        if "prefix" in pattern and name.startswith(pattern["prefix"]):
            return True
        if "safe_regex" in pattern and re.fullmatch(pattern["safe_regex"]["regex"], name):
            return True
    return False


@pytest.mark.parametrize("name", [
    "cluster.hello/hello-00001.upstream_rq_total", "cluster.hello/hello-00001.upstream_rq_active",
    "cluster.hello/hello-00001.upstream_rq_pending_active", "cluster.hello/hello-00001.upstream_rq_5xx",
    "cluster.hello/hello-00001.upstream_rq_time", "cluster_manager.cds.update_success",
    "http.ferry.rds.hello.update_success", "http.ferry.downstream_rq_2xx", "http.ferry.no_cluster",
    "control_plane.connected_state", "server.live", "listener_manager.lds.update_rejected",
])
def test_the_stats_ferry_and_dashboards_read_are_kept(name):
    assert _kept(name)


@pytest.mark.parametrize("name", [
    "cluster.hello/hello-00001.upstream_cx_total", "cluster.hello/hello-00001.membership_total",
    "cluster.hello/hello-00001.lb_healthy_panic", "cluster.hello/hello-00001.upstream_rq_200",
    "cluster.hello/hello-00001.circuit_breakers.default.rq_open", "cluster.hello/hello-00001.upstream_cx_length_ms",
    "http.ferry.rds.hello.config_reload", "vhost.hello.vcluster.other.upstream_rq_total",
])
def test_per_cluster_stats_nobody_reads_are_not(name):
    assert not _kept(name)


def test_every_bootstrap_keeps_only_those_unless_all_are_asked_for():
    config = bootstrap(BootstrapOptions(node_id="n"))
    assert config["stats_config"]["stats_matcher"]["inclusion_list"]["patterns"] == list(KEPT_STATS)
    assert config["deferred_stat_options"] == {"enable_deferred_creation_stats": True}
    assert config["cluster_manager"] == {"enable_deferred_cluster_creation": True}
    everything = bootstrap(BootstrapOptions(node_id="n", all_stats=True))
    assert "stats_config" not in everything and "deferred_stat_options" not in everything


async def _cluster_stats(admin: EnvoyAdmin) -> dict[str, str]:
    _, body = await admin.get("/stats?filter=^cluster\\.hello/")
    return {name: value for name, _, value in (line.partition(": ") for line in body.decode().splitlines())}


def _count(stats: dict[str, str], name: str) -> int:
    return int(stats.get(name, "0"))


@pytest.mark.parametrize("stats", ["ferry", "all"])
async def test_a_real_envoy_keeps_what_routes_yaml_says(ferry, stats):
    f = ferry()
    f.write_routes(hello("v1"), gateway=f"stats: {stats}")
    await f.start()
    await f.wait_converged()
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            assert await get(session, f.gateway, "hello.localhost") == (200, "hello-00001")
    admin = EnvoyAdmin("127.0.0.1", f.admin_port)
    prefix = "cluster.hello/hello-00001."
    counted = await wait_until(lambda: _counted(admin, prefix, 5), 10, "Envoy to count the 5 requests")
    assert _count(counted, prefix + "upstream_rq_2xx") >= 5
    assert (prefix + "upstream_cx_total" in counted) is (stats == "all")
    assert (prefix + "membership_total" in counted) is (stats == "all")
    # The autoscaler reads the same gateway: under steady requests it sees a rate.
    async def requests() -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await get(session, f.gateway, "hello.localhost")
                await asyncio.sleep(0.02)

    async def observed_rate() -> bool:
        observed = (await f.status())["revisions"]["hello-00001"]["autoscaling"]["observed"]
        return (observed["rps"] or 0) > 0

    load = asyncio.create_task(requests())
    try:
        await wait_until(observed_rate, 15, "the autoscaler to see the requests in Envoy's stats")
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    async with f.session() as session, session.get(f"{f.api}/metrics") as response:
        assert "ferry_event_loop_lag_seconds_count" in await response.text()


async def _counted(admin: EnvoyAdmin, prefix: str, at_least: int) -> dict[str, str] | None:
    stats = await _cluster_stats(admin)
    return stats if _count(stats, prefix + "upstream_rq_total") >= at_least else None


# -- /status --------------------------------------------------------------------------------------------------


async def test_status_views_follow_every_change(tmp_path):
    w = World(tmp_path)
    try:
        await w.apply("\n".join(f"s{i}: {{template: {fixed(9000)}}}" for i in range(250)))
        await w.settle()
        first = w.controller.status()
        chunks = list(w.controller.status_chunks(None, {"config": {"x": 1}}))
        assert len(chunks) > 3  # views go out in groups: the API hands the loop back between them
        whole = json.loads(b"".join(chunks))
        assert whole == {"config": {"x": 1}, **first}
        assert first["revisions"]["s7-00001"]["endpoints"] == ["127.0.0.1:9000"]

        # The same objects: the same bytes, not built again.
        cached = dict(w.controller.views.revisions)
        w.controller.status()
        assert all(w.controller.views.revisions[name] is entry for name, entry in cached.items())

        # A new split, new endpoints, a removed service: each shows at once.
        services = [f"s{i}: {{template: {fixed(9000)}}}" for i in range(1, 250)]
        services[6] = f"s7: {{template: {fixed(9001)}}}"
        await w.apply("\n".join(services))
        await w.settle()
        now = w.controller.status()
        assert "s0" not in now["services"] and not any(r.startswith("s0-") for r in now["revisions"])
        assert now["revisions"]["s7-00002"]["endpoints"] == ["127.0.0.1:9001"]
        assert now["services"]["s7"]["latest_ready"] == "s7-00002"
        assert now["services"]["s8"] == first["services"]["s8"]
        assert "s0" not in w.controller.views.services  # views of what is gone are forgotten
    finally:
        await w.close()


class _SlowLeader:
    """A status of 12 chunks that take 4 ms of CPU each."""

    def status_chunks(self, service):
        if service not in (None, "x"):
            raise KeyError(service)

        def chunks():
            yield b'{"services":{'
            for i in range(12):
                started = time.perf_counter()
                while time.perf_counter() - started < 0.004:
                    pass
                yield (b"," if i else b"") + f'"s{i}":{{}}'.encode()
            yield b"}}"

        return chunks()


async def test_a_long_status_leaves_the_event_loop_to_others():
    state = api.ApiState(CollectorRegistry(), replica=dict, leading=_SlowLeader(), token="t")
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async with TestClient(TestServer(api.build_api(state), host="127.0.0.1")) as client:
        ticking = asyncio.create_task(ticker())
        try:
            before = turns
            response = await client.get("/status", headers={"Authorization": "Bearer t"})
            body = await response.json()
            during = turns - before
        finally:
            ticking.cancel()
        missing = await client.get("/status?service=nobody", headers={"Authorization": "Bearer t"})
    assert body == {"services": {f"s{i}": {} for i in range(12)}}
    # 48 ms of work in slices of STATUS_SLICE_S (5 ms): the loop ran other tasks between slices.
    assert during >= 4, during
    assert missing.status == 404


def test_views_are_rebuilt_only_when_their_inputs_change():
    cache: dict = {}
    built = []

    def build():
        built.append(1)
        return {"n": len(built)}

    spec = ("spec",)
    first = status_views._cached(cache, "a", (spec, None), build)
    again = status_views._cached(cache, "a", (spec, None), build)
    changed = status_views._cached(cache, "a", (spec, "waiting"), build)
    assert first is again and len(built) == 2
    assert json.loads(b"{" + changed + b"}") == {"a": {"n": 2}}


# -- reading Envoy's stats in its Prometheus rendering ----------------------------------------------------------


def test_rollout_samples_are_read_from_envoys_prometheus_rendering():
    from ferry.rollout.stats import parse_samples, stats_path

    body = b"""\
# TYPE envoy_cluster_upstream_rq_xx counter
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="hello/hello-00002"} 95
envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="hello/hello-00002"} 5
envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="other/other-00001"} 7
# TYPE envoy_cluster_upstream_rq_time histogram
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="hello/hello-00002",le="1"} 60
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="hello/hello-00002",le="0.5"} 10
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="hello/hello-00002",le="+Inf"} 100
envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="hello/hello-00002"} 80.5
envoy_cluster_upstream_rq_time_count{envoy_cluster_name="hello/hello-00002"} 100
"""
    samples = parse_samples(body, ["hello/hello-00002", "hello/hello-00001"])
    assert samples["hello/hello-00002"].requests == 100 and samples["hello/hello-00002"].errors == 5
    assert samples["hello/hello-00002"].latency_buckets == ((0.5, 10), (1.0, 60), (float("inf"), 100))
    assert samples["hello/hello-00001"].requests == 0 and samples["hello/hello-00001"].latency_buckets == ()
    assert stats_path(["hello/hello-00002"]).startswith("/stats/prometheus?usedonly&filter=")


# -- ferry's own memory ---------------------------------------------------------------------------------------

_FREED_BLOCK_IS_MMAPPED = r"""
import ctypes, sys
from ferry.daemon.memory import tune_malloc

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
tuned = sys.argv[1] == "tuned" and tune_malloc()
size = 8 * 1024 * 1024
block = bytes(size)
del block  # glibc, untuned: its mmap threshold is now ~8 MiB, so the next block of that size comes from the heap
before = libc.mallinfo2().hblkhd
block = bytes(size)
print(tuned, libc.mallinfo2().hblkhd - before >= size)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_big_blocks_go_back_to_the_system_once_malloc_is_tuned():
    """ferry up fixes glibc's mmap threshold (ferry/daemon/memory.py): a big block freed once must not move it, or
    later big blocks come from the heap and stay in ferry's resident memory after they are freed."""
    def run(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", _FREED_BLOCK_IS_MMAPPED, mode], capture_output=True, text=True,
                              check=True, timeout=60).stdout.split()

    assert run("tuned") == ["True", "True"]
    assert run("untuned") == ["False", "False"]  # what glibc does by itself: the reason for tuning it
