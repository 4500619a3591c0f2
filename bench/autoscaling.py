"""Autoscaling numbers: one autoscaler tick at scale, cold-start overhead, and the activator in the path.

Prints numbers; it is not a test. Usage:

    python bench/autoscaling.py [--revisions 1000] [--cold-starts 10] [--seconds 5] [--concurrency 32]

1. Tick: the autoscaler's decision over N revisions with a full 60 s of history each (in process, no I/O),
   plus the per-second cost of turning a gateway's stats answer for N revisions into observations.
2. Cold start: `ferry up` (real Envoy) with services at scale 0 running the example app. The first request
   to each is timed to its first byte; from it is subtracted the app's own start-to-ready time, measured by
   starting the same app directly and polling it every millisecond. Target: overhead <= 50 ms.
3. Where Knative puts its activator: three revisions of a minimal asyncio app, each pinned at one instance:
   burstCapacity 0 (Envoy straight to the instance: the baseline); burstCapacity -1 (Knative keeps its activator
   in the path at every scale; ferry, for a revision without a concurrency limit, lets Envoy balance: the
   path such a request takes now); and `concurrency: 64` (a limit that 32 clients never reach: the activator
   stays in the path to hold each instance to it exactly). The same load (bench/activator.py's generator, in its
   own process, keep-alive) against each, twice: paced at --rate requests/s, below saturation, for the latency
   each path adds (p50/p99), and back to back for the most requests per second. Targets: p99 added <= 5 ms,
   throughput >= 80 % of Envoy straight to the instance.
Everything shares this machine's cores with the load generator; the README says which machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Processes, api_token, free_port, log, proc_status_kib  # noqa: E402  (bench helpers, not a package)

ROOT = Path(__file__).resolve().parent.parent
HELLO_APP = ROOT / "examples" / "hello" / "app.py"
FAST_APP = ROOT / "bench" / "fast_app.py"


# -- 1. the tick ------------------------------------------------------------------------------------------


class _Target:
    def ready_instances(self, revision: str) -> int:
        return 3

    def reachable(self, revision: str) -> bool:
        return True

    async def apply_step(self, revision, step) -> None:
        pass


def bench_tick(revisions: int, repeat: int = 20) -> dict:
    from ferry.autoscaler.decision import Settings
    from ferry.autoscaler.metrics import loads, parse_cluster_stats
    from ferry.autoscaler.runner import Autoscaler, Sources
    from ferry.autoscaler.scaler import Load

    # As in ferry's process: its collector thresholds, and what was built before the loop frozen (gc.freeze after
    # each apply). Times are this thread's CPU time, so that other processes on the 2 cores do not count.
    gc.set_threshold(50_000, 20, 100)
    scaler = Autoscaler(_Target(), Sources(admins=list, activator=dict), clock=time.monotonic)
    names = [f"svc{i}-00001" for i in range(revisions)]
    for name in names:
        scaler.track(name, Settings(), ready=3)
    start = 1_000_000.0

    def observe(second: int) -> None:
        scaler.observe(start + second, {n: Load(150.0 + (i + second) % 50, 300.0) for i, n in enumerate(names)})

    for second in range(60):  # a full stable window of history
        observe(second)
    gc.freeze()
    ticks = []
    for k in range(repeat):  # as in ferry: a scrape every second, a tick every two
        observe(60 + 2 * k)
        observe(61 + 2 * k)
        began = time.thread_time()
        scaler.decide(start + 61 + k * 2)
        ticks.append((time.thread_time() - began) * 1000)

    body = "".join(  # what Envoy's /stats/prometheus answers
        f'envoy_cluster_{stat}{{envoy_cluster_name="svc{i}/{n}"}} {i}\n'
        for i, n in enumerate(names)
        for stat in ("upstream_rq_active", "upstream_rq_pending_active", "upstream_rq_total")
    ).encode()
    per_second = []
    totals = None
    for k in range(repeat):
        began = time.thread_time()
        parsed = parse_cluster_stats(body)
        observed, totals = loads(start + 200 + k, {"gw": parsed}, {}, totals)
        scaler.observe(start + 200 + k, observed)
        per_second.append((time.thread_time() - began) * 1000)
    return {
        "tick_ms_median": statistics.median(ticks), "tick_ms_max": max(ticks),
        "scrape_to_windows_ms_median": statistics.median(per_second),
    }


# -- 2 and 3: ferry with a real Envoy ---------------------------------------------------------------------


def service(name: str, app: Path, scale: str) -> str:
    return (
        f"  {name}:\n    template:\n      command: [{sys.executable}, {app}]\n"
        f"      readiness: {{path: /healthz}}\n      scale: {scale}\n"
    )


async def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def status(session: aiohttp.ClientSession, api: str) -> dict:
    async with session.get(f"{api}/status") as response:
        return await response.json()


def app_start_to_ready(runs: int) -> list[float]:
    """The example app's own start-to-ready time: from starting it to the line it prints once it listens
    (its /healthz answers 200 from then on). Reading a pipe costs the starting app no CPU, unlike polling."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(HELLO_APP)], env={**os.environ, "PORT": str(free_port())},
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            line = proc.stdout.readline()
            times.append((time.perf_counter() - began) * 1000)
            if b"listening" not in line:
                raise RuntimeError(f"example app did not start: {line!r}")
        finally:
            proc.terminate()
            proc.wait()
    return times


async def cold_starts(session: aiohttp.ClientSession, gateway: str, count: int) -> list[float]:
    out = []
    for i in range(count):
        began = time.perf_counter()
        async with session.get(f"{gateway}/", headers={"Host": f"cold{i}.localhost"}) as response:
            first_byte = time.perf_counter()
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"cold{i}: {response.status}")
        out.append((first_byte - began) * 1000)
    return out


def run_client(port: int, host: str, clients: int, seconds: float, rate: float) -> dict:
    """bench/activator.py's raw-asyncio load generator, in its own process so it does not share ferry's loop."""
    code = (
        "import asyncio, json, sys\n"
        "sys.path.insert(0, %r)\n"
        "from activator import load\n"
        "r = asyncio.run(load(%d, %d, %f, %f, host=%r, revision=None))\n"
        "print(json.dumps({'rps': r.rps, 'p50_ms': r.percentile(0.5), 'p99_ms': r.percentile(0.99), 'errors': r.errors}))\n"
    ) % (str(Path(__file__).resolve().parent), port, clients, seconds, rate, host)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout)


async def bench_ferry(args) -> dict:
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="ferry-bench-autoscaling-"))
    gateway_port, api_port, xds_port, admin_port, activator_port = (free_port() for _ in range(5))
    gateway, api = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{api_port}"
    text = f"gateway: {{listen: 127.0.0.1:{gateway_port}, domain: localhost}}\nservices:\n"
    for i in range(args.cold_starts):
        text += service(f"cold{i}", HELLO_APP, "{initial: 0}")
    text += service("direct", FAST_APP, "{min: 1, max: 1, burstCapacity: 0}")
    text += service("burst", FAST_APP, "{min: 1, max: 1, burstCapacity: -1}")
    text += service("limited", FAST_APP, "{min: 1, max: 1, burstCapacity: 0}") + "      concurrency: 64\n"
    if args.held:  # starts 3 s after it is asked for: every request of the burst waits in the activator
        text += service("held", FAST_APP, "{initial: 0, max: 1}") + "      concurrency: 100\n" \
            + "      env: {START_DELAY_S: '3'}\n"
    (workdir / "routes.yaml").write_text(text)
    results: dict = {}
    try:
        results["app_ready_ms"] = app_start_to_ready(args.cold_starts)
        ferry_log = open(workdir / "ferry.log", "wb")
        token_args, auth = api_token(workdir)
        procs.start("ferry", [
            sys.executable, "-m", "ferry", "up", str(workdir / "routes.yaml"), "-q",
            "--api", f"127.0.0.1:{api_port}", "--xds", f"127.0.0.1:{xds_port}",
            "--admin", f"127.0.0.1:{admin_port}", "--activator", f"127.0.0.1:{activator_port}", *token_args,
        ], stdout=ferry_log, stderr=ferry_log, cwd=workdir)
        async with aiohttp.ClientSession(headers=auth) as session:

            async def converged() -> bool:
                try:
                    s = await status(session, api)
                except aiohttp.ClientError:
                    return False
                revisions = s["revisions"]
                return (
                    all(v["routed"] for v in s["services"].values())
                    and any(g["in_sync"] for g in s["gateways"])
                    and not revisions["direct-00001"]["autoscaling"]["activator_in_path"]
                    and not revisions["burst-00001"]["autoscaling"]["activator_in_path"]
                    and revisions["burst-00001"]["ready"] == 1
                    and revisions["limited-00001"]["ready"] == 1
                )

            await wait_for(converged, 60, f"ferry to converge (log: {workdir / 'ferry.log'})")
            log("cold starts")
            results["cold_ms"] = await cold_starts(session, gateway, args.cold_starts)
        for name in ("direct", "burst", "limited"):
            for rate in (args.rate, 0.0):
                log(f"load: {name}, {args.concurrency} clients, {f'{rate:g} rps' if rate else 'back to back'}")
                results[(name, rate)] = run_client(gateway_port, f"{name}.localhost", args.concurrency, args.seconds, rate)
        if args.held:
            log(f"{args.held} requests held at zero")
            results["held"] = held_at_zero(procs.started[0][1].pid, activator_port, workdir, args.held)
    finally:
        procs.stop_all()
    return results


def activator_pid(port: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"activator" in argv and f"127.0.0.1:{port}".encode() in argv:
                return int(entry.name)
    raise RuntimeError(f"no activator process listening on {port}")


def held_at_zero(ferry_pid: int, activator_port: int, workdir: Path, count: int) -> dict:
    """`count` requests at once for a revision at zero whose instance takes 3 s to start. Straight to the
    activator, as Envoy would send them (its headers), since through Envoy the burst would need more than the
    20,000 file descriptors a process may have here (one per request on each side of Envoy)."""
    from ferry.xds.resources import ACTIVATOR_KEY_HEADER, REVISION_HEADER

    pid = activator_pid(activator_port)
    before = {"ferry": proc_status_kib(ferry_pid, "VmRSS"), "activator": proc_status_kib(pid, "VmRSS")}
    headers = {"Host": "held.localhost", REVISION_HEADER: "held-00001",
               ACTIVATOR_KEY_HEADER: (workdir / ".ferry" / "activator-key").read_text().strip()}
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "burst.py"), str(activator_port), str(count),
                          json.dumps(headers)], capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout)
    result["growth_mib"] = {name: (proc_status_kib(p, "VmHWM") - before[name]) / 1024
                            for name, p in (("ferry", ferry_pid), ("activator", pid))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revisions", type=int, default=1000)
    parser.add_argument("--cold-starts", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive client connections")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s in all for the latency run")
    parser.add_argument("--held", type=int, default=10_000, help="requests held at zero at once (0: skip)")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"load average {Path('/proc/loadavg').read_text().split()[0] if Path('/proc/loadavg').exists() else '?'}")
    verdicts: list[str] = []

    def verdict(label: str, ok: bool, got: str, target: str, before: str = "") -> None:
        verdicts.append(f"{label}: {got} vs {target}{f' (before: {before})' if before else ''}: "
                        f"{'PASS' if ok else 'FAIL'}")

    tick = bench_tick(args.revisions)
    print(f"\n1. autoscaler tick over {args.revisions} revisions: median {tick['tick_ms_median']:.1f} ms, "
          f"max {tick['tick_ms_max']:.1f} ms")
    print(f"   one scrape answer -> windows for {args.revisions} revisions: {tick['scrape_to_windows_ms_median']:.1f} ms")
    verdict(f"autoscaler tick, {args.revisions} revisions, median", tick["tick_ms_median"] <= 10,
            f"{tick['tick_ms_median']:.1f} ms", "<= 10 ms", "25-34 ms")
    verdict(f"scrape -> windows, {args.revisions} revisions, median", tick["scrape_to_windows_ms_median"] <= 10,
            f"{tick['scrape_to_windows_ms_median']:.1f} ms", "<= 10 ms")

    r = asyncio.run(bench_ferry(args))
    app, cold = statistics.median(r["app_ready_ms"]), statistics.median(r["cold_ms"])
    print(f"\n2. cold start ({args.cold_starts} revisions at zero, example app):")
    print(f"   first byte through ferry: median {cold:.0f} ms (min {min(r['cold_ms']):.0f}, max {max(r['cold_ms']):.0f})")
    print(f"   the app's own start-to-ready: median {app:.0f} ms (min {min(r['app_ready_ms']):.0f}, "
          f"max {max(r['app_ready_ms']):.0f})")
    print(f"   overhead: {cold - app:.0f} ms (target <= 50 ms)")
    paths = (("burst", "burstCapacity -1: Envoy -> instance (Knative: via its activator)"),
             ("limited", "concurrency 64: Envoy -> activator -> instance"))
    for rate, what in ((args.rate, f"latency at {args.rate:g} requests/s"), (0.0, "throughput, back to back")):
        d = r[("direct", rate)]
        print(f"\n3. where Knative puts its activator, {what}: {args.concurrency} keep-alive clients, "
              f"{args.seconds:g} s, minimal app")
        for name, v in (("burstCapacity 0: Envoy -> instance", d), *((label, r[(n, rate)]) for n, label in paths)):
            print(f"   {name:64s} {v['rps']:7.0f} rps  p50 {v['p50_ms']:.2f} ms  p99 {v['p99_ms']:.2f} ms  "
                  f"errors {v['errors']}")
        for name, label in paths:
            p = r[(name, rate)]
            short = label.split(":")[0]
            if rate:
                added = p['p99_ms'] - d['p99_ms']
                print(f"   added by {short}: p50 {p['p50_ms'] - d['p50_ms']:+.2f} ms, p99 {added:+.2f} ms")
                verdict(f"{short}: added p99 at {rate:g} rps", added <= 5 and not p["errors"], f"{added:+.2f} ms",
                        "<= 5 ms", "+16.8 to +17.7 ms (activator)")
            else:
                share = p["rps"] / d["rps"] if d["rps"] else 0.0
                verdict(f"{short}: throughput / Envoy straight to the instance", share >= 0.8 and not p["errors"],
                        f"{share:.0%} ({p['rps']:.0f} / {d['rps']:.0f} rps)", ">= 80 %",
                        "1,530-1,836 / 5,400-6,000 rps (activator)")
    if "held" in r:
        held = r["held"]
        growth = held["growth_mib"]
        answered = held["answers"].get("200", 0)
        print(f"\n4. {args.held:,} requests at once for a revision at zero (its instance starts in 3 s), to the "
              f"activator: answers {held['answers']} in {held['seconds']:.1f} s; peak memory growth ferry "
              f"{growth['ferry']:.0f} MiB, activator {growth['activator']:.0f} MiB")
        verdict(f"{args.held:,} held at zero, all answered", answered == args.held, f"{answered:,} answered 200",
                f"{args.held:,}")
        total = growth["ferry"] + growth["activator"]
        verdict(f"{args.held:,} held at zero, memory growth of ferry + activator", total <= 200,
                f"{total:.0f} MiB", "<= 200 MiB")
    print("\nTargets")
    for line in verdicts:
        print(f"  {line}")


if __name__ == "__main__":
    main()
