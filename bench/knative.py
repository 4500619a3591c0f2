"""Knative Service manifests: what reading them costs next to the same services in routes.yaml, and how fast
`ferry up` of a large manifest file answers its first request.

Prints numbers and each target with PASS/FAIL; it is not a test. Usage:

    python bench/knative.py [--services 1000] [--runs 7] [--keep]

1. Writes `--services` Knative Services (one file, `---` between them), each as Knative's docs write one: an image,
   the command backend local runs (bench/fast_app.py), env, an HTTP readiness probe, a port, a timeout, a
   concurrency limit, autoscaling annotations (starting at zero: initial-scale "0"), and a traffic block; then the
   same services as routes.yaml (what `ferry convert` prints for them: the same specs without image and port,
   which a routes.yaml on backend local refuses).
2. Validate, in this process, `--runs` times each (median): load_routes (parse, translate, schema, cross checks)
   plus the revision checks against an empty history, which is what `ferry validate` does; and a one-service
   edit re-read with the last load (what a save of the file costs ferry while it runs). Also `ferry validate` as
   a command (median of 3), interpreter start included, for information.
3. `ferry up` of the Knative file (real Envoy, free loopback ports, state in a temporary folder, gateway from
   --listen/--domain): the time from the process's start to the first 200 from the gateway for s0 (its revision
   is at zero: the activator wakes one instance), and to every service routed with the gateway in sync.

Targets: validate of the Knative file <= 2x the routes.yaml's; `ferry up` to the first answer <= 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import api_token, free_port, log, machine  # noqa: E402  (bench helpers, not a package)

ROOT = Path(__file__).resolve().parent.parent
FAST_APP = ROOT / "bench" / "fast_app.py"
sys.path.insert(0, str(ROOT))
from ferry.routing import RevisionStore, load_routes, validate  # noqa: E402
from ferry.routing.fields import HostPort  # noqa: E402
from ferry.routing.knative_export import dump, routes_document  # noqa: E402
from ferry.routing.overrides import Overrides  # noqa: E402

VALIDATE_RATIO_TARGET = 2.0
FIRST_ANSWER_TARGET_S = 10.0


def knative_file(services: int) -> str:
    documents = []
    for i in range(services):
        traffic = ("  traffic:\n    - latestRevision: true\n      percent: 100\n" if i % 2 == 0 else
                   "  traffic:\n    - latestRevision: true\n      percent: 100\n      tag: next\n")
        documents.append(f"""apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: s{i}
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/initial-scale: "0"
        autoscaling.knative.dev/max-scale: "5"
        autoscaling.knative.dev/target: "50"
        autoscaling.knative.dev/window: "30s"
    spec:
      containerConcurrency: 0
      timeoutSeconds: 60
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
          command: [{json.dumps(sys.executable)}, {json.dumps(str(FAST_APP))}]
          ports:
            - containerPort: 8080
          env:
            - name: TARGET
              value: "service {i}"
          readinessProbe:
            httpGet:
              path: /healthz
{traffic}""")
    return "---\n".join(documents)


def timed(runs: int, work) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return times


def validate_once(path: Path, overrides: Overrides, workdir: Path) -> None:
    loaded = load_routes(path, overrides=overrides)
    with RevisionStore(workdir / f"validate-{time.monotonic_ns()}.db") as store:
        validate(loaded, store)


def edit_once(path: Path, text: str, overrides: Overrides) -> float:
    """A one-service edit re-read with the last load: ms."""
    previous = load_routes(path, text, overrides=overrides)
    edited = re.sub(r"service 7(?!\d)", "service 7 edited", text, count=1)
    assert edited != text
    started = time.perf_counter()
    again = load_routes(path, edited, previous=previous, overrides=overrides)
    elapsed = (time.perf_counter() - started) * 1000
    assert again.spec.services["s7"].template.env["TARGET"] == "service 7 edited"
    return elapsed


def cli_validate(path: Path, flags: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "ferry", "validate", str(path), *flags], capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return (time.perf_counter() - started) * 1000


async def first_answer(knative: Path, services: int, workdir: Path) -> tuple[float, float]:
    """`ferry up` of the file: seconds to the first 200 from s0, and to everything routed and in sync."""
    ports = {name: free_port() for name in ("api", "xds", "admin", "activator")}
    gateway = free_port()
    token_args, auth = api_token(workdir)
    log_file = open(workdir / "ferry.log", "ab")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry", "up", str(knative), "-q", "--listen", f"127.0.0.1:{gateway}", "--domain",
         "localhost", *(arg for name, port in ports.items() for arg in (f"--{name}", f"127.0.0.1:{port}")),
         *token_args], stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, cwd=workdir,
        start_new_session=True)
    first = converged = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while first is None:
                if proc.poll() is not None:
                    raise RuntimeError(f"ferry exited; see {workdir / 'ferry.log'}")
                if time.perf_counter() - started > 300:
                    raise TimeoutError("no answer from s0 in 300 s")
                try:
                    async with session.get(f"http://127.0.0.1:{gateway}/", headers={"Host": "s0.localhost"}) as r:
                        await r.read()
                        if r.status == 200 and r.headers.get("x-revision") == "s0-00001":
                            first = time.perf_counter() - started
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.01)
            while converged is None:
                async with session.get(f"http://127.0.0.1:{ports['api']}/status", headers=auth) as r:
                    status = await r.json()
                gateways = [g for g in status.get("gateways", []) if g["connected"]]
                if (len(status.get("services", {})) == services and all(s["routed"] for s in status["services"].values())
                        and gateways and all(g["in_sync"] for g in gateways)):
                    converged = time.perf_counter() - started
                await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run([sys.executable, "-m", "ferry", "down", str(knative)], capture_output=True)
    return first, converged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ferry-bench-knative-"))
    overrides = Overrides(listen=HostPort("127.0.0.1", 8080), domain="localhost")
    knative = workdir / "services.yaml"
    knative.write_text(knative_file(args.services))
    data, _ = routes_document(load_routes(knative, overrides=overrides).spec)
    routes = workdir / "routes.yaml"
    routes.write_text(dump([data]))
    assert load_routes(routes).spec.services.keys() == load_routes(knative, overrides=overrides).spec.services.keys()
    log(f"{args.services} services: Knative file {knative.stat().st_size / 1024:.0f} KiB, routes.yaml "
        f"{routes.stat().st_size / 1024:.0f} KiB, in {workdir}")

    results: dict[str, list[float]] = {}
    for _ in range(2):  # alternate, so that neither gets the warmer machine
        results.setdefault("knative", []).extend(timed(args.runs, lambda: validate_once(knative, overrides, workdir)))
        results.setdefault("routes", []).extend(timed(args.runs, lambda: validate_once(routes, Overrides(), workdir)))
    edits = {"knative": [edit_once(knative, knative.read_text(), overrides) for _ in range(args.runs)],
             "routes": [edit_once(routes, routes.read_text(), Overrides()) for _ in range(args.runs)]}
    cli = {"knative": statistics.median(cli_validate(knative, []) for _ in range(3)),
           "routes": statistics.median(cli_validate(routes, []) for _ in range(3))}
    log("ferry up of the Knative file")
    first, converged = asyncio.run(first_answer(knative, args.services, workdir))

    k, r = statistics.median(results["knative"]), statistics.median(results["routes"])
    ratio = k / r
    print()
    for name, value in machine():
        print(f"{name:14} {value}")
    print(f"\n{args.services} services, medians of {2 * args.runs} runs (in-process; load_routes + revision checks)")
    print(f"{'':44} {'Knative':>10} {'routes.yaml':>12}")
    print(f"{'validate (ms)':44} {k:10.1f} {r:12.1f}   ratio {ratio:.2f}  target <= {VALIDATE_RATIO_TARGET:g}x: "
          f"{'PASS' if ratio <= VALIDATE_RATIO_TARGET else 'FAIL'}")
    print(f"{'  min / max (ms)':44} {min(results['knative']):5.1f} / {max(results['knative']):5.1f} "
          f"{min(results['routes']):6.1f} / {max(results['routes']):5.1f}")
    print(f"{'one-service edit, re-read with the last load (ms)':44} {statistics.median(edits['knative']):10.1f} "
          f"{statistics.median(edits['routes']):12.1f}")
    print(f"{'`ferry validate` command, median of 3 (ms)':44} {cli['knative']:10.1f} {cli['routes']:12.1f}")
    print(f"\nferry up of the Knative file: first answer from s0 {first:.2f} s  target <= {FIRST_ANSWER_TARGET_S:g} s: "
          f"{'PASS' if first <= FIRST_ANSWER_TARGET_S else 'FAIL'}; every service routed, gateway in sync "
          f"{converged:.2f} s")
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ratio <= VALIDATE_RATIO_TARGET and first <= FIRST_ANSWER_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
