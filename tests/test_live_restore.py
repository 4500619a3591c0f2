"""Live restore: the data plane outlives ferry, and a restarted ferry takes it back (real Envoy, real processes).

A SIGKILLed ferry leaves Envoy, the activator and the instances serving the last configuration; the next
`ferry up` on the same state adopts the very same processes and re-sends Envoy nothing; `ferry down` and SIGTERM
stop all of it.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys

import aiohttp
import pytest

from ferry.envoy.admin import EnvoyAdmin

from . import ferry_process
from .ferry_process import FerryProcess
from .helpers import wait_until
from .load import Load

pytestmark = pytest.mark.timeout(240)

HOST = "hello.localhost"
ROLLOUT = "rollout: {strategy: canary, steps: [50, 100], interval: 1s, analysis: {minRequests: 5}}"
ALL_STATS = "stats: all"  # Envoy keeps its per-cluster stats, EDS's update counters among them


def hello(message: str = "v1", scale: str = "{min: 1}", rollout: str = "") -> str:
    return ferry_process.hello(message, scale=scale, extra=(rollout,))


async def running(f: FerryProcess, routes: str, gateway: str = "") -> dict[str, int]:
    f.write_routes(routes, gateway=gateway)
    await f.start()
    await f.wait_converged()
    await wait_until(lambda: _instances_ready(f), 30, "instances ready")
    return f.dataplane()


async def _instances_ready(f: FerryProcess) -> bool:
    status = await f.status()
    return all(r["ready"] == r["total"] for r in status["revisions"].values() if r["state"] != "retiring")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


async def test_a_crash_and_a_restart_under_load_lose_no_request_and_replace_nothing(ferry):
    f = ferry()
    before = await running(f, hello(), gateway=ALL_STATS)
    assert sorted(before) == ["activator activator", "envoy ferry-local", "instance hello-00001/1"], before
    updates = await f.envoy_updates()  # CDS, LDS, EDS, RDS and SRDS
    async with Load(f.gateway, HOST, concurrency=8) as load:
        await load.wait_for(200)
        await f.kill()  # SIGKILL: no chance to clean up
        await asyncio.sleep(5)  # the control plane is away for 5 s (the scenario, not a wait on a condition)
        await load.wait_for(200)  # served all along
        await f.start()
        await f.wait_converged()
        await load.wait_for(300)
    assert load.failures == 0, (load.statuses, load.errors, load.bad)
    assert f.dataplane() == before  # the same Envoy, activator and instance: adopted, none started again
    assert await f.envoy_updates() == updates  # nothing re-sent to Envoy
    status = await f.status()
    assert status["revisions"]["hello-00001"]["instances_started"] in (None, 0)  # this ferry started none
    # The adopted data plane still takes changes.
    f.write_routes(hello("v2"), gateway=ALL_STATS)
    await wait_until(lambda: _serves(f, "hello-00002"), 30, "v2")


async def _serves(f: FerryProcess, revision: str) -> bool:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f.gateway, headers={"Host": HOST}) as response:
                return response.headers.get("x-revision") == revision
        except aiohttp.ClientError:
            return False


async def test_a_request_at_zero_while_ferry_is_down_is_answered_once_it_is_back(ferry):
    f = ferry()
    await running(f, hello(scale="{initial: 0, min: 0}"))
    assert (await f.status())["revisions"]["hello-00001"]["state"] == "at zero"
    await f.kill()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        held = asyncio.ensure_future(session.get(f.gateway, headers={"Host": HOST}))
        await asyncio.sleep(3)  # ferry stays away 3 s while the activator holds the request
        assert not held.done()
        await f.start()
        async with await held as response:
            assert response.status == 200 and response.headers["x-revision"] == "hello-00001"


async def test_sigterm_after_an_adoption_stops_what_was_adopted(ferry):
    f = ferry()
    pids = list((await running(f, hello())).values())
    await f.kill()
    await f.start()
    await f.wait_converged()
    assert list(f.dataplane().values()) == pids
    f.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(f.proc.wait(), 30) == 0
    await wait_until(lambda: not any(_alive(p) for p in pids), 15, f"{pids} to exit")
    assert f.dataplane() == {}


async def test_another_routes_file_on_a_live_data_plane_is_refused_saying_what_runs(ferry, tmp_path):
    f = ferry()
    await running(f, hello())
    await f.kill()
    other = tmp_path / "other.yaml"
    other.write_text(f.routes.read_text())
    state = tmp_path / ".ferry" / "state.db"
    refused = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "ferry", "up", str(other), "--state", str(state), "--api",
                         "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert f"holds a running data plane of {f.routes}" in refused.stderr, refused.stderr
    assert "1 activator, 1 envoy, 1 instance" in refused.stderr and "ferry down --state" in refused.stderr
    assert all(_alive(p) for p in f.dataplane().values())  # nothing was touched


async def test_an_instance_killed_while_ferry_is_down_is_replaced(ferry):
    f = ferry()
    before = await running(f, hello())
    await f.kill()
    victim = before["instance hello-00001/1"]
    subprocess.run(["kill", "-9", str(victim)], check=True)
    await f.start()
    await f.wait_converged()
    await wait_until(lambda: _instances_ready(f), 30, "the replacement ready")
    after = f.dataplane()
    assert after["instance hello-00001/1"] != victim
    assert {k: v for k, v in after.items() if k != "instance hello-00001/1"} == \
        {k: v for k, v in before.items() if k != "instance hello-00001/1"}


async def test_twenty_crashes_at_random_moments_lose_nothing(ferry, tmp_path):
    """SIGKILL during applies, a canary rollout and scaling, under load, each followed by a restart: no failed
    request, and after every round one revision per template written, latest-ready a revision that is ready,
    a rollout that resumes at the step and weight the state folder held when ferry died."""
    rng = random.Random(20)
    f = ferry()
    message, scale = "v0", "{min: 1}"
    await running(f, hello(message, scale, ROLLOUT))
    templates = 1
    async with Load(f.gateway, HOST, concurrency=8) as load:
        for round_ in range(20):
            action = rng.choice(["template", "scale", "none"])
            if action == "template":
                templates += 1
                message = f"v{round_ + 1}"
            elif action == "scale":
                templates += 1  # the scale block is part of the template: a new revision too
                scale = "{min: 2}" if scale == "{min: 1}" else "{min: 1}"
            f.write_routes(hello(message, scale, ROLLOUT))
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            await f.kill()
            at_death = _stored_rollout(f)  # what the next ferry reads: nothing writes the state while it is down
            await f.start()
            await f.wait_converged()
            _check_state(f, templates)
            status = await f.status()
            _check_rollout_resumed(at_death, status["services"]["hello"]["rollout"])
            await wait_until(lambda: _latest_ready_is_ready(f), 30, f"latest-ready to name a ready revision ({round_})")
        await wait_until(lambda: _rollout_done(f), 60, "the last rollout to end")
        await load.wait_for(100)
    if load.failures:  # say where Envoy's 503s came from
        _, stats = await EnvoyAdmin("127.0.0.1", f.admin_port).get("/stats?filter=^(http|cluster.hello).*(503|none_healthy|no_route|"
                                                                     "no_cluster|overflow|rq_direct|retry|timeout)")
        counters = [line for line in stats.decode().splitlines() if not line.endswith(": 0")]
        raise AssertionError((load.statuses, load.errors, load.bad, counters))
    status = await f.status()
    service = status["services"]["hello"]
    assert service["latest_ready"] == service["latest_created"] == f"hello-{templates:05d}"


def _check_state(f: FerryProcess, templates: int) -> None:
    db = sqlite3.connect(f"file:{f.workdir / '.ferry' / 'state.db'}?mode=ro", uri=True)
    try:
        generations = [g for (g,) in db.execute("SELECT generation FROM revisions ORDER BY generation")]
        assert generations == list(range(1, templates + 1)), generations  # none missing, none twice
        (latest,) = db.execute("SELECT latest_ready FROM services WHERE name = 'hello'").fetchone()
        assert latest in {f"hello-{g:05d}" for g in generations}
        row = db.execute("SELECT state FROM rollouts WHERE service = 'hello'").fetchone()
        if row is not None:
            assert '"candidate"' in row[0]
    finally:
        db.close()


def _stored_rollout(f: FerryProcess) -> dict | None:
    """The rollout's state as the state folder holds it (the engine's JSON), None before the first rollout."""
    db = sqlite3.connect(f"file:{f.workdir / '.ferry' / 'state.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM rollouts WHERE service = 'hello'").fetchone()
        return json.loads(row[0]) if row is not None else None
    finally:
        db.close()


ROLLOUT_FIELDS = ("stable", "candidate", "strategy", "phase", "step", "weight", "started_at", "reason")


def _check_rollout_resumed(at_death: dict | None, now: dict | None) -> None:
    """The restarted ferry carries on the rollout it found: the same one, its history extended and nothing of it
    lost, an active one resumed at the very step and weight it was at (then free to step on, since its clock runs
    while we look), an ended one unchanged; or, if the file has moved on to a newer template meanwhile, a rollout
    of that newer candidate."""
    if at_death is None:
        return  # no rollout had started: the new ferry may start one, from scratch
    assert now is not None, f"the rollout in the state folder was lost: {at_death}"
    if now["candidate"] != at_death["candidate"]:
        assert _generation(now["candidate"]) > _generation(at_death["candidate"]), (at_death, now)
        return
    recorded = at_death["history"]
    assert now["history"][:len(recorded)] == recorded, (at_death, now)  # nothing recorded is lost or rewritten
    assert {k: now[k] for k in ("stable", "strategy", "started_at")} == \
        {k: at_death[k] for k in ("stable", "strategy", "started_at")}  # the same rollout, not a new one
    if at_death["phase"] in ("progressing", "awaiting-promotion"):
        resumed = now["history"][len(recorded)]
        assert (resumed["event"], resumed["step"], resumed["weight"]) == \
            ("resumed", at_death["step"], at_death["weight"]), (at_death, now)
        assert now["step"] >= at_death["step"], (at_death, now)
    else:  # ended: a restart changes nothing of it
        assert {k: now[k] for k in ROLLOUT_FIELDS} == {k: at_death[k] for k in ROLLOUT_FIELDS}, (at_death, now)
        assert now["history"] == recorded


def _generation(revision: str) -> int:
    return int(revision.rpartition("-")[2])


async def _latest_ready_is_ready(f: FerryProcess) -> bool:
    """The service's latest-ready revision is one the status shows ready (with ready instances)."""
    status = await f.status()
    latest = status["services"]["hello"]["latest_ready"]
    assert latest is not None and latest in status["revisions"], (latest, sorted(status["revisions"]))
    return status["revisions"][latest]["state"] == "ready"


async def _rollout_done(f: FerryProcess) -> bool:
    rollout = (await f.status())["services"]["hello"]["rollout"]
    return rollout is None or not rollout["active"]


async def test_a_file_changed_while_ferry_was_down_is_an_ordinary_change_once_it_is_back(ferry):
    """The last applied configuration is served first (nothing moves), then the file: the new revision starts,
    the route moves once it is ready, and the old instance is drained and stopped, with no request failing."""
    f = ferry()
    before = await running(f, hello("v1"))
    async with Load(f.gateway, HOST, concurrency=8) as load:
        await load.wait_for(100)
        await f.kill()
        f.write_routes(hello("v2"))
        await load.wait_for(100)
        await f.start()
        await wait_until(lambda: _serves(f, "hello-00002"), 30, "v2")
        await wait_until(lambda: not _alive(before["instance hello-00001/1"]), 30, "the old instance to stop")
        await load.wait_for(100)
    assert load.failures == 0, (load.statuses, load.errors, load.bad)
    after = f.dataplane()
    assert after["envoy ferry-local"] == before["envoy ferry-local"] and "instance hello-00001/1" not in after
