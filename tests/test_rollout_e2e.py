"""Rollouts end to end: `ferry up`, a real Envoy and the example app, whose env knobs make a revision fail or slow.

Intervals are 2 s and minRequests small so a rollout takes seconds; the judging arithmetic is the same as with
Flagger-like defaults (it is unit-tested in test_rollout_engine.py).
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time

import aiohttp
import pytest

from ferry.rollout.gradual import gradual_steps

from . import ferry_process
from .ferry_process import FerryProcess
from .helpers import wait_until
from .load import Load, count_revisions

pytestmark = pytest.mark.timeout(240)

V1, V2 = "hello-00001", "hello-00002"
HOST = "hello.localhost"


def hello(message: str, rollout: str = "", traffic: str = "", **env) -> str:
    return ferry_process.hello(message, scale="{min: 1}", extra=(rollout, traffic), **env)


def canary(steps: str = "[20, 50, 100]", interval: str = "2s", **analysis) -> str:
    checks = {"minRequests": 20, **analysis}
    return (f"rollout: {{strategy: canary, steps: {steps}, interval: {interval}, "
            f"analysis: {{{', '.join(f'{k}: {v}' for k, v in checks.items())}}}}}")


async def rollout(f: FerryProcess) -> dict:
    return await f.get_json("/rollouts/hello")


async def phase_is(f: FerryProcess, *phases: str) -> bool:
    return (await rollout(f)).get("phase") in phases


async def weights_until_promoted(f: FerryProcess, timeout: float) -> set[int]:
    """Every weight the rollout showed while we watched it reach promotion."""
    weights = set()

    async def promoted() -> bool:
        state = await rollout(f)
        weights.add(state["weight"])
        return state["phase"] == "promoted"

    await wait_until(promoted, timeout, f"promotion; log:\n{f.log_text}")
    return weights


async def start_v1(f: FerryProcess, rollout_block: str, **env) -> None:
    f.write_routes(hello("v1", rollout_block, **env))
    await f.start()
    await f.wait_converged()


async def test_a_healthy_canary_goes_through_every_step_with_zero_errors(ferry):
    f = ferry()
    await start_v1(f, canary())
    async with Load(f.gateway, HOST, concurrency=8) as load:
        f.write_routes(hello("v2", canary()))
        await wait_until(lambda: phase_is(f, "progressing"), 30, f"the rollout to start; log:\n{f.log_text}")
        weights = await weights_until_promoted(f, 60)
        await load.wait_for(50)
    assert load.failures == 0, load.bad
    assert {20, 50} <= weights, weights  # it dwelt on the steps
    state = await rollout(f)
    assert [h["verdict"]["outcome"] for h in state["history"] if h["verdict"]].count("pass") >= 2
    counts = await count_revisions(f.gateway, HOST, 100)
    assert counts == {V2: 100}
    revisions = {r["name"]: r for r in await revisions_of(f)}
    assert revisions[V2]["rollout"]["result"] == "promoted" and revisions[V2]["traffic"] == 100


async def revisions_of(f: FerryProcess) -> list[dict]:
    return await f.get_json("/revisions/hello")


async def test_a_revision_answering_20_percent_500s_is_rolled_back_at_the_first_step(ferry):
    f = ferry()
    block = canary(steps="[10, 50, 100]", interval="3s", successRate=99)
    await start_v1(f, block)
    async with Load(f.gateway, HOST, concurrency=8) as load:
        f.write_routes(hello("v2", block, ERROR_RATE=0.2))
        await wait_until(lambda: phase_is(f, "rolled-back"), 60, f"the rollback; log:\n{f.log_text}")
        await load.wait_for(50)
    state = await rollout(f)
    assert state["step"] == 0 and state["weight"] == 0
    assert "success" in state["reason"].lower() and "99" in state["reason"], state["reason"]
    # Every error came from the candidate, which only ever had its first step's 10 %.
    failing = collections.Counter(line.split()[1] for line in load.bad if line.startswith("500"))
    assert set(failing) <= {V2}, load.bad
    assert load.revisions[V2] <= 0.2 * load.total, (load.revisions, load.total)
    assert load.failures <= 0.2 * load.revisions[V2] * 2 + 5, (load.failures, load.revisions)
    assert await count_revisions(f.gateway, HOST, 100) == {V1: 100}
    status = await f.status()
    assert status["services"]["hello"]["latest_ready"] == V1
    revisions = {r["name"]: r for r in await revisions_of(f)}
    assert revisions[V2]["rollout"]["result"] == "rolled-back"
    assert state["rollback_ms"] is not None and state["rollback_ms"] < 1000, state
    print(f"\nrollback reached the gateway {state['rollback_ms']} ms after the failing check")

    # What a user sees on the command line.
    api = ("--api", f"127.0.0.1:{f.api_port}", "--token-file", str(f.token_file))
    shown = await _cli("rollout", "status", "hello", *api)
    assert f"canary rollout {V1} -> {V2}, rolled-back" in shown and "success rate" in shown, shown
    listed = await _cli("revisions", "hello", *api)
    v2_line = next(line for line in listed.splitlines() if line.startswith(V2))
    assert "rolled-back" in v2_line and "0%" in v2_line, listed
    assert next(line for line in listed.splitlines() if line.startswith(V1)).split()[1] == "(latest)", listed
    refused = await _cli("rollout", "promote", "hello", *api, ok=False)
    assert "no rollout in progress" in refused, refused

    # The next template change starts a fresh rollout, from the stable revision.
    f.write_routes(hello("v3", block))

    async def fresh_rollout() -> bool:
        state = await rollout(f)
        return (state["candidate"], state["stable"], state["phase"]) == ("hello-00003", V1, "progressing")

    await wait_until(fresh_rollout, 30, f"a fresh rollout; log:\n{f.log_text}")
    assert (await rollout(f))["rollback_ms"] is None  # the last rollout's rollback is not this one's


async def _cli(*args: str, ok: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ferry", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert (proc.returncode == 0) == ok, (proc.returncode, out, err)
    return (out + err).decode()


async def test_a_slow_revision_is_rolled_back_on_its_p99(ferry):
    f = ferry()
    block = canary(steps="[20, 100]", interval="3s", maxLatencyP99="100ms")
    await start_v1(f, block)
    async with Load(f.gateway, HOST, concurrency=8):
        f.write_routes(hello("v2", block, LATENCY_MS=300))
        await wait_until(lambda: phase_is(f, "rolled-back"), 60, f"the rollback; log:\n{f.log_text}")
    state = await rollout(f)
    assert "p99" in state["reason"].lower() or "latency" in state["reason"].lower(), state["reason"]
    assert await count_revisions(f.gateway, HOST, 50) == {V1: 50}


async def test_without_traffic_a_step_waits_and_never_promotes(ferry):
    f = ferry()
    block = canary(steps="[20, 100]", interval="1s")
    await start_v1(f, block)
    f.write_routes(hello("v2", block))
    await wait_until(lambda: phase_is(f, "progressing"), 30, "the rollout to start")
    started = await rollout(f)
    # No load at all: four intervals go by, every check is inconclusive, the rollout stays where it was.
    await wait_until(lambda: time.time() - started["step_started_at"] >= 4.0, 20, "four intervals")
    state = await rollout(f)
    assert state["phase"] == "progressing" and state["step"] == 0 and state["weight"] == 20, state
    assert all(h["verdict"]["outcome"] != "pass" for h in state["history"] if h["verdict"]), state["history"]


async def test_blue_green_previews_the_new_revision_then_switches_with_zero_errors(ferry):
    f = ferry()
    block = "rollout: {strategy: blue-green, interval: 2s, autoPromote: false, analysis: {minRequests: 10}}"
    await start_v1(f, block)
    f.write_routes(hello("v2", block))
    await wait_until(lambda: phase_is(f, "progressing", "awaiting-promotion"), 30, "the preview")
    preview = f"preview-{HOST}"
    await wait_until(lambda: _serves(f, preview, V2), 10, "the preview host")
    assert await count_revisions(f.gateway, preview, 60) == {V2: 60}
    assert await count_revisions(f.gateway, HOST, 60) == {V1: 60}
    async with Load(f.gateway, preview, concurrency=2) as testers:  # someone tries the preview
        await wait_until(lambda: phase_is(f, "awaiting-promotion"), 30, f"a passing preview; log:\n{f.log_text}")
    assert testers.failures == 0 and set(testers.revisions) == {V2}, testers.revisions
    assert await count_revisions(f.gateway, HOST, 40) == {V1: 40}  # no promotion without the command
    async with Load(f.gateway, HOST, concurrency=8) as load:
        await load.wait_for(100)
        code, answer = await f.post("/rollouts/hello/promote")
        assert code == 200 and answer["phase"] == "promoted", answer
        await wait_until(lambda: _serves(f, HOST, V2), 10, "the switch")
        await load.wait_for(100)
    assert load.failures == 0, load.bad
    assert load.revisions[V1] > 0 and load.revisions[V2] > 0


async def _serves(f: FerryProcess, host: str, revision: str) -> bool:
    try:
        return await count_revisions(f.gateway, host, 10, concurrency=2) == {revision: 10}
    except aiohttp.ClientError:
        return False


async def test_gradual_steps_follow_knatives_arithmetic_to_the_end(ferry):
    f = ferry()
    block = "rollout: {strategy: gradual, duration: 5s, analysis: {minRequests: 1000000}}"
    await start_v1(f, block)
    async with Load(f.gateway, HOST, concurrency=4) as load:
        f.write_routes(hello("v2", block))
        await wait_until(lambda: phase_is(f, "progressing"), 30, "the rollout to start")
        seen = await weights_until_promoted(f, 30)
    assert load.failures == 0, load.bad
    state = await rollout(f)
    # Knative's arithmetic, from when the candidate was seen ready at 1 % (typically within the first second:
    # minStep 1 s, 4 s left for 99 %, so 4 steps of 25 %, 1 s each).
    events = {h["event"]: h["at"] for h in state["history"]}
    plan = gradual_steps(100, 5.0, events["planned"] - events["started"])
    assert (state["step_size"], state["step_duration_s"]) == (plan.step_size, plan.step_duration_s), state
    assert 1 in seen and seen <= {min(100, 1 + k * plan.step_size) for k in range(100)}, seen


async def test_a_restart_mid_rollout_resumes_at_the_same_step(ferry):
    f = ferry()
    block = canary(steps="[20, 50, 100]", interval="2s")
    await start_v1(f, block)
    async with Load(f.gateway, HOST, concurrency=8):
        f.write_routes(hello("v2", block))

        async def at_second_step() -> bool:
            return (await rollout(f)).get("step") == 1

        await wait_until(at_second_step, 60, f"step 2; log:\n{f.log_text}")
    # No more traffic: the step cannot pass, so it stays here across the restart.
    before = await rollout(f)
    assert before["weight"] == 50
    await f.stop()
    await f.start()
    await f.wait_converged()
    after = await rollout(f)
    assert (after["phase"], after["step"], after["weight"]) == ("progressing", 1, 50), after
    counts = await count_revisions(f.gateway, HOST, 200)
    assert set(counts) == {V1, V2} and 60 <= counts[V2] <= 140, counts


async def _tagged(f, headers: dict[str, str]) -> tuple[str, dict]:
    """The revision that answers the main host with `headers`, and the headers its instance received."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{f.gateway}/headers", headers={"Host": HOST, **headers}) as response:
            return response.headers["x-revision"], await response.json()


async def test_tag_header_routing_is_off_unless_the_gateway_turns_it_on(ferry):
    """Knative's tag-header-based-routing is off by default: a `ferry-tag` on the main host must not reach an
    unpromoted revision (and must not reach the instance either); `gateway.tagHeader: true` turns it on, for
    `ferry-tag` and Knative's `Knative-Serving-Tag`."""
    f = ferry()
    traffic = f"traffic: [{{revision: {V1}, percent: 100}}, {{latestRevision: true, percent: 0, tag: next}}]"
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    f.write_routes(hello("v2", traffic=traffic))
    await wait_until(lambda: _serves(f, f"next-{HOST}", V2), 30, "the tag host")
    for header in ("ferry-tag", "Knative-Serving-Tag"):
        revision, seen = await _tagged(f, {header: "next"})
        assert revision == V1 and header.lower() not in seen, (header, seen)

    f.write_routes(hello("v2", traffic=traffic), gateway="tagHeader: true")

    async def tag_routing_on() -> bool:
        return (await _tagged(f, {"ferry-tag": "next"}))[0] == V2

    await wait_until(tag_routing_on, 30, "tag header routing on")
    for header in ("ferry-tag", "Knative-Serving-Tag"):
        for tag, revision in (("next", V2), ("unknown", V1)):
            assert (await _tagged(f, {header: tag}))[0] == revision, (header, tag)


async def test_ferry_traffic_overrides_the_split_until_reset(ferry):
    f = ferry()
    traffic = f"traffic: [{{latestRevision: true, percent: 100}}, {{revision: {V1}, percent: 0, tag: old}}]"
    f.write_routes(hello("v1"))
    await f.start()
    await f.wait_converged()
    f.write_routes(hello("v2", traffic=traffic))
    await wait_until(lambda: _serves(f, HOST, V2), 30, "v2")
    code, answer = await f.post("/traffic/hello", {"splits": [[V1, 50], [V2, 50]]})
    assert code == 200, answer
    counts = await count_revisions(f.gateway, HOST, 200)
    assert 60 <= counts[V1] <= 140 and counts[V1] + counts[V2] == 200, counts
    service = (await f.status())["services"]["hello"]
    assert service["split_owner"].startswith("override") and service["traffic_override"] == [[V1, 50], [V2, 50]]
    code, answer = await f.post("/traffic/hello", {"splits": [[V1, 60], [V2, 50]]})
    assert code == 422 and "sum to exactly 100" in answer["error"]
    code, _ = await f.post("/traffic/hello", {"reset": True})
    assert code == 200
    assert await count_revisions(f.gateway, HOST, 50) == {V2: 50}
    assert (await f.status())["services"]["hello"]["split_owner"] == "file"


async def test_a_sticky_canary_keeps_each_client_on_the_revision_it_first_got(ferry):
    f = ferry()
    block = "rollout: {strategy: canary, steps: [50, 100], interval: 60s, sticky: true, analysis: {minRequests: 10}}"
    await start_v1(f, block)
    f.write_routes(hello("v2", block))
    await wait_until(lambda: phase_is(f, "progressing"), 30, "the rollout to start")
    await wait_until(lambda: _serves_both(f), 30, "the 50/50 split")
    firsts = collections.Counter()
    for _ in range(20):  # 20 new clients, each with its own cookie jar, 10 requests each
        # unsafe: the gateway is addressed by IP here (Host header hello.localhost); browsers use the name.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            seen = []
            for _ in range(10):
                async with client.get(f.gateway, headers={"Host": HOST}) as response:
                    assert response.status == 200
                    seen.append(response.headers["x-revision"])
            assert len(set(seen)) == 1, seen  # sticky from the first answer on
            firsts[seen[0]] += 1
    assert set(firsts) == {V1, V2}, firsts  # and the first answers still follow the split


async def _serves_both(f: FerryProcess) -> bool:
    return set(await count_revisions(f.gateway, HOST, 40, concurrency=4)) == {V1, V2}


async def test_the_stable_revision_keeps_its_instances_while_the_rollout_may_fall_back(ferry):
    f = ferry(extra=("--autoscale-tick", "0.5"))
    idle_fast = "scale: {stableWindow: 6s, zeroGracePeriod: 1s}"
    block = canary(steps="[20, 100]", interval="60s")

    def service(message: str) -> str:
        return hello(message, block).replace("scale: {min: 1}", idle_fast)

    f.write_routes(service("v1"))
    await f.start()
    await f.wait_converged()
    f.write_routes(service("v2"))
    await wait_until(lambda: phase_is(f, "progressing"), 30, "the rollout to start")

    async def candidate_idled_to_zero() -> bool:
        return (await f.status())["revisions"][V2]["total"] == 0

    # Both idle with the same settings: the candidate goes to zero, the stable one is held at its scale.
    await wait_until(candidate_idled_to_zero, 60, f"the idle candidate to reach zero; log:\n{f.log_text}")
    stable = (await f.status())["revisions"][V1]
    assert stable["ready"] == 1 and stable["autoscaling"]["desired"] == 1, stable


async def test_abort_goes_back_to_stable_and_retry_starts_the_same_rollout_again(ferry):
    f = ferry()
    block = canary(steps="[30, 100]", interval="60s")
    await start_v1(f, block)
    f.write_routes(hello("v2", block))
    await wait_until(lambda: phase_is(f, "progressing"), 30, "the rollout to start")
    api = ("--api", f"127.0.0.1:{f.api_port}", "--token-file", str(f.token_file))
    shown = await _cli("rollout", "abort", "hello", *api)
    assert "aborted" in shown, shown
    await wait_until(lambda: _serves(f, HOST, V1), 10, "the stable revision alone")
    revisions = {r["name"]: r for r in await revisions_of(f)}
    assert revisions[V2]["rollout"]["result"] == "aborted" and revisions[V1]["latest_ready"]

    shown = await _cli("rollout", "retry", "hello", *api)
    assert "progressing" in shown, shown
    await wait_until(lambda: _serves_both(f), 30, f"the retried split; log:\n{f.log_text}")
    state = await rollout(f)
    assert (state["phase"], state["step"], state["weight"], state["candidate"]) == ("progressing", 0, 30, V2)
    assert (await f.status())["services"]["hello"]["split_owner"] == "rollout"
    # ferry traffic is refused while a rollout owns the split.
    refused = await _cli("traffic", "hello", f"{V1}=50", f"{V2}=50", *api, ok=False)
    assert "a rollout owns the split" in refused, refused
