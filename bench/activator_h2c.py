"""What the activator costs gRPC: unary calls/s through real Envoy straight to an instance vs through the activator.

Prints numbers and PASS/FAIL; it is not a test. Usage:

    python bench/activator_h2c.py [--clients 32] [--seconds 5] [--rounds 2] [--no-alternatives]

`ferry up` runs one routes file with two h2c services of the example gRPC app (examples/grpc/app.py, grpcio), one
instance each: `direct` (burstCapacity 0: Envoy sends calls straight to the instance) and `held` (burstCapacity -1:
the activator is always in path, so every call goes Envoy -> activator -> instance over h2c). A load process (its
own, grpcio's asyncio client) keeps `--clients` unary calls of a 2-byte message in flight on one channel, closed
loop, for `--seconds` after a 1 s warm-up, on each host in turn, `--rounds` times. The target: through the activator
at least 25 % of direct calls/s.

Then, without Envoy (unless --no-alternatives), the same load straight at an instance, at the activator alone, and
at a gRPC-only alternative, a grpcio generic proxy (a grpc.aio server whose generic handler forwards each call as raw
bytes on a grpc.aio channel): the two ways an h2c activator could be built, side by side.

All processes share the machine's cores (the load generator, Envoy, ferry, the activator and the instance on 2 cores
here): the numbers are a floor, and the ratio is what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Processes, api_token, free_port, log, machine  # bench/ is the script's folder, on sys.path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "grpc" / "app.py"
TARGET_RATIO = 0.25
REVISION = "bench-h2c"
METHOD = "/echo.Echo/Say"


# -- the load process -----------------------------------------------------------------------------------

def load(port: int, authority: str, clients: int, seconds: float, revision: str) -> None:
    import grpc

    async def main() -> dict:
        options = [("grpc.default_authority", authority)] if authority else []
        metadata = (("ferry-revision", revision),) if revision else None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = channel.unary_unary(METHOD)
            latencies: list[float] = []
            errors = 0
            loop = asyncio.get_running_loop()
            record_from = loop.time() + 1.0
            stop_at = record_from + seconds

            async def client() -> None:
                nonlocal errors
                while (now := loop.time()) < stop_at:
                    try:
                        await call(b"hi", metadata=metadata, timeout=10)
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    if now >= record_from:
                        latencies.append(loop.time() - now)

            await asyncio.gather(*(client() for _ in range(clients)))
        latencies.sort()
        pick = (lambda p: round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000, 2)
                if latencies else None)
        return {"calls_s": round(len(latencies) / seconds, 1), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                "errors": errors}

    print(json.dumps(asyncio.run(main())), flush=True)


def run_load(port: int, authority: str, args, revision: str = "") -> dict:
    out = subprocess.run([sys.executable, __file__, "--load", str(port), authority or "-", str(args.clients),
                          str(args.seconds), revision or "-"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- servers for the scenario without Envoy ---------------------------------------------------------------

def serve_activator(port: int, instance_port: int) -> None:
    sys.path.insert(0, str(ROOT))
    from ferry.activator import Activator

    async def main() -> None:
        activator = Activator(port=port)
        await activator.start()
        activator.set_revision(REVISION, [("127.0.0.1", instance_port)], concurrency=0, timeout_s=60)
        print("ready", flush=True)
        await _until_terminated()
        await activator.aclose()

    asyncio.run(main())


def serve_grpc_proxy(port: int, instance_port: int) -> None:
    """The alternative: a generic grpcio proxy. It carries gRPC only (unary here; streams would need their own
    handlers), not any h2c."""
    import grpc

    async def main() -> None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{instance_port}")

        class Forward(grpc.GenericRpcHandler):
            def service(self, details):
                method = details.method
                forward = channel.unary_unary(method)

                async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    metadata = [(k, v) for k, v in context.invocation_metadata() if k != "ferry-revision"]
                    return await forward(request, metadata=metadata, timeout=context.time_remaining())

                return grpc.unary_unary_rpc_method_handler(unary)

        server = grpc.aio.server()
        server.add_generic_rpc_handlers([Forward()])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await _until_terminated()
        await server.stop(1)
        await channel.close()

    asyncio.run(main())


async def _until_terminated() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


def start_server(procs: Processes, name: str, *args: str) -> None:
    process = procs.start(name, [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if line.strip() != "ready":
        raise SystemExit(f"{name} did not start: {line!r}")


def start_app(procs: Processes, port: int) -> None:
    import socket

    procs.start("instance", [sys.executable, str(APP)], env={**os.environ, "PORT": str(port), "K_REVISION": REVISION},
                stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise SystemExit("the gRPC app did not start")


# -- the scenarios ----------------------------------------------------------------------------------------

ROUTES = """gateway:
  listen: 127.0.0.1:{gateway}
  domain: localhost
services:
  direct:
    template:
      command: [{python}, {app}]
      protocol: h2c
      scale: {{min: 1, initial: 1, burstCapacity: 0}}
  held:
    template:
      command: [{python}, {app}]
      protocol: h2c
      scale: {{min: 1, initial: 1, burstCapacity: -1}}
"""


async def through_envoy(args, procs: Processes, workdir: Path) -> list[tuple[dict, dict]]:
    import aiohttp

    gateway, api, xds, admin, activator = (free_port() for _ in range(5))
    routes = workdir / "routes.yaml"
    routes.write_text(ROUTES.format(gateway=gateway, python=sys.executable, app=APP))
    token_args, auth = api_token(workdir)
    ferry_log = open(workdir / "ferry.log", "wb")
    procs.start("ferry", [sys.executable, "-m", "ferry", "up", str(routes), "-q", "--api", f"127.0.0.1:{api}",
                          "--xds", f"127.0.0.1:{xds}", "--admin", f"127.0.0.1:{admin}",
                          "--activator", f"127.0.0.1:{activator}", *token_args],
                stdout=ferry_log, stderr=ferry_log, cwd=workdir)

    async def ready(session) -> bool:
        try:
            async with session.get(f"http://127.0.0.1:{api}/status") as response:
                status = await response.json()
        except aiohttp.ClientError:
            return False
        revisions = status.get("revisions", {})
        in_path = {r["service"]: (r.get("autoscaling") or {}).get("activator_in_path") for r in revisions.values()}
        gateways = [g for g in status.get("gateways", []) if g["connected"]]
        return (bool(gateways) and all(g["in_sync"] for g in gateways)
                and all(s["routed"] for s in status.get("services", {}).values())
                and in_path == {"direct": False, "held": True})

    async with aiohttp.ClientSession(headers=auth) as session:
        deadline = time.monotonic() + 60
        while not await ready(session):
            if time.monotonic() > deadline:
                raise SystemExit(f"ferry did not converge; see {workdir / 'ferry.log'}")
            await asyncio.sleep(0.1)
    rounds = []
    for index in range(args.rounds):
        direct = run_load(gateway, "direct.localhost", args)
        held = run_load(gateway, "held.localhost", args)
        log(f"round {index + 1}: direct {direct}, via activator {held}")
        rounds.append((direct, held))
    return rounds


def alternatives(args, procs: Processes) -> dict[str, dict]:
    instance, activator, proxy = free_port(), free_port(), free_port()
    start_app(procs, instance)
    start_server(procs, "activator", "--serve-activator", str(activator), str(instance))
    start_server(procs, "grpc proxy", "--serve-grpc-proxy", str(proxy), str(instance))
    results = {"instance": run_load(instance, "", args),
               "activator (h2)": run_load(activator, "", args, REVISION),
               "grpcio proxy": run_load(proxy, "", args, REVISION)}
    for name, result in results.items():
        log(f"no Envoy, {name}: {result}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-alternatives", action="store_true")
    args = parser.parse_args()
    for key, value in machine():
        print(f"{key}: {value}")
    print(f"load: {args.clients} concurrent unary calls, 2-byte messages, {args.seconds:g} s per run, "
          f"{args.rounds} rounds")
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="ferry-bench-h2c-"))
    try:
        rounds = asyncio.run(through_envoy(args, procs, workdir))
        procs.stop_all()
        alternative = {} if args.no_alternatives else alternatives(args, procs)
    finally:
        procs.stop_all()
    print(f"\n{'through Envoy':28} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for index, (direct, held) in enumerate(rounds):
        for name, result in (("direct", direct), ("via activator", held)):
            print(f"round {index + 1} {name:20} {result['calls_s']:9.0f} {result['p50_ms']:8} {result['p99_ms']:8} "
                  f"{result['errors']:7}")
    for name, result in alternative.items():
        print(f"no Envoy: {name:17} {result['calls_s']:9.0f} {result['p50_ms']:8} {result['p99_ms']:8} "
              f"{result['errors']:7}")
    ratios = [held["calls_s"] / direct["calls_s"] for direct, held in rounds if direct["calls_s"]]
    ratio = min(ratios) if ratios else 0.0
    errors = sum(d["errors"] + h["errors"] for d, h in rounds)
    ok = ratio >= TARGET_RATIO and errors == 0
    print(f"\nvia activator / direct: {', '.join(f'{r:.0%}' for r in ratios)} (target >= {TARGET_RATIO:.0%}, "
          f"no errors): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--load"]:
        port, authority, clients, seconds, revision = sys.argv[2:7]
        load(int(port), "" if authority == "-" else authority, int(clients), float(seconds),
             "" if revision == "-" else revision)
    elif sys.argv[1:2] == ["--serve-activator"]:
        serve_activator(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["--serve-grpc-proxy"]:
        serve_grpc_proxy(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(main())
