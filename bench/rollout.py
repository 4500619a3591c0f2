"""How fast a failing canary is rolled back: from the failing check to every gateway serving the stable revision.

Prints numbers; it is not a test. Usage:

    python bench/rollout.py [--repeat 5] [--gateways 2]

`ferry up` (real Envoy) runs the example app as service `hello` with a canary rollout (steps [50, 100], 1 s
interval, minRequests 10). A light load runs throughout. Each round saves a new template whose instances answer
every request with 500 (ERROR_RATE=1): the rollout starts, the first check fails, and ferry rolls back. ferry
measures each rollback itself: from the moment the check's verdict is in (perf_counter in the rollout loop) to the
moment every connected gateway has ACKed the route without the candidate; the bench reads it from
/rollouts/hello. Extra gateways (`--gateways`) are Envoys started from `ferry bootstrap`, on their own ports.
Target: <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Processes, api_token, free_port, log  # noqa: E402  (bench helpers, not a package)

ROOT = Path(__file__).resolve().parent.parent
HELLO_APP = ROOT / "examples" / "hello" / "app.py"
ROLLOUT = "rollout: {strategy: canary, steps: [50, 100], interval: 1s, analysis: {minRequests: 10, successRate: 99}}"


def routes(gateway_port: int, message: str, error_rate: float) -> str:
    return (
        f"gateway: {{listen: 127.0.0.1:{gateway_port}, domain: localhost}}\n"
        "services:\n  hello:\n    template:\n"
        f"      command: [{sys.executable}, {HELLO_APP}]\n"
        f"      env: {{MESSAGE: '{message}', ERROR_RATE: '{error_rate}'}}\n"
        "      readiness: {path: /healthz}\n      scale: {min: 1}\n"
        f"    {ROLLOUT}\n"
    )


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def main(args) -> None:
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="ferry-bench-rollout-"))
    gateway_port, api_port, xds_port, admin_port, activator_port = (free_port() for _ in range(5))
    api = f"http://127.0.0.1:{api_port}"
    path = workdir / "routes.yaml"
    write(path, routes(gateway_port, "v1", 0.0))
    results: list[float] = []
    try:
        log_file = open(workdir / "ferry.log", "wb")
        token_args, auth = api_token(workdir)
        procs.start("ferry", [
            sys.executable, "-m", "ferry", "up", str(path), "-q", "--api", f"127.0.0.1:{api_port}",
            "--xds", f"127.0.0.1:{xds_port}", "--admin", f"127.0.0.1:{admin_port}",
            "--activator", f"127.0.0.1:{activator_port}", *token_args,
        ], stdout=log_file, stderr=log_file, cwd=workdir)
        extra_gateways = []
        for i in range(args.gateways - 1):
            listen, admin = free_port(), free_port()
            bootstrap = subprocess.run(
                [sys.executable, "-m", "ferry", "bootstrap", "--node-id", f"bench-{i}", "--xds", f"127.0.0.1:{xds_port}",
                 "--admin", f"127.0.0.1:{admin}", "--stats", f"127.0.0.1:{free_port()}",
                 "--listen", f"127.0.0.1:{listen}"],
                capture_output=True, text=True, check=True,
            ).stdout
            (workdir / f"gw{i}.yaml").write_text(bootstrap)
            envoy = Path(sys.executable).parent / "envoy"
            procs.start(f"envoy-{i}", [str(envoy), "-c", str(workdir / f"gw{i}.yaml"), "--base-id", str(100 + i),
                                        "--disable-hot-restart"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            extra_gateways.append(listen)
        async with aiohttp.ClientSession(headers=auth) as session:

            async def get(url: str):
                try:
                    async with session.get(url) as response:
                        return await response.json()
                except aiohttp.ClientError:
                    return None

            async def wait(condition, timeout: float, what: str):
                deadline = time.monotonic() + timeout
                while not await condition():
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"timed out waiting for {what} (log: {workdir / 'ferry.log'})")
                    await asyncio.sleep(0.05)

            async def gateways_in_sync() -> bool:
                status = await get(f"{api}/status")
                connected = [g for g in (status or {}).get("gateways", []) if g["connected"]]
                return len(connected) == args.gateways and all(g["in_sync"] for g in connected) and all(
                    s["routed"] for s in status["services"].values())

            await wait(gateways_in_sync, 60, "ferry and its gateways")
            stop = asyncio.Event()

            async def load() -> None:  # a few requests per 10 ms: the checks get their minRequests quickly
                while not stop.is_set():
                    try:
                        async with session.get(f"http://127.0.0.1:{gateway_port}/", headers={"Host": "hello.localhost"}) as r:
                            await r.read()
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.01)

            loaders = [asyncio.create_task(load()) for _ in range(4)]
            try:
                for round_ in range(args.repeat):
                    write(path, routes(gateway_port, f"failing {round_}", 1.0))
                    candidate = f"hello-{round_ + 2:05d}"

                    async def rolled_back(candidate=candidate) -> bool:
                        state = await get(f"{api}/rollouts/hello")
                        return bool(state) and state.get("candidate") == candidate and state.get("phase") == "rolled-back" \
                            and state.get("rollback_ms") is not None

                    await wait(rolled_back, 60, f"the rollback of {candidate}")
                    state = await get(f"{api}/rollouts/hello")
                    results.append(state["rollback_ms"])
                    log(f"round {round_ + 1}: {candidate} rolled back ({state['reason']}); "
                        f"every gateway in sync {state['rollback_ms']} ms after the failing check")
            finally:
                stop.set()
                await asyncio.gather(*loaders)
    finally:
        procs.stop_all()
    print(f"\nrollback, failing check -> all {args.gateways} gateway(s) ACKed the stable route "
          f"({len(results)} rounds): median {statistics.median(results):.1f} ms, max {max(results):.1f} ms "
          "(target <= 100 ms)")
    print(json.dumps({"rollback_ms": results}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gateways", type=int, default=2, help="gateways in all (ferry's own Envoy + extra ones)")
    asyncio.run(main(parser.parse_args()))
