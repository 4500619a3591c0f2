"""Autoscaling and scale to zero end to end: `ferry up`, a real Envoy, the activator and the example app.

Windows are shortened (stableWindow 6-10 s) and decisions taken every 0.5 s so a test runs in seconds;
the arithmetic is Knative's either way (it is tested against Knative's vectors elsewhere).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from ferry.cli import format_status

from . import ferry_process
from .ferry_process import FerryProcess
from .helpers import wait_until
from .load import Load

pytestmark = pytest.mark.timeout(240)

REVISION = "hello-00001"
TICK = ("--autoscale-tick", "0.5")


def hello(scale: str, *, concurrency: int = 0, timeout: str = "300s", **env) -> str:
    return ferry_process.hello("hi", concurrency=concurrency, timeout=timeout, scale=scale, **env)


async def revision(f: FerryProcess) -> dict:
    return (await f.status())["revisions"][REVISION]


async def started(f: FerryProcess, **kwargs) -> FerryProcess:
    await f.start()
    await f.wait_converged()
    return f


async def request(session: aiohttp.ClientSession, f: FerryProcess, path: str = "/") -> tuple[int, str, dict]:
    async with session.get(f"{f.gateway}{path}", headers={"Host": "hello.localhost"}) as response:
        return response.status, await response.text(), dict(response.headers)


async def test_200_concurrent_requests_from_zero_are_all_answered(ferry):
    f = ferry(extra=TICK)
    f.write_routes(hello("{initial: 0, min: 0, stableWindow: 6s}", LATENCY_MS=300))
    await started(f)
    before = await revision(f)
    assert before["total"] == 0 and before["autoscaling"]["activator_in_path"]  # routed through the activator
    assert before["state"] == "at zero"

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(request(session, f) for _ in range(200)))
    assert [status for status, _, _ in results] == [200] * 200, {r[1] for r in results if r[0] != 200}
    assert {body for _, body, _ in results} == {f"{REVISION}: hi\n"}

    after = await revision(f)
    events = after["autoscaling"]["scale_events"]
    assert events and events[0]["from"] == 0, events
    # No herd: the instances started are exactly the most the decisions asked for, none restarted.
    assert after["instances_started"] == max(e["to"] for e in events), (after["instances_started"], events)
    assert all(i["restarts"] == 0 for i in after["instances"])
    (line,) = [line for line in format_status(await f.status()).splitlines() if line.startswith(f"{REVISION} ")][1:]
    assert f" {after['autoscaling']['desired']} " in line and "pods needed" in line, line  # the AUTOSCALING row


async def test_an_idle_revision_scales_to_zero_and_the_next_request_cold_starts(ferry):
    f = ferry(extra=TICK)
    f.write_routes(hello("{initial: 1, stableWindow: 6s, zeroGracePeriod: 1s}"))
    await started(f)
    async with aiohttp.ClientSession() as session:
        assert (await request(session, f))[0] == 200

        async def at_zero() -> bool:
            r = await revision(f)
            return r["total"] == 0 and not r["instances"] and r["autoscaling"]["activator_in_path"]

        await wait_until(at_zero, 60, f"scale to zero; log:\n{f.log_text}")
        assert "scale to zero" in (await revision(f))["autoscaling"]["scale_events"][-1]["reason"]

        began = time.monotonic()
        status, body, _ = await request(session, f)
        cold_start = time.monotonic() - began
    assert (status, body) == (200, f"{REVISION}: hi\n")
    after = await revision(f)
    assert after["instances_started"] == 2 and after["ready"] == 1
    print(f"\ncold start through the activator: {cold_start * 1000:.0f} ms")


async def test_three_times_the_target_grows_to_three_instances_and_shrinks_after(ferry):
    f = ferry(extra=TICK)
    scale = "{initial: 1, target: 10, utilization: 100, stableWindow: 6s, panicWindowPercent: 20, zeroGracePeriod: 1s}"
    f.write_routes(hello(scale, LATENCY_MS=100))
    await started(f)
    began = time.monotonic()
    async with Load(f.gateway, "hello.localhost", concurrency=30) as load:

        async def grown() -> bool:
            r = await revision(f)
            return r["ready"] >= 3

        await wait_until(grown, 30, f"3 ready instances; log:\n{f.log_text}")
        grew_in = time.monotonic() - began
        scaling = (await revision(f))["autoscaling"]
        await load.wait_for(200)
    assert load.failures == 0, load.bad
    assert scaling["desired"] >= 3
    assert any("panic" in e["reason"] for e in scaling["scale_events"]), scaling["scale_events"]
    print(f"\n3x target: {scaling['desired']} instances wanted, 3 ready after {grew_in:.1f} s")

    async def shrunk() -> bool:
        return (await revision(f))["autoscaling"]["desired"] <= 1

    await wait_until(shrunk, 60, "scale down after the load stopped")


async def test_concurrency_one_never_gives_an_instance_two_requests(ferry):
    f = ferry(extra=TICK)
    f.write_routes(hello("{initial: 1, stableWindow: 6s}", concurrency=1, LATENCY_MS=50))
    await started(f)
    async with Load(f.gateway, "hello.localhost", concurrency=5) as load:
        deadline = time.monotonic() + 20
        seen: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                for instance in (await revision(f))["instances"]:
                    if instance["endpoint"] and instance["ready"]:
                        try:
                            async with session.get(f"http://{instance['endpoint']}/stats") as response:
                                seen[instance["endpoint"]] = (await response.json())["max_app_inflight"]
                        except aiohttp.ClientError:
                            pass  # stopping between the status and this read
                await asyncio.sleep(0.5)
    assert load.failures == 0, load.bad
    assert load.total > 100
    assert len(seen) >= 2, seen  # the load needed more than one instance: the breaker spread it
    assert max(seen.values()) == 1, seen


async def test_a_full_activator_queue_answers_503_with_retry_after(ferry):
    f = ferry(extra=(*TICK, "--queue-limit", "3"))
    f.write_routes(hello("{initial: 0}", STARTUP_DELAY=2))
    await started(f)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(request(session, f) for _ in range(10)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(200) >= 3 and set(statuses) == {200, 503}, statuses
    rejected = [(body, headers) for status, body, headers in results if status == 503]
    assert all("queue full" in body and headers.get("Retry-After") for body, headers in rejected), rejected


async def test_a_revision_that_never_becomes_ready_gives_504_at_its_timeout(ferry):
    f = ferry(extra=TICK)
    f.write_routes(hello("{initial: 0}", timeout="2s", READY_DELAY=3600))
    await started(f)
    async with aiohttp.ClientSession() as session:
        began = time.monotonic()
        status, body, _ = await request(session, f)
        waited = time.monotonic() - began
    assert status == 504, body
    assert 1.9 <= waited < 5, waited


async def test_scaling_down_under_steady_load_loses_nothing(ferry):
    f = ferry(extra=TICK)
    scale = "{initial: 1, target: 10, utilization: 100, stableWindow: 6s}"
    f.write_routes(hello(scale, LATENCY_MS=50))
    await started(f)
    async with Load(f.gateway, "hello.localhost", concurrency=6) as steady:
        async with Load(f.gateway, "hello.localhost", concurrency=30) as burst:

            async def grown() -> bool:
                return (await revision(f))["ready"] >= 3

            await wait_until(grown, 30, "scale up under the burst")
            await burst.wait_for(100)

        async def shrunk() -> bool:
            r = await revision(f)
            return r["autoscaling"]["desired"] == 1 and r["total"] == 1

        await wait_until(shrunk, 60, f"scale down while the steady load goes on; log:\n{f.log_text}")
        await steady.wait_for(100)
    events = (await revision(f))["autoscaling"]["scale_events"]
    assert any(e["to"] < e["from"] for e in events), events
    assert burst.failures == 0 and steady.failures == 0, (burst.bad, steady.bad)


async def test_a_late_request_for_a_retiring_revision_is_still_answered_by_its_draining_instance(ferry):
    """Envoy may route a request to a revision just before the route moves on; if it lands at the activator
    after the revision began to stop, the draining instance answers it (it has nowhere else to go)."""
    f = ferry(extra=TICK)
    f.write_routes(hello("{initial: 1}", LATENCY_MS=1500))
    await started(f)
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(request(session, f))  # keeps hello-00001's instance draining
        await wait_until(lambda: _app_busy(f), 10, "the slow request to reach the instance")
        f.write_routes(hello("{initial: 1}"))  # hello-00002: the route moves, hello-00001 retires and drains

        async def draining() -> bool:
            r = await revision(f)
            return r["state"] == "retiring" and any(i["stopping"] for i in r["instances"])

        await wait_until(draining, 30, f"hello-00001 to drain; log:\n{f.log_text}")
        late = {"Host": "hello.localhost", "ferry-revision": REVISION, **f.activator_key}
        async with session.get(f"http://127.0.0.1:{f.activator_port}/", headers=late) as response:
            assert (response.status, await response.text()) == (200, f"{REVISION}: hi\n")
        assert (await in_flight)[:2] == (200, f"{REVISION}: hi\n")


async def _app_busy(f: FerryProcess) -> bool:
    instances = (await revision(f))["instances"]
    async with aiohttp.ClientSession() as session:
        for instance in instances:
            async with session.get(f"http://{instance['endpoint']}/stats") as response:
                if (await response.json())["inflight"] >= 1:
                    return True
    return False
