"""What the activator costs: throughput and latency of client -> upstream vs. client -> activator -> upstream.

Prints numbers; it is not a test. Usage:

    python bench/activator.py [--clients 32] [--seconds 5] [--rounds 2] [--rate 2000] [--profile FILE]

A microbench of the activator alone (no Envoy). Three processes on 127.0.0.1 free ports:

* the upstream: an aiohttp hello-world (low-level server, no access log), answering "hello" to any request;
* the activator: ferry's `Activator` with one revision whose only instance is the upstream (concurrency 0,
  the unthrottled case; `--concurrency` to try the breaker);
* the load generator (this process): N keep-alive HTTP/1.1 connections, each sending a request as soon as the
  previous answer is complete (closed loop), on a minimal asyncio protocol rather than aiohttp's client,
  so that the generator takes as little of the shared CPU as possible.

Each round measures (a) straight to the upstream and (b) through the activator, `--seconds` each after a
1 s warm-up, in three scenarios: N clients back to back (throughput; latency there is mostly queueing),
N clients paced at `--rate` requests/s in all (added latency below saturation, which is what the
<= 5 ms p99 target is about), and a single client (pure per-hop latency). The activator's CPU time per
request comes from /proc; it is lowest when saturated (many requests per event-loop wake-up) and grows
under light load and when other processes compete for the cores.

The machine's cores are shared by all three processes (and by anything else running), so the numbers
are a floor for the activator, not its ceiling elsewhere; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fast_app import next_message  # bench/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parent.parent
TARGET_RPS = 3000.0
TARGET_ADDED_P99_MS = 5.0
REVISION = "bench-rev"
REVISION_HEADER = "ferry-revision"  # as ferry.xds.resources; not imported so the load process stays light


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the two servers, each run in its own process -------------------------------------------------------

def serve_upstream(port: int) -> None:
    from aiohttp import web

    async def hello(request: web.BaseRequest) -> web.Response:
        return web.Response(text="hello")

    async def main() -> None:
        runner = web.ServerRunner(web.Server(hello, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await _until_terminated()
        await runner.cleanup()

    asyncio.run(main())


def serve_activator(port: int, upstream_port: int, concurrency: int, profile: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    from prometheus_client import CollectorRegistry

    from ferry.activator import Activator

    async def main() -> None:
        activator = Activator(port=port, registry=CollectorRegistry())
        await activator.start()
        activator.set_revision(REVISION, [("127.0.0.1", upstream_port)], concurrency=concurrency, timeout_s=60)
        print("ready", flush=True)
        await _until_terminated()
        await activator.aclose()

    if profile:
        import cProfile
        cProfile.runctx("asyncio.run(main())", globals(), {"asyncio": asyncio, "main": main}, profile)
    else:
        asyncio.run(main())


async def _until_terminated() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def start(*args: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if line.strip() != "ready":
        process.kill()
        raise SystemExit(f"{args[0]} did not start: {line!r}")
    return process


# -- the load generator ----------------------------------------------------------------------------------

@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000 if ordered else float("nan")


class KeepAliveClient(asyncio.Protocol):
    """One connection; sends the next request when the previous response is complete (or, when paced, at its
    next slot, whichever is later); records latencies from the moment each request is written."""

    def __init__(self, request: bytes, result: Result, stop_at: float, record_from: float, done: asyncio.Future,
                 interval: float, first_at: float):
        self.request, self.result, self.done = request, result, done
        self.stop_at, self.record_from = stop_at, record_from
        self.interval, self.next_at = interval, first_at
        self.buffer = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._schedule()

    def _schedule(self) -> None:
        delay = self.next_at - time.perf_counter()
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send)
        else:
            self._send()

    def _send(self) -> None:
        if self.transport.is_closing():
            return
        self.sent_at = time.perf_counter()
        self.next_at = max(self.next_at + self.interval, self.sent_at) if self.interval else self.sent_at
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (message := next_message(self.buffer)) is not None:
            end = message[1]
            status_ok = self.buffer.startswith(b"HTTP/1.1 200")
            self.buffer = self.buffer[end:]
            now = time.perf_counter()
            if now >= self.record_from:
                if status_ok:
                    self.result.latencies.append(now - self.sent_at)
                else:
                    self.result.errors += 1
            if now >= self.stop_at:
                self.transport.close()
                return
            self._schedule()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def load(port: int, clients: int, seconds: float, rate: float = 0.0, warmup: float = 1.0, *,
               host: str = "bench.localhost", revision: str | None = REVISION) -> Result:
    """`clients` connections for `seconds` after `warmup`; back to back, or `rate` requests/s in all if given.
    Straight to an activator, requests name their revision as Envoy would; through Envoy (`revision` None) the
    route adds it."""
    loop = asyncio.get_running_loop()
    revision_header = f"{REVISION_HEADER}: {revision}\r\n" if revision else ""
    request = f"GET /hello?x=1 HTTP/1.1\r\nHost: {host}\r\n{revision_header}User-Agent: bench\r\n\r\n".encode()
    result = Result()
    now = time.perf_counter()
    record_from = now + warmup
    stop_at = record_from + seconds
    interval = clients / rate if rate else 0.0
    done = [loop.create_future() for _ in range(clients)]
    for index, future in enumerate(done):
        first_at = now + interval * index / clients  # spread the paced connections over one interval
        await loop.create_connection(
            lambda f=future, t=first_at: KeepAliveClient(request, result, stop_at, record_from, f, interval, t),
            "127.0.0.1", port)
    await asyncio.gather(*done)
    result.seconds = seconds
    return result


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def median(results: list[Result], measure) -> float:
    return statistics.median(measure(result) for result in results)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(name: str, result: Result, cpu_us: float | None = None) -> None:
    cpu = f"   activator CPU {cpu_us:5.0f} us/req" if cpu_us is not None else ""
    print(f"  {name:24} {result.rps:9,.0f} req/s   p50 {result.percentile(0.50):6.2f} ms   "
          f"p99 {result.percentile(0.99):6.2f} ms   errors {result.errors}{cpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=2000.0, help="total req/s of the paced scenario")
    parser.add_argument("--concurrency", type=int, default=0, help="the revision's container concurrency")
    parser.add_argument("--profile", help="write a cProfile of the activator process to this file")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-activator", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        return serve_upstream(args.serve_upstream)
    if args.serve_activator:
        return serve_activator(*args.serve_activator, args.concurrency, args.profile)

    upstream_port, activator_port = free_port(), free_port()
    print(f"cores: {os.cpu_count()}; the load generator, the activator and the upstream share them "
          f"(3 processes), so these numbers understate what the activator alone would do")
    print(f"load average before: {load_average()} (anything else busy on the machine skews every number below)")
    scenarios = [(f"{args.clients} clients, back to back (saturated)", args.clients, 0.0),
                 (f"{args.clients} clients, paced at {args.rate:,.0f} req/s in all", args.clients, args.rate),
                 ("1 client, back to back", 1, 0.0)]
    upstream = start("--serve-upstream", str(upstream_port))
    activator_args = ["--serve-activator", str(activator_port), str(upstream_port),
                      "--concurrency", str(args.concurrency)]
    if args.profile:
        activator_args += ["--profile", args.profile]
    activator = start(*activator_args)
    try:
        summary: dict[tuple[str, str], list[Result]] = {}
        cpu_per_request: dict[str, list[float]] = {}
        for round_number in range(1, args.rounds + 1):
            for scenario, clients, rate in scenarios:
                print(f"round {round_number}, {scenario}, {args.seconds:g} s:")
                for name, port in (("direct", upstream_port), ("via activator", activator_port)):
                    cpu_before = cpu_seconds(activator.pid)
                    result = asyncio.run(load(port, clients, args.seconds, rate))
                    cpu_after = cpu_seconds(activator.pid)
                    summary.setdefault((name, scenario), []).append(result)
                    cpu_us = None
                    if port == activator_port and cpu_before is not None and result.latencies:
                        # Includes the 1 s warm-up's requests too, so it is a slight overestimate per request.
                        requests = len(result.latencies) * (1 + 1 / args.seconds)
                        cpu_us = (cpu_after - cpu_before) / requests * 1e6
                        cpu_per_request.setdefault(scenario, []).append(cpu_us)
                    report(name, result, cpu_us)
        print(f"summary (median over {args.rounds} round(s)):")
        for scenario, _, _ in scenarios:
            direct, via = summary[("direct", scenario)], summary[("via activator", scenario)]
            added_p50 = median(via, lambda r: r.percentile(0.5)) - median(direct, lambda r: r.percentile(0.5))
            added_p99 = median(via, lambda r: r.percentile(0.99)) - median(direct, lambda r: r.percentile(0.99))
            cpu = ""
            if cpu_per_request.get(scenario):
                cpu_us = statistics.median(cpu_per_request[scenario])
                cpu = f"; activator CPU {cpu_us:.0f} us/req"
            print(f"  {scenario}: activator {median(via, lambda r: r.rps):,.0f} req/s "
                  f"(direct {median(direct, lambda r: r.rps):,.0f}); "
                  f"added p50 {added_p50:+.2f} ms, added p99 {added_p99:+.2f} ms{cpu}")
        print(f"load average after: {load_average()}")
        saturated, paced = scenarios[0][0], scenarios[1][0]
        best_rps = median(summary[("via activator", saturated)], lambda r: r.rps)
        added_p99 = (median(summary[("via activator", paced)], lambda r: r.percentile(0.99))
                     - median(summary[("direct", paced)], lambda r: r.percentile(0.99)))
        print(f"target >= {TARGET_RPS:,.0f} req/s through the activator: "
              f"{'met' if best_rps >= TARGET_RPS else 'NOT met'} ({best_rps:,.0f} req/s, saturated)")
        print(f"target <= {TARGET_ADDED_P99_MS:g} ms added p99 (paced, below saturation): "
              f"{'met' if added_p99 <= TARGET_ADDED_P99_MS else 'NOT met'} ({added_p99:+.2f} ms); "
              f"saturated p99 adds queueing, not the activator's per-request cost")
    finally:
        for process in (activator, upstream):
            process.send_signal(signal.SIGTERM)
        for process in (activator, upstream):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
