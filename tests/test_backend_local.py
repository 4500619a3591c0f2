"""LocalProcessBackend against real processes on 127.0.0.1 (the example app and tiny python -c scripts)."""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from ferry.backends.base import Endpoint, InstanceCounts, Workload
from ferry.backends.local import LocalProcessBackend
from ferry.dataplane import Register

from .helpers import wait_until

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "examples" / "hello"
REV = "hello-00001"


def workload(revision: str = REV, *, readiness_path: str | None = "/healthz", **env: str) -> Workload:
    return Workload(
        service="hello", revision=revision, command=(sys.executable, "app.py"), cwd=APP_DIR, env=env,
        readiness_path=readiness_path,
    )


class Recorder:
    """Remembers every endpoints callback and drain call, in one ordered event list."""

    def __init__(self) -> None:
        self.current: dict[str, tuple[Endpoint, ...]] = {}
        self.events: list[tuple] = []
        self.on_join = None  # optional sync check run when endpoints are added

    def on_endpoints(self, revision: str, eps: tuple[Endpoint, ...]) -> None:
        added = set(eps) - set(self.current.get(revision, ()))
        self.current[revision] = eps
        self.events.append(("endpoints", revision, eps))
        if self.on_join:
            for ep in added:
                self.on_join(ep)

    async def drain(self, revision: str, ep: Endpoint) -> None:
        self.events.append(("drain", revision, ep))


def pid_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (zombies count as dead but unreaped: we check both)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def sync_get(ep: Endpoint, path: str) -> int:
    conn = http.client.HTTPConnection(ep.host, ep.port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture
async def make_backend(tmp_path):
    backends: list[LocalProcessBackend] = []

    def make(**kw) -> tuple[LocalProcessBackend, Recorder]:
        rec = Recorder()
        kw.setdefault("log_dir", tmp_path / "logs")
        kw.setdefault("drain", rec.drain)
        b = LocalProcessBackend(rec.on_endpoints, **kw)
        backends.append(b)
        return b, rec

    try:
        yield make
    finally:
        for b in backends:
            await b.aclose()


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def test_scale_up_serves_its_revision_with_the_env_contract(make_backend, client, tmp_path):
    b, rec = make_backend()
    wl = workload(MESSAGE="hi there")
    await b.scale(wl, 2)
    assert b.counts(REV) == InstanceCounts(ready=0, total=2, started=0)  # returns without waiting for readiness
    await wait_until(lambda: len(b.endpoints(REV)) == 2, what="2 ready endpoints")
    eps = b.endpoints(REV)
    assert rec.current[REV] == eps and b.counts(REV) == InstanceCounts(ready=2, total=2, started=2)
    assert len({ep.port for ep in eps}) == 2 and all(ep.host == "127.0.0.1" for ep in eps)

    pids = {info.endpoint: info.pid for info in b.instances(REV)}
    for ep in eps:
        async with client.get(f"http://{ep}/some/path") as r:
            assert r.status == 200 and await r.text() == f"{REV}: hi there\n"
            assert r.headers["x-revision"] == REV
        async with client.get(f"http://{ep}/env") as r:
            assert await r.json() == {
                "PORT": str(ep.port), "K_SERVICE": "hello", "K_CONFIGURATION": "hello", "K_REVISION": REV,
                "MESSAGE": "hi there", "PID": pids[ep],
            }

    await b.scale(wl, 2)  # idempotent
    assert len(b.instances(REV)) == 2 and b.endpoints(REV) == eps
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [f"{REV}-1.log", f"{REV}-2.log"]


async def test_http_readiness_waits_for_200_not_just_an_open_port(make_backend):
    b, rec = make_backend()
    health_at_join: list[int] = []
    rec.on_join = lambda ep: health_at_join.append(sync_get(ep, "/healthz"))
    await b.scale(workload(READY_DELAY="1.5"), 1)

    await wait_until(lambda: b.instances(REV)[0].endpoint is not None, what="instance spawned")
    port = b.instances(REV)[0].endpoint.port
    await wait_until(lambda: tcp_open(port), what="port open")
    assert b.endpoints(REV) == () and b.counts(REV) == InstanceCounts(ready=0, total=1, started=1)  # listening, /healthz 503

    await wait_until(lambda: len(b.endpoints(REV)) == 1, what="ready")
    assert health_at_join == [200]


@pytest.mark.parametrize("readiness_path", ["/healthz", None])
async def test_slow_cold_start_joins_only_once_it_answers(make_backend, readiness_path):
    b, rec = make_backend()
    answered_at_join: list[int] = []
    rec.on_join = lambda ep: answered_at_join.append(sync_get(ep, "/"))
    await b.scale(workload(STARTUP_DELAY="0.7", readiness_path=readiness_path), 1)
    await wait_until(lambda: b.instances(REV)[0].endpoint is not None, what="instance spawned")
    assert not tcp_open(b.instances(REV)[0].endpoint.port) and b.endpoints(REV) == ()

    await wait_until(lambda: len(b.endpoints(REV)) == 1, what="ready")
    assert answered_at_join == [200]
    assert [e for e in rec.events if e[0] == "endpoints"] == [("endpoints", REV, b.endpoints(REV))]


async def test_crash_leaves_endpoints_at_once_then_restarts_and_rejoins(make_backend, caplog):
    caplog.set_level(logging.INFO, logger="ferry.backends.local")
    b, rec = make_backend()
    await b.scale(workload(), 2)
    await wait_until(lambda: len(b.endpoints(REV)) == 2, what="2 ready")
    victim, survivor = b.instances(REV)

    t0 = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    await wait_until(lambda: rec.current[REV] == (survivor.endpoint,), timeout=2, what="victim out of endpoints")
    assert time.monotonic() - t0 < 1.0  # observed via proc.wait(), not a slow health probe
    assert (b.counts(REV).ready, b.counts(REV).total) == (1, 2)

    await wait_until(lambda: len(b.endpoints(REV)) == 2, what="restarted instance rejoins")
    restarted = next(i for i in b.instances(REV) if i.index == victim.index)
    assert restarted.restarts == 1 and restarted.pid != victim.pid and restarted.ready
    assert b.counts(REV).started == 3  # two, then the restart
    assert not pid_exists(victim.pid)

    (crash,) = [r for r in caplog.records if r.levelno == logging.WARNING and "exited unexpectedly" in r.getMessage()]
    assert crash.revision == REV and crash.pid == victim.pid and crash.exit_code == -signal.SIGKILL
    assert f"{REV}: listening on" in crash.log_tail


async def test_failing_probes_take_an_instance_out_and_success_brings_it_back(make_backend):
    b, rec = make_backend(liveness_interval=0.05)
    await b.scale(workload(), 1)
    await wait_until(lambda: len(b.endpoints(REV)) == 1, what="ready")
    (inst,) = b.instances(REV)
    os.kill(inst.pid, signal.SIGSTOP)  # alive but unresponsive: only probes can tell
    try:
        await wait_until(lambda: b.endpoints(REV) == (), timeout=5, what="out after 3 failed probes")
        assert b.counts(REV) == InstanceCounts(ready=0, total=1, started=1)
    finally:
        os.kill(inst.pid, signal.SIGCONT)
    await wait_until(lambda: b.endpoints(REV) == (inst.endpoint,), timeout=5, what="back after a good probe")
    assert b.instances(REV)[0].pid == inst.pid and b.instances(REV)[0].restarts == 0


async def test_scale_down_drains_before_sigterm_and_finishes_in_flight_requests(make_backend, client, caplog):
    caplog.set_level(logging.INFO, logger="ferry.backends.local")
    seen_at_drain: dict = {}

    async def drain(revision: str, ep: Endpoint) -> None:
        rec.events.append(("drain", revision, ep))
        seen_at_drain.update(
            listed=ep in rec.current[revision], alive=pid_alive(victim.pid),
            sigtermed="SIGTERM" in victim.log_path.read_text(),
        )

    b, rec = make_backend(drain=drain)
    wl = workload(LATENCY_MS="800")
    await b.scale(wl, 2)
    await wait_until(lambda: len(b.endpoints(REV)) == 2, what="2 ready")
    survivor, victim = b.instances(REV)  # both ready: the newest goes first

    async def inflight() -> bool:
        async with client.get(f"http://{victim.endpoint}/stats") as r:
            return (await r.json())["inflight"] >= 1

    slow = asyncio.create_task(client.get(f"http://{victim.endpoint}/slow"))
    try:
        await wait_until(inflight, what="slow request in flight")
        await b.scale(wl, 1)
        assert b.endpoints(REV) == (survivor.endpoint,)  # left synchronously, before scale() returned
        assert b.counts(REV) == InstanceCounts(ready=1, total=1, started=2)
        await wait_until(lambda: len(b.instances(REV)) == 1, what="victim stopped")
        assert not pid_exists(victim.pid)
        async with await slow as r:
            assert r.status == 200 and await r.text() == f"{REV}: hello\n"
    finally:
        slow.cancel()

    left = rec.events.index(("endpoints", REV, (survivor.endpoint,)))
    drained = rec.events.index(("drain", REV, victim.endpoint))
    assert left < drained
    assert seen_at_drain == {"listed": False, "alive": True, "sigtermed": False}
    log_text = victim.log_path.read_text()
    draining = re.search(r"SIGTERM, draining (\d+) in-flight", log_text)  # the slow one (+ maybe a /stats poll)
    assert draining and int(draining[1]) >= 1 and log_text.rstrip().endswith("exiting")
    (stopped,) = [r for r in caplog.records if "instance stopped" in r.getMessage()]
    assert stopped.pid == victim.pid and stopped.exit_code == 0
    assert [i.pid for i in b.instances(REV)] == [survivor.pid] and pid_alive(survivor.pid)


async def test_scale_down_prefers_not_ready_instances(make_backend):
    b, rec = make_backend()
    await b.scale(workload(READY_DELAY="60"), 1)  # the oldest never gets ready
    await wait_until(lambda: b.instances(REV)[0].pid is not None, what="spawned")
    await b.scale(workload(), 2)  # the newer one uses the fast template
    await wait_until(lambda: len(b.endpoints(REV)) == 1, what="newer ready")
    old, new = b.instances(REV)
    await b.scale(workload(), 1)
    await wait_until(lambda: len(b.instances(REV)) == 1, what="one stopped")
    assert b.instances(REV)[0].pid == new.pid and b.endpoints(REV) == (new.endpoint,)
    assert not any(e[0] == "drain" for e in rec.events)  # never announced, so nothing to drain


async def test_stop_and_aclose_leave_no_process(make_backend):
    b, rec = make_backend()
    await b.scale(workload("a-00001"), 2)
    await b.scale(workload("b-00001"), 1)
    await wait_until(lambda: len(b.endpoints("a-00001")) == 2 and len(b.endpoints("b-00001")) == 1, what="ready")
    a_pids = [i.pid for i in b.instances("a-00001")]
    b_pids = [i.pid for i in b.instances("b-00001")]
    a_eps = b.endpoints("a-00001")

    await b.stop("a-00001")  # returns once they have exited
    assert not any(map(pid_exists, a_pids)) and all(map(pid_alive, b_pids))
    assert rec.current["a-00001"] == () and b.counts("a-00001") == InstanceCounts(0, 0, started=0)
    assert sorted(e[2] for e in rec.events if e[0] == "drain") == sorted(a_eps)

    await b.aclose()
    assert not any(map(pid_exists, a_pids + b_pids))
    assert rec.current == {"a-00001": (), "b-00001": ()}
    with pytest.raises(RuntimeError):
        await b.scale(workload(), 1)


async def test_aclose_cancelled_midway_still_leaves_no_process(make_backend):
    entered = asyncio.Event()

    async def stuck_drain(revision: str, ep: Endpoint) -> None:
        entered.set()
        await asyncio.Event().wait()

    b, rec = make_backend(drain=stuck_drain)
    await b.scale(workload(), 2)
    await wait_until(lambda: len(b.endpoints(REV)) == 2, what="ready")
    pids = [i.pid for i in b.instances(REV)]

    closing = asyncio.create_task(b.aclose())
    await asyncio.wait_for(entered.wait(), 5)
    assert all(map(pid_alive, pids))  # draining: not signalled yet
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert not any(map(pid_exists, pids))


async def test_instance_ignoring_sigterm_is_killed_after_the_grace_period(make_backend, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ferry.backends.local")
    script = (
        "import os, signal, socket, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('ignoring SIGTERM', flush=True))\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen()\n"
        "print('listening', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    b, rec = make_backend(stop_grace_s=0.5)
    wl = Workload(service="stubborn", revision="stubborn-00001", command=(sys.executable, "-c", script), cwd=tmp_path)
    await b.scale(wl, 1)
    await wait_until(lambda: len(b.endpoints(wl.revision)) == 1, what="ready (TCP)")
    (inst,) = b.instances(wl.revision)

    t0 = time.monotonic()
    await b.stop(wl.revision)
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 5 and not pid_exists(inst.pid)
    assert "ignoring SIGTERM" in inst.log_path.read_text()
    assert any("ignored SIGTERM" in r.getMessage() for r in caplog.records)
    (stopped,) = [r for r in caplog.records if "instance stopped" in r.getMessage()]
    assert stopped.exit_code == -signal.SIGKILL


async def test_command_resolution_relative_to_cwd_and_on_path(make_backend, tmp_path, client):
    bindir = tmp_path / "svc" / "bin"
    bindir.mkdir(parents=True)
    serve = bindir / "serve"
    serve.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{APP_DIR / "app.py"}"\n')
    serve.chmod(0o755)
    b, rec = make_backend()
    relative = Workload(service="hello", revision="rel-00001", command=("bin/serve",), cwd=tmp_path / "svc",
                        readiness_path="/healthz")
    on_path = Workload(service="hello", revision="path-00001", command=("serve",), cwd=tmp_path,
                       env={"PATH": str(bindir)}, readiness_path="/healthz")
    await b.scale(relative, 1)
    await b.scale(on_path, 1)
    await wait_until(lambda: b.endpoints("rel-00001") and b.endpoints("path-00001"), what="both ready")
    for rev in ("rel-00001", "path-00001"):
        async with client.get(f"http://{b.endpoints(rev)[0]}/") as r:
            assert await r.text() == f"{rev}: hello\n"


async def test_a_sigkilled_ferrys_instances_serve_on_and_the_next_one_adopts_them(tmp_path, client):
    """Live restore, the backend's part: instances outlive the process that started them, and a backend over
    the same register takes them back as they are: the same process, served at once, nothing started twice."""
    script = f"""
import asyncio, sys
from pathlib import Path
from ferry.backends.base import Workload
from ferry.backends.local import LocalProcessBackend
from ferry.dataplane import Register
from ferry.dataplane import Register

async def main():
    def on(rev, eps):
        if eps:
            print(b.instances(rev)[0].pid, eps[0].port, flush=True)
    b = LocalProcessBackend(on, log_dir=Path(sys.argv[1]), register=Register(Path(sys.argv[2])))
    await b.scale(Workload(service="hello", revision="{REV}", command=(sys.executable, "app.py"),
                           cwd=Path({str(APP_DIR)!r}), readiness_path="/healthz"), 1)
    await asyncio.Event().wait()

asyncio.run(main())
"""
    state = tmp_path / "state"
    ferry = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(tmp_path / "logs"), str(state), stdout=asyncio.subprocess.PIPE
    )
    app_pid = None
    register = None
    try:
        app_pid, port = map(int, (await asyncio.wait_for(ferry.stdout.readline(), 15)).split())
        ferry.kill()
        await ferry.wait()
        async with client.get(f"http://127.0.0.1:{port}/") as r:  # serving on, with no ferry at all
            assert r.status == 200

        register = Register(state)
        rec = Recorder()
        b = LocalProcessBackend(rec, log_dir=tmp_path / "logs", register=register)
        assert await b.recover() == 1
        assert b.replicas(REV) == 1 and b.endpoints(REV) == (Endpoint("127.0.0.1", port),)
        await b.scale(workload(), 1)
        assert [(i.pid, i.ready) for i in b.instances(REV)] == [(app_pid, True)]  # nothing started twice
        await b.aclose()
        assert not pid_alive(app_pid) and register.entries() == []
    finally:
        if ferry.returncode is None:
            ferry.kill()
            await ferry.wait()
        if app_pid and pid_alive(app_pid):
            os.killpg(app_pid, signal.SIGKILL)
        if register is not None:
            register.close()


async def test_an_instance_that_died_while_ferry_was_away_is_replaced_and_a_reused_pid_is_not_adopted(tmp_path):
    from ferry.dataplane import INSTANCE, Proc, identify

    register = Register(tmp_path / "state")
    try:
        # Recorded: two instances of REV at scale 2. One is gone; the other's pid now belongs to another process
        # (this test's own: same pid, but it started at another time).
        me = identify(os.getpid())
        stranger = Proc(me.pid, me.start_time - 1, me.boot, me.argv)
        for index, proc in ((1, Proc(2**22 + 7, 1, me.boot)), (2, stranger)):
            register.put(INSTANCE, f"{REV}/{index}", proc, revision=REV, index=index, port=1, digest="x",
                         readiness="/healthz", log=str(tmp_path / f"{index}.log"))
        register.set_scale(REV, 2)
        b = LocalProcessBackend(Recorder(), log_dir=tmp_path / "logs", register=register)
        assert await b.recover() == 0
        assert register.entries() == [] and b.replicas(REV) == 2
        await b.scale(workload(), 2)  # the controller asks for what the last ferry decided
        await wait_until(lambda: len(b.endpoints(REV)) == 2, what="two new instances ready")
        assert os.getpid() not in {i.pid for i in b.instances(REV)}
        assert len(register.entries(INSTANCE)) == 2
        await b.aclose()
    finally:
        register.close()
