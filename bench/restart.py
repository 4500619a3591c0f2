"""Live restore: how fast a restarted ferry takes back the data plane a crash left, and what traffic sees.

Prints numbers; it is not a test. Usage:

    python bench/restart.py [--services 1000] [--managed 20] [--rounds 3] [--down 2]

`ferry up` (real Envoy, free loopback ports, state in a temporary folder) serves `--services` services: all but
`--managed` point at two fast apps through `template.endpoints`; the `--managed` ones run bench/fast_app.py
instances that ferry starts. Each round, with 8 clients looping on one managed and one other service:

1. SIGKILL ferry (no chance to clean up), leave it down `--down` seconds, then start it again;
2. time from the new process's start to "adopted and in sync": its API answers, every service is routed, and
   the gateway (the same Envoy) is connected and in sync;
3. check that Envoy, the activator and every instance are the same processes, that the new ferry started no
   instance, and that Envoy accepted no new config (its xDS update_success counters did not move).

For reference, the same measure for a cold start of the same file (no data plane to adopt) is taken first.
Targets: 0 failed requests across all restarts; nothing replaced or re-sent.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import api_token, free_port, log  # noqa: E402  (bench helpers, not a package)

ROOT = Path(__file__).resolve().parent.parent
FAST_APP = ROOT / "bench" / "fast_app.py"
sys.path.insert(0, str(ROOT))
from ferry.dataplane import Register  # noqa: E402
from ferry.envoy.admin import EnvoyAdmin  # noqa: E402


def routes(gateway_port: int, services: int, managed: int, apps: tuple[int, int]) -> str:
    lines = [f"gateway: {{listen: 127.0.0.1:{gateway_port}, domain: localhost}}", "services:"]
    for i in range(services):
        if i < managed:
            lines.append(f"  m{i}: {{template: {{command: [{sys.executable}, {FAST_APP}], readiness: {{path: /healthz}},"
                         " scale: {min: 1, burstCapacity: 0}}}")
        else:
            lines.append(f"  s{i}: {{template: {{endpoints: ['127.0.0.1:{apps[i % 2]}']}}}}")
    return "\n".join(lines) + "\n"


class Ferry:
    def __init__(self, workdir: Path, routes_path: Path):
        self.workdir, self.routes = workdir, routes_path
        self.ports = {name: free_port() for name in ("api", "xds", "admin", "activator")}
        self.proc: subprocess.Popen | None = None
        self.token_args, self.auth = api_token(workdir)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    def start(self) -> float:
        log_file = open(self.workdir / "ferry.log", "ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ferry", "up", str(self.routes), "-q", "--cluster-linger", "2",
             *(arg for name, port in self.ports.items() for arg in (f"--{name}", f"127.0.0.1:{port}")),
             *self.token_args],
            stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True)
        return started

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)
        subprocess.run([sys.executable, "-m", "ferry", "down", str(self.routes)], capture_output=True)

    def dataplane(self) -> dict[str, int]:
        register = Register(self.workdir / ".ferry")
        try:
            return {f"{e.kind} {e.key}": e.proc.pid for e in register.entries()}
        finally:
            register.close()

    async def in_sync(self, session: aiohttp.ClientSession) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"ferry exited; see {self.workdir / 'ferry.log'}")
        try:
            async with session.get(f"{self.api}/status?service=m0") as response:
                status = await response.json()
        except (aiohttp.ClientError, ValueError):
            return False
        gateways = [g for g in status.get("gateways", []) if g["connected"]]
        return bool(gateways) and all(g["in_sync"] for g in gateways) and status["services"]["m0"]["routed"]

    async def wait_in_sync(self, session: aiohttp.ClientSession, started: float, timeout: float = 300) -> float:
        while not await self.in_sync(session):
            if time.perf_counter() - started > timeout:
                raise TimeoutError("ferry did not converge")
            await asyncio.sleep(0.02)
        return time.perf_counter() - started


async def envoy_updates(admin_port: int) -> dict[str, str]:
    """Configs Envoy accepted or refused (CDS, LDS, each route table, the host scopes): unchanged across a restart
    means nothing was re-sent. Per-cluster EDS counters exist only with `gateway.stats: all`, which would change what
    this bench measures; tests/test_live_restore.py checks EDS too."""
    body = await EnvoyAdmin("127.0.0.1", admin_port).fetch(
        "/stats?filter=(cds|lds|rds\\.[a-z0-9]+|scoped_rds\\.[a-z_]+)\\.update_(success|rejected)$", 5.0)
    found = dict(line.split(": ") for line in body.decode().strip().splitlines())
    assert any(".scoped_rds." in name for name in found), f"no scoped_rds counter: {found}"
    return found


async def load(session: aiohttp.ClientSession, url: str, hosts: list[str], stop: asyncio.Event,
               counts: collections.Counter[str]) -> None:
    i = 0
    while not stop.is_set():
        host = hosts[i % len(hosts)]
        i += 1
        try:
            async with session.get(url, headers={"Host": host}) as response:
                await response.read()
                counts["ok" if response.status == 200 else f"status {response.status}"] += 1
        except (aiohttp.ClientError, OSError) as err:
            counts[type(err).__name__] += 1


async def main(args) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="ferry-bench-restart-"))
    apps = []
    app_ports = (free_port(), free_port())
    for port, name in zip(app_ports, "ab", strict=True):
        apps.append(subprocess.Popen([sys.executable, str(FAST_APP)], env={**os.environ, "PORT": str(port),
                                     "K_REVISION": name}, stdin=subprocess.DEVNULL))
    gateway_port = free_port()
    path = workdir / "routes.yaml"
    path.write_text(routes(gateway_port, args.services, args.managed, app_ports))
    ferry = Ferry(workdir, path)
    counts: collections.Counter[str] = collections.Counter()
    restarts: list[float] = []
    ok = True
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=ferry.auth) as session:
            cold = await ferry.wait_in_sync(session, ferry.start())
            log(f"cold start of {args.services} services ({args.managed} managed): in sync after {cold:.2f} s")
            stop = asyncio.Event()
            loaders = [asyncio.create_task(load(session, f"http://127.0.0.1:{gateway_port}/",
                                                ["m0.localhost", f"s{args.services - 1}.localhost"], stop, counts))
                       for _ in range(8)]
            try:
                for round_ in range(args.rounds):
                    before = ferry.dataplane()
                    updates = await envoy_updates(ferry.ports["admin"])
                    ferry.kill()
                    await asyncio.sleep(args.down)
                    took = await ferry.wait_in_sync(session, ferry.start())
                    restarts.append(took)
                    await asyncio.sleep(0.5)
                    same = ferry.dataplane() == before
                    resent = await envoy_updates(ferry.ports["admin"]) != updates
                    ok &= same and not resent
                    log(f"round {round_ + 1}: adopted and in sync {took:.2f} s after start; same processes: {same}; "
                        f"config re-sent to Envoy: {resent}; requests so far {dict(counts)}")
            finally:
                stop.set()
                await asyncio.gather(*loaders)
    finally:
        ferry.stop()
        for app in apps:
            app.terminate()
            app.wait()
    failed = sum(n for k, n in counts.items() if k != "ok")
    print(f"\n{args.services} services ({args.managed} managed), {args.rounds} restarts after SIGKILL, "
          f"{args.down:g} s down each, load on 2 services throughout:")
    print(f"  cold start -> in sync:               {cold:.2f} s")
    print(f"  restart -> adopted and in sync:      median {statistics.median(restarts):.2f} s "
          f"(min {min(restarts):.2f}, max {max(restarts):.2f})")
    print(f"  requests: {counts.get('ok', 0)} answered 200, {failed} failed {dict((k, v) for k, v in counts.items() if k != 'ok')}"
          f"  {'PASS' if failed == 0 else 'FAIL'} (target 0)")
    print(f"  same Envoy, activator and instances, nothing re-sent to Envoy: {'PASS' if ok else 'FAIL'}")
    return 0 if failed == 0 and ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--managed", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down", type=float, default=2.0, help="seconds ferry stays dead each round")
    sys.exit(asyncio.run(main(parser.parse_args())))
