"""How fast does a change reach traffic through Envoy, and how much does ferry cost, at 10 .. 10,000 services?

Prints numbers; it is not a test. Usage:

    python bench/convergence.py [--sizes 10,1000,10000] [--repeat 5]

For each size N it runs `ferry up` (a real subprocess with its real local Envoy, free loopback ports only,
state in a temporary folder) in front of two example apps that ferry does not manage (template.endpoints):
app "a" and app "b", which answer every request with the header x-revision: a / b.

1. File 1 gives every service s<i> one revision s<i>-a; file 2 adds s<i>-b (0 %, tagged `next`), so the
   snapshot holds N services x 2 revisions with clusters. Reported: time from ferry's start to the first
   convergence, and load_ms/apply_ms of the second apply (the full snapshot build).
2. Weights change: service k switched to 100 % s<k>-b by rewriting the whole file (temp file + os.replace,
   as editors do); timed from os.replace() to the first response with x-revision b for s<k>.localhost, polled
   back to back on one keep-alive connection. Also ferry's load_ms/apply_ms of that change.
3. Endpoint-only change: POST /debug/endpoints moves revision s<k>-a (100 % of s<k>) to app b's address;
   timed from the POST to the first response with x-revision b.
4. ferry_xds_push_latency_seconds (change published -> gateway ACK) sum/count deltas over steps 2 and 3.
5. ferry's peak RSS (VmHWM) and Envoy's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (bench helpers, not a package)
    Processes,
    api_token,
    find_envoy,
    free_port,
    log,
    machine,
    med,
    mib,
    mmm,
    proc_status_kib,
)

ROOT = Path(__file__).resolve().parent.parent
HELLO_APP = ROOT / "examples" / "hello" / "app.py"
FAST_APP = ROOT / "bench" / "fast_app.py"

# Targets printed with the results, and the figure measured on main when the performance issue was filed
# (2-core machine; "before").
TARGET_CONVERGE_MS = {1000: 100.0, 10000: 250.0}  # weights change -> served, median
BEFORE_CONVERGE_MS = {10000: 843.0}
TARGET_LOAD_APPLY_MS = {10000: 100.0}  # ferry's own part of a weights change, median
TARGET_START_S = {10000: 10.0}  # ferry start -> converged
BEFORE_START_S = {10000: 21.8}
TARGET_FERRY_RSS_MIB = {1000: 150.0, 10000: 250.0}  # peak (VmHWM)
TARGET_ENVOY_RSS_MIB = {10000: 800.0}
BEFORE_ENVOY_RSS_MIB = {10000: 1638.0}
TARGET_STATUS_MS = {10000: 200.0}  # GET /status answered, the slowest of 3 (the first follows file 2's apply)
BEFORE_STATUS_MS = {10000: 991.0}
TARGET_STALL_MS = 20  # no stretch of ferry's event loop blocked longer than this while /status is answered


# -- routes files ----------------------------------------------------------------------------------------


def busy_services(count: int, *, second: bool) -> list[str]:
    """`count` services that ferry runs and autoscales (bench/fast_app.py, 1 to 3 instances); in file 2 the first
    gets a new revision whose canary never concludes (it needs more requests than it ever sees), so its analysis
    reads the gateway's stats every second while the bench measures, as the autoscaler does for all of them."""
    lines = []
    for j in range(count):
        generation = 2 if second and j == 0 else 1
        lines.append(f"  busy{j}:")
        lines.append(f"    template: {{command: [{sys.executable}, {FAST_APP}], readiness: {{path: /healthz}}, "
                     f"env: {{GENERATION: '{generation}'}}, scale: {{min: 1, max: 3}}}}")
        lines.append("    rollout: {strategy: canary, steps: [10, 100], interval: 1s, "
                     "analysis: {minRequests: 1000000000}}")
    return lines


def routes_text(n: int, gateway: int, port_a: int, port_b: int, *, second: bool, switched: set[int],
                busy: int = 0) -> str:
    lines = [f"gateway: {{listen: 127.0.0.1:{gateway}, domain: localhost}}", "services:", *busy_services(busy, second=second)]
    a, b = f'["127.0.0.1:{port_a}"]', f'["127.0.0.1:{port_b}"]'
    for i in range(n):
        lines.append(f"  s{i}:")
        if not second:
            lines.append(f"    template: {{name: s{i}-a, endpoints: {a}}}")
            continue
        lines.append(f"    template: {{name: s{i}-b, endpoints: {b}}}")
        pa, pb = (0, 100) if i in switched else (100, 0)
        lines.append(
            f"    traffic: [{{revision: s{i}-a, percent: {pa}}}, {{revision: s{i}-b, percent: {pb}, tag: next}}]"
        )
    return "\n".join(lines) + "\n"


def spread(candidates: list[int], count: int) -> list[int]:
    """`count` items spread evenly over `candidates`, first and last included."""
    if count >= len(candidates):
        return list(candidates)
    if count == 1:
        return [candidates[0]]
    return sorted({candidates[round(j * (len(candidates) - 1) / (count - 1))] for j in range(count)})


# -- metrics ---------------------------------------------------------------------------------------------

_LAG = re.compile(r'^ferry_event_loop_lag_seconds_(?:bucket\{le="([^"]+)"\}|count)\s+(\S+)', re.MULTILINE)


def loop_lag(metrics_text: str) -> dict[str, float]:
    """ferry_event_loop_lag_seconds: le -> cumulative count, and "count"."""
    return {le or "count": float(value) for le, value in _LAG.findall(metrics_text)}


def stalls_over(before: dict[str, float], after: dict[str, float], le: str = "0.02") -> int:
    """How many lag samples between the two readings were later than `le` seconds."""
    over = lambda m: m.get("count", 0.0) - m.get(le, 0.0)  # noqa: E731
    return int(over(after) - over(before))


_HIST = re.compile(r'^ferry_xds_push_latency_seconds_(sum|count)\{type="(\w+)"\}\s+(\S+)', re.MULTILINE)


def push_latency(metrics_text: str) -> dict[str, tuple[float, float]]:
    """type -> (sum seconds, count)."""
    out: dict[str, list[float]] = {}
    for kind, type_, value in _HIST.findall(metrics_text):
        entry = out.setdefault(type_, [0.0, 0.0])
        entry[0 if kind == "sum" else 1] = float(value)
    return {t: (s, c) for t, (s, c) in out.items()}


def push_delta(before: dict, after: dict) -> dict[str, tuple[float, int]]:
    """type -> (mean ms, pushes acked) over the interval, for types that saw any."""
    out = {}
    for type_, (s1, c1) in after.items():
        s0, c0 = before.get(type_, (0.0, 0.0))
        if c1 > c0:
            out[type_] = ((s1 - s0) / (c1 - c0) * 1000, int(c1 - c0))
    return out


# -- one size --------------------------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    first_converge_s: float = 0.0
    first_answer_s: float = 0.0
    second_converge_s: float = 0.0
    second_load_ms: float = 0.0
    second_apply_ms: float = 0.0
    weights_ms: list[float] = field(default_factory=list)
    weights_load_ms: list[float] = field(default_factory=list)
    weights_apply_ms: list[float] = field(default_factory=list)
    weights_applied_ms: list[float] = field(default_factory=list)  # os.replace -> apply finished (wall clock)
    weights_polls: list[int] = field(default_factory=list)
    endpoints_ms: list[float] = field(default_factory=list)
    weights_push_ms: list[float] = field(default_factory=list)  # per change, from the histogram's sum delta
    endpoints_push_ms: list[float] = field(default_factory=list)
    endpoints_polls: list[int] = field(default_factory=list)
    push_weights: dict = field(default_factory=dict)
    push_endpoints: dict = field(default_factory=dict)
    status_ms: list[float] = field(default_factory=list)
    status_bytes: int = 0
    metrics_ms: float | None = None  # GET /metrics at the end (after every step: the busy services' series)
    metrics_bytes: int = 0
    status_stalls: int | None = None  # samples of ferry's event-loop lag over 20 ms while /status was answered
    status_lag_le: str = ""  # the smallest lag bucket that held every sample then
    ferry_hwm_after_start_kib: int | None = None
    ferry_hwm_kib: int | None = None
    ferry_rss_kib: int | None = None
    envoy_rss_kib: int | None = None
    envoy_hwm_kib: int | None = None
    weights_services: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    endpoints_services: list[int] = field(default_factory=list)


class Bench:
    def __init__(self, n: int, repeat: int, workdir: Path, procs: Processes, poll_sleep_s: float, delta: bool = False,
                 busy: int = 0):
        self.n, self.repeat, self.workdir, self.procs = n, repeat, workdir, procs
        self.busy = busy
        self.delta = delta
        self.poll_sleep_s = poll_sleep_s
        self.routes = workdir / "routes.yaml"
        self.gateway, self.api_port, self.xds, self.admin = free_port(), free_port(), free_port(), free_port()
        self.port_a, self.port_b = free_port(), free_port()
        self.activator = free_port()  # not 8012: other ferries may run on this machine
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway}/"
        self.log_path = workdir / "ferry.log"
        self.ferry: subprocess.Popen | None = None
        self.switched: set[int] = set()
        self.result = Result(n)
        self.client: aiohttp.ClientSession | None = None  # the gateway poller: one keep-alive connection

    # -- helpers

    def write_routes(self, *, second: bool) -> float:
        """Write the file atomically; returns perf_counter() taken just before os.replace()."""
        text = routes_text(self.n, self.gateway, self.port_a, self.port_b, second=second, switched=self.switched,
                           busy=self.busy)
        tmp = self.routes.with_suffix(".tmp")
        tmp.write_text(text)
        started = time.perf_counter()
        os.replace(tmp, self.routes)
        return started

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.ferry is not None and self.ferry.poll() is not None:
            raise RuntimeError(f"ferry exited with {self.ferry.returncode}; log tail:\n{self.log_tail()}")

    async def status(self, session: aiohttp.ClientSession) -> dict:
        async with session.get(f"{self.api}/status", timeout=aiohttp.ClientTimeout(total=60)) as response:
            response.raise_for_status()
            return await response.json()

    async def metrics(self, session: aiohttp.ClientSession) -> dict:
        return push_latency(await self.metrics_text(session))

    async def metrics_text(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"{self.api}/metrics") as response:
            return await response.text()

    async def busy_load(self, client: aiohttp.ClientSession, rate: float = 20.0) -> None:
        """`rate` requests/s to each busy service until cancelled, so autoscaling and the canary read real counts."""
        hosts = [f"busy{j}.localhost" for j in range(self.busy)]
        while True:
            for host in hosts:
                try:
                    async with client.get(self.gateway_url, headers={"Host": host}) as response:
                        await response.read()
                except (aiohttp.ClientError, OSError):
                    pass
            await asyncio.sleep(1 / rate)

    def converged(self, status: dict) -> bool:
        services = status["services"]
        connected = [g for g in status["gateways"] if g["connected"]]
        return (
            len(services) == self.n + self.busy
            and all(s["routed"] for s in services.values())
            and len(connected) >= 1
            and all(g["in_sync"] for g in connected)
        )

    async def wait_converged(
        self, session, timeout: float, *, applied_after: float | None = None, probe: tuple[str, str] | None = None
    ) -> tuple[dict, float]:
        """Until /status shows every service routed and the gateway in sync (after an apply newer than
        `applied_after`); returns the status and the perf_counter() at which that status was asked for.

        ferry builds /status synchronously on its event loop (about 1 s at 10,000 services), so polling it
        back to back would delay the very pushes and ACKs being waited for. Hence: first wait, cheaply,
        for the gateway to serve `probe` (host, revision), and keep /status polls to at most half of
        ferry's time (the interval grows with how long the previous call took). The time reported is when
        the converged /status was asked for, so it can be late by up to one such interval.
        """
        deadline = time.monotonic() + timeout
        if probe is not None:
            await self.first_revision(self.client, probe[0], probe[1], timeout, check=True)
        interval = 0.02
        while True:
            self.check_alive()
            asked = time.perf_counter()
            try:
                status = await self.status(session)
            except (aiohttp.ClientError, OSError, TimeoutError):
                status = None
            took = time.perf_counter() - asked
            if status is not None:
                config = status["config"]
                last = config.get("last_applied") or 0
                if config.get("last_error") and (applied_after is None or last <= applied_after):
                    raise RuntimeError(f"ferry rejected the file: {config['last_error']}")
                fresh = applied_after is None or last > applied_after
                if fresh and self.converged(status):
                    return status, asked
            if time.monotonic() > deadline:
                raise TimeoutError(f"no convergence within {timeout} s; log tail:\n{self.log_tail()}")
            await asyncio.sleep(max(interval, took))  # /status at most half of ferry's time

    async def wait_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.log_path.read_text(errors="replace"):
            self.check_alive()
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def wait_applied(self, session, applied_after: float, timeout: float) -> bool:
        """Whether ferry applies a file newer than `applied_after` within `timeout` (polls /status gently)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            asked = time.perf_counter()
            config = (await self.status(session))["config"]
            if (config.get("last_applied") or 0) > applied_after:
                return True
            if config.get("last_error"):
                raise RuntimeError(f"ferry rejected the file: {config['last_error']}")
            await asyncio.sleep(max(0.05, time.perf_counter() - asked))
        return False

    async def wait_acked(self, session, before: dict, type_: str, timeout: float = 60) -> dict:
        """Until the gateway has ACKed one more `type_` push than in `before` (/metrics is cheap to poll)."""
        deadline = time.monotonic() + timeout
        want = before.get(type_, (0.0, 0.0))[1] + 1
        while True:
            self.check_alive()
            now = await self.metrics(session)
            if now.get(type_, (0.0, 0.0))[1] >= want:
                return now
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {type_} ACK within {timeout} s; log tail:\n{self.log_tail()}")
            await asyncio.sleep(0.005)

    async def first_revision(
        self, client: aiohttp.ClientSession, host: str, want: str, timeout: float, *, check: bool = False
    ) -> tuple[float, int]:
        """Poll back to back until a response carries x-revision `want`; (perf_counter at that response, polls)."""
        deadline = time.perf_counter() + timeout
        polls = 0
        headers = {"Host": host}
        while True:
            polls += 1
            try:
                async with client.get(self.gateway_url, headers=headers) as response:
                    await response.read()
                    if response.headers.get("x-revision") == want:
                        return time.perf_counter(), polls
            except (aiohttp.ClientError, OSError):
                pass
            if check:  # a slow wait (start-up): watch ferry, and leave the CPU to it
                self.check_alive()
                await asyncio.sleep(0.005)
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError(f"{host} never answered from {want} within {timeout} s")
            if self.poll_sleep_s:
                await asyncio.sleep(self.poll_sleep_s)

    async def answers(self, client, host: str) -> str:
        async with client.get(self.gateway_url, headers={"Host": host}) as response:
            await response.read()
            return response.headers.get("x-revision", f"(status {response.status})")

    # -- the run

    async def run(self) -> Result:
        r = self.result
        n = self.n
        for name, port in (("a", self.port_a), ("b", self.port_b)):
            env = {**os.environ, "PORT": str(port), "K_REVISION": name, "MESSAGE": name}
            self.procs.start(f"app {name}", [sys.executable, str(HELLO_APP)], env=env, stdout=subprocess.DEVNULL)

        self.write_routes(second=False)
        token_args, auth = api_token(self.workdir)
        argv = [
            sys.executable, "-m", "ferry", "up", str(self.routes),
            "--state", str(self.workdir / "state.db"),
            "--api", f"127.0.0.1:{self.api_port}", "--xds", f"127.0.0.1:{self.xds}",
            "--admin", f"127.0.0.1:{self.admin}", "--activator", f"127.0.0.1:{self.activator}", "--test-hooks",
            # Nothing is retired here, but a 0 % revision must never have its cluster dropped mid-bench
            # (that would add CDS/EDS pushes to the numbers of steps 3 and 4).
            "--cluster-linger", "3600",
            *([] if self.delta else ["--sotw"]),
            *token_args,
        ]
        log(f"N={n}: starting ferry (api {self.api}, gateway {self.gateway})")
        started = time.perf_counter()
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - once, before anything is timed
            self.ferry = self.procs.start("ferry", argv, stdout=out, stderr=out, cwd=self.workdir)
        envoy_pid = None

        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, headers=auth) as api, aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=1)
        ) as client, aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=2)) as busy_client:
            self.client = client
            load = asyncio.create_task(self.busy_load(busy_client)) if self.busy else None
            # 1. first convergence, then file 2 (N services x 2 revisions).
            last_host = f"s{n - 1}.localhost"
            await self.first_revision(client, last_host, "a", 120 + n / 50, check=True)
            r.first_answer_s = time.perf_counter() - started
            status, asked = await self.wait_converged(api, 120 + n / 50)
            r.first_converge_s = asked - started
            envoy_pid = find_envoy(self.ferry.pid, self.admin)
            if envoy_pid:
                self.procs.envoy_pids.add(envoy_pid)
            log(f"N={n}: first convergence {r.first_converge_s:.2f} s; applying file 2")

            # ferry starts watching the file only after its Envoy's admin answers, which can be after the
            # gateway is already in sync: a save in between is never applied. Wait for "ferry is up" (the
            # watch starts on the next loop turn), and re-save if the file still goes unnoticed.
            await self.wait_log("ferry is up", 30)
            await asyncio.sleep(0.2)
            first_applied = status["config"]["last_applied"]
            t0 = self.write_routes(second=True)
            if not await self.wait_applied(api, first_applied, 5 + n / 1000):
                r.warnings.append(f"N={n}: file 2 was not applied within {5 + n / 1000:.0f} s of the save; saved it again")
                log(r.warnings[-1])
                t0 = self.write_routes(second=True)
            status, asked = await self.wait_converged(
                api, 120 + n / 50, applied_after=first_applied, probe=(f"next-{last_host}", "b")
            )
            r.second_converge_s = asked - t0
            r.second_load_ms = status["config"].get("load_ms", float("nan"))
            r.second_apply_ms = status["config"].get("apply_ms", float("nan"))
            r.ferry_hwm_after_start_kib = proc_status_kib(self.ferry.pid, "VmHWM")
            log(f"N={n}: file 2 converged in {r.second_converge_s:.2f} s "
                f"(load {r.second_load_ms} ms, apply {r.second_apply_ms} ms)")

            lag_before = loop_lag(await self.metrics_text(api))
            for _ in range(3):
                t = time.perf_counter()
                async with api.get(f"{self.api}/status") as response:
                    body = await response.read()
                r.status_ms.append((time.perf_counter() - t) * 1000)
                r.status_bytes = len(body)
            await asyncio.sleep(0.1)  # the lag watcher's next sample after the last answer
            lag_after = loop_lag(await self.metrics_text(api))
            if lag_after:  # (a ferry before the lag metric has none)
                r.status_stalls = stalls_over(lag_before, lag_after)
                r.status_lag_le = next((le for le in sorted((k for k in lag_after if k != "count"), key=float)
                                        if stalls_over(lag_before, lag_after, le) == 0), "+Inf")
            last_applied = json.loads(body)["config"]["last_applied"]
            del body

            # 2. weights change via the file. After each, wait for the RDS ACK on /metrics (cheap) before one
            # /status for the timings: polling /status would itself hold up ferry's event loop.
            k_weights = spread(list(range(n)), min(self.repeat, n // 2 or 1))
            k_endpoints = spread([i for i in range(n) if i not in k_weights], len(k_weights))
            r.weights_services, r.endpoints_services = k_weights, k_endpoints
            if len(k_weights) < self.repeat:
                log(f"N={n}: only {len(k_weights)} repeats (each needs a fresh service per step)")
            await asyncio.sleep(1)  # let ferry and Envoy settle
            m0 = await self.metrics(api)
            for k in k_weights:
                host = f"s{k}.localhost"
                got = await self.answers(client, host)
                assert got == "a", f"{host} answers {got} before the change"
                before = await self.metrics(api)
                self.switched.add(k)
                wall = time.time()
                t0 = self.write_routes(second=True)
                t1, polls = await self.first_revision(client, host, "b", 60)
                after = await self.wait_acked(api, before, "RDS")
                r.weights_push_ms.append(push_delta(before, after)["RDS"][0])
                status, _ = await self.wait_converged(api, 60 + n / 100, applied_after=last_applied)
                config = status["config"]
                last_applied = config["last_applied"]
                r.weights_ms.append((t1 - t0) * 1000)
                r.weights_polls.append(polls)
                r.weights_load_ms.append(config.get("load_ms", float("nan")))
                r.weights_apply_ms.append(config.get("apply_ms", float("nan")))
                r.weights_applied_ms.append((last_applied - wall) * 1000)
                log(f"N={n}: weights s{k}: {r.weights_ms[-1]:.1f} ms to b ({polls} polls); "
                    f"load {config.get('load_ms')} ms, apply {config.get('apply_ms')} ms, "
                    f"RDS push->ACK {r.weights_push_ms[-1]:.1f} ms")
                del status
                await asyncio.sleep(0.3)
            m1 = await self.metrics(api)
            r.push_weights = push_delta(m0, m1)

            # 3. endpoint-only change.
            for k in k_endpoints:
                host = f"s{k}.localhost"
                got = await self.answers(client, host)
                assert got == "a", f"{host} answers {got} before the change"
                before = await self.metrics(api)
                t0 = time.perf_counter()
                async with api.post(f"{self.api}/debug/endpoints",
                                    json={"revision": f"s{k}-a", "endpoints": [f"127.0.0.1:{self.port_b}"]}) as resp:
                    resp.raise_for_status()
                t1, polls = await self.first_revision(client, host, "b", 60)
                after = await self.wait_acked(api, before, "EDS")
                r.endpoints_push_ms.append(push_delta(before, after)["EDS"][0])
                r.endpoints_ms.append((t1 - t0) * 1000)
                r.endpoints_polls.append(polls)
                log(f"N={n}: endpoints s{k}-a: {r.endpoints_ms[-1]:.1f} ms to b ({polls} polls); "
                    f"EDS push->ACK {r.endpoints_push_ms[-1]:.1f} ms")
                await asyncio.sleep(0.3)
            m2 = await self.metrics(api)
            r.push_endpoints = push_delta(m1, m2)
            await self.wait_converged(api, 60 + n / 100)
            t = time.perf_counter()
            text = await self.metrics_text(api)
            r.metrics_ms, r.metrics_bytes = (time.perf_counter() - t) * 1000, len(text.encode())
            if load is not None:
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)

        # 5. memory.
        r.ferry_hwm_kib = proc_status_kib(self.ferry.pid, "VmHWM")
        r.ferry_rss_kib = proc_status_kib(self.ferry.pid, "VmRSS")
        if envoy_pid:
            r.envoy_rss_kib = proc_status_kib(envoy_pid, "VmRSS")
            r.envoy_hwm_kib = proc_status_kib(envoy_pid, "VmHWM")
        return r


# -- machine and report ----------------------------------------------------------------------------------


def push(delta: dict, type_: str) -> str:
    if type_ not in delta:
        return "-"
    mean, count = delta[type_]
    return f"{mean:.1f} (n={count})"


def report(results: list[Result], info: list[tuple[str, str]], repeat: int, poll_sleep_s: float, delta: bool = False) -> None:
    print()
    print("ferry convergence benchmark")
    for key, value in info:
        print(f"  {key:13} {value}")
    print(f"  xDS: {'Delta' if delta else 'State-of-the-World'} ADS; repeat={repeat}, gateway polled back to back on one keep-alive connection"
          + (f" (sleep {poll_sleep_s * 1000:.2f} ms between polls)" if poll_sleep_s else " (no sleep between polls)"))
    print()

    sizes = [r.n for r in results]
    width = max(22, *(len(f"{s:,}") for s in sizes))
    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, cells, target: str = "") -> None:
        rows.append((label, list(cells), target))

    row("services x revisions", (f"{r.n:,} x 2" for r in results))
    row("1. ferry start -> converged (s)", (f"{r.first_converge_s:.2f}" for r in results))
    row("   ferry start -> 1st answer (s)", (f"{r.first_answer_s:.2f}" for r in results))
    row("   file 2 -> converged (s)", (f"{r.second_converge_s:.2f}" for r in results))
    row("   file 2 load_ms", (f"{r.second_load_ms:.1f}" for r in results))
    row("   file 2 apply_ms", (f"{r.second_apply_ms:.1f}" for r in results))
    row("2. weights: file -> b (ms) min/med/max", (mmm(r.weights_ms) for r in results),
        "<=100 ms @1k, <=1 s @10k (median)")
    row("   load_ms (median)", (med(r.weights_load_ms) for r in results))
    row("   apply_ms (median)", (med(r.weights_apply_ms) for r in results))
    row("   file -> applied (ms, median)", (med(r.weights_applied_ms) for r in results), "watch + load + apply")
    row("3. endpoints: POST -> b (ms) min/med/max", (mmm(r.endpoints_ms) for r in results), "flat in N")
    row("4. push->ACK RDS, weights (mean ms)", (push(r.push_weights, "RDS") for r in results), "flat in N")
    row("   per change min/med/max (ms)", (mmm(r.weights_push_ms) for r in results))
    others = sorted({t for r in results for t in r.push_weights} - {"RDS"})
    for t in others:
        row(f"   push->ACK {t}, weights (mean ms)", (push(r.push_weights, t) for r in results))
    row("   push->ACK EDS, endpoints (mean ms)", (push(r.push_endpoints, "EDS") for r in results), "flat in N")
    row("   per change min/med/max (ms)", (mmm(r.endpoints_push_ms) for r in results))
    others = sorted({t for r in results for t in r.push_endpoints} - {"EDS"})
    for t in others:
        row(f"   push->ACK {t}, endpoints (mean ms)", (push(r.push_endpoints, t) for r in results))
    row("5. ferry peak RSS, VmHWM (MiB)", (mib(r.ferry_hwm_kib) for r in results), "<=150 MiB @1k")
    row("   ferry VmHWM after file 2 (MiB)", (mib(r.ferry_hwm_after_start_kib) for r in results))
    row("   ferry RSS at end (MiB)", (mib(r.ferry_rss_kib) for r in results))
    row("   Envoy RSS / VmHWM (MiB)", (f"{mib(r.envoy_rss_kib)} / {mib(r.envoy_hwm_kib)}" for r in results), "info")
    row("   GET /status x3 (ms max / MB)", (f"{max(r.status_ms):.0f} / {r.status_bytes / 1e6:.1f}"
                                         if r.status_ms else "-" for r in results), "<=200 ms @10k")
    row("   GET /metrics at the end (ms / KiB)", (f"{r.metrics_ms:.1f} / {r.metrics_bytes / 1024:.1f}"
                                              if r.metrics_ms is not None else "-" for r in results), "info")
    row("   loop stalls > 20 ms during /status", (f"{r.status_stalls} (all <= {r.status_lag_le} s)" if r.status_stalls is not None else "n/a"
                                                   for r in results),
        "0")

    label_width = max(len(label) for label, _, _ in rows)
    width = max(width, *(len(c) for _, cells, _ in rows for c in cells))
    header = f"{'':{label_width}} | " + " | ".join(f"{s:>{width},}" for s in sizes) + " | target"
    print(header)
    print("-" * len(header))
    for label, cells, target in rows:
        print(f"{label:{label_width}} | " + " | ".join(f"{c:>{width}}" for c in cells) + f" | {target}")
    print()

    verdicts: list[str] = []
    by_n = {r.n: r for r in results}

    def verdict(label: str, targets: dict, before: dict, unit: str, value) -> None:
        for n, limit in targets.items():
            got = value(by_n[n]) if n in by_n else None
            if got is None:
                continue
            was = f" (before: {before[n]:g} {unit})" if n in before else ""
            verdicts.append(f"{label} @{n:,}: {got:.1f} {unit} vs <= {limit:g} {unit}{was}: "
                            f"{'PASS' if got <= limit else 'FAIL'}")

    median_or_none = lambda values: statistics.median(values) if values else None  # noqa: E731
    verdict("weights change -> served, median", TARGET_CONVERGE_MS, BEFORE_CONVERGE_MS, "ms",
            lambda r: median_or_none(r.weights_ms))
    verdict("weights change, ferry load+apply, median", TARGET_LOAD_APPLY_MS, {}, "ms",
            lambda r: median_or_none([a + b for a, b in zip(r.weights_load_ms, r.weights_apply_ms)]))
    verdict("ferry start -> converged", TARGET_START_S, BEFORE_START_S, "s", lambda r: r.first_converge_s or None)
    verdict("ferry peak RSS (VmHWM)", TARGET_FERRY_RSS_MIB, {}, "MiB",
            lambda r: r.ferry_hwm_kib / 1024 if r.ferry_hwm_kib else None)
    verdict("Envoy RSS", TARGET_ENVOY_RSS_MIB, BEFORE_ENVOY_RSS_MIB, "MiB",
            lambda r: r.envoy_rss_kib / 1024 if r.envoy_rss_kib else None)
    verdict("GET /status answered, slowest of 3", TARGET_STATUS_MS, BEFORE_STATUS_MS, "ms",
            lambda r: max(r.status_ms) if r.status_ms else None)
    for r in results:
        if r.status_stalls is not None:
            verdicts.append(f"event loop stalls > {TARGET_STALL_MS} ms while /status answers @{r.n:,}: "
                            f"{r.status_stalls}: {'PASS' if r.status_stalls == 0 else 'FAIL'}")
    if len(results) >= 2:
        for label, values in (
            ("endpoint-only POST -> b", lambda r: r.endpoints_ms),
            ("one-service RDS push->ACK", lambda r: r.weights_push_ms),
            ("endpoint-only EDS push->ACK", lambda r: r.endpoints_push_ms),
        ):
            medians = [(r.n, statistics.median(values(r))) for r in results if values(r)]
            if len(medians) < 2:
                continue
            base = medians[0][1]
            worst = max(m for _, m in medians[1:])
            # "Not growing": within 2x or +5 ms of the smallest size, whichever is looser (ms-scale noise).
            ok = worst <= max(2 * base, base + 5)
            trail = " -> ".join(f"{m:.1f} ms @{n:,}" for n, m in medians)
            verdicts.append(f"{label} (median): {trail}: {'PASS (flat)' if ok else 'FAIL (grows with N)'}")
    print("Targets")
    for v in verdicts:
        print(f"  {v}")
    warnings = [w for r in results for w in r.warnings]
    if warnings:
        print()
        print("Warnings")
        for w in warnings:
            print(f"  {w}")
    print()
    print("Notes: step 2 'file -> b' includes ferry's file watch (watchfiles, ~10-20 ms debounce), parsing the whole")
    print("file (load_ms) and the controller's apply (apply_ms); push->ACK (step 4) starts when ferry publishes the")
    print("change, so it excludes load_ms and apply_ms. Services used: weights " +
          "; ".join(f"N={r.n:,}: {r.weights_services}" for r in results))
    print("       endpoints " + "; ".join(f"N={r.n:,}: {r.endpoints_services}" for r in results))


# -- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000", help="comma-separated service counts")
    parser.add_argument("--repeat", type=int, default=5, help="changes measured per step and size")
    parser.add_argument("--poll-sleep-ms", type=float, default=0.0, help="sleep between gateway polls (max 1)")
    parser.add_argument("--sotw", action="store_true", help="the gateway uses State-of-the-World xDS (default: Delta)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (logs, routes files)")
    parser.add_argument("--busy", type=int, default=4,
                        help="services ferry runs and autoscales, under light load, one in a never-ending canary "
                             "(0: only the static services)")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    poll_sleep_s = min(max(args.poll_sleep_ms, 0.0), 1.0) / 1000

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored

    info = machine()
    results: list[Result] = []
    begun = time.perf_counter()
    try:
        for n in sizes:
            procs = Processes()
            workdir = Path(tempfile.mkdtemp(prefix=f"ferry-bench-{n}-"))
            try:
                results.append(asyncio.run(Bench(n, args.repeat, workdir, procs, poll_sleep_s, not args.sotw, args.busy).run()))
            finally:
                log(f"N={n}: stopping processes")
                procs.stop_all()
                if not args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
                else:
                    log(f"N={n}: kept {workdir}")
    except KeyboardInterrupt:
        log("interrupted")
        if not results:
            return 130
    finally:
        log(f"total {time.perf_counter() - begun:.0f} s")
    info.append(("busy", f"{args.busy} autoscaled services under load, one in a canary" if args.busy else "none"))
    report(results, info, args.repeat, poll_sleep_s, not args.sotw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
