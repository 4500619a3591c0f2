"""The Kubernetes backend's numbers, against the fake API server of the tests (no real cluster runs here).

Prints numbers; it is not a test. Usage:

    python bench/kube.py [--revisions 1000] [--changes 10]

1. API calls per autoscaler tick with no change: 1,000 revisions are created (a Deployment and a headless
   Service each, in process, through the real `kubernetes` client), then every revision is asked for the scale
   it already has, as a tick that changes nothing would; the fake counts the requests that caused. Target: 0.
2. Endpoint change in the watch -> traffic: `ferry up` (real Envoy) with `backend: kubernetes` and one revision
   pinned at one replica. Two local processes stand in for pods A and B; each round the bench replaces the
   revision's EndpointSlice (B ready, A gone, or back), which the fake streams to ferry's watch at once, and
   times until the gateway answers from the new pod. Target: <= 50 ms.
3. The same with two replicas (--leader-elect, each in its own folder) and the gateway connected to the
   follower: the change reaches the gateway through the follower's mirror of the leader's xDS state.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Processes, api_token, free_port, log  # noqa: E402  (bench helpers, not a package)

from tests.kube_fake import FakeKubeAPI  # noqa: E402  (the fake API server the tests use)

HELLO_APP = ROOT / "examples" / "hello" / "app.py"


async def api_calls_per_idle_tick(fake: FakeKubeAPI, revisions: int) -> tuple[int, int, float]:
    from kubernetes import client as k8s

    from ferry.backends.kubernetes import KubernetesBackend, KubeWorkload

    config = k8s.Configuration()
    config.host = fake.url
    api = k8s.ApiClient(config)
    backend = KubernetesBackend(lambda revision, endpoints: None, namespace="default", api_client=api)
    try:
        await backend.start()
        workloads = [KubeWorkload(service=f"s{i}", revision=f"s{i}-00001", image="example/app:1") for i in range(revisions)]
        began = time.perf_counter()
        for workload in workloads:
            await backend.scale(workload, 1)
        created_s = time.perf_counter() - began
        created = len(fake.requests)
        mark = len(fake.requests)
        for workload in workloads:
            await backend.scale(workload, 1)
        idle = len([r for r in fake.requests_since(mark) if not r.watch])
        return created, idle, created_s
    finally:
        await backend.aclose()
        api.close()


def start_pod(procs: Processes, message: str) -> int:
    port = free_port()
    procs.start(f"pod {message}", [sys.executable, str(HELLO_APP)],
                env={**os.environ, "PORT": str(port), "K_REVISION": "hello-00001", "MESSAGE": message},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return port


def start_ferry(procs: Processes, workdir: Path, name: str, *extra: str) -> tuple[int, int]:
    """`ferry up` in its own folder (its own SQLite); returns its (xds, api) ports."""
    api_port, xds, admin, activator = (free_port() for _ in range(4))
    log_file = open(workdir / f"{name}.log", "wb")
    procs.start(name, [
        sys.executable, "-m", "ferry", "up", str(workdir / "routes.yaml"), "-q", "--api", f"127.0.0.1:{api_port}",
        "--xds", f"127.0.0.1:{xds}", "--admin", f"127.0.0.1:{admin}", "--activator", f"127.0.0.1:{activator}",
        *extra,
    ], stdout=log_file, stderr=log_file, cwd=workdir)
    return xds, api_port


async def watch_to_traffic(fake: FakeKubeAPI, changes: int, *, replicas: bool = False) -> list[float]:
    """`replicas`: two ferrys elect a leader; the gateway is connected to the follower, so each change also
    crosses the follower's mirror of the leader's state."""
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="ferry-bench-kubernetes-"))
    gateway = free_port()
    kubeconfig = fake.write_kubeconfig(workdir / "kubeconfig")
    (workdir / "routes.yaml").write_text(
        f"gateway: {{listen: 127.0.0.1:{gateway}, domain: localhost}}\n"
        f"backend: {{kind: kubernetes, kubeconfig: {kubeconfig}}}\n"
        "services:\n  hello:\n    template:\n      image: example/hello:1\n"
        "      readiness: {path: /healthz}\n      scale: {min: 1, max: 1, burstCapacity: 0}\n"
    )
    timings = []
    try:
        pods = {"a": start_pod(procs, "a"), "b": start_pod(procs, "b")}
        if not replicas:
            start_ferry(procs, workdir, "ferry")
        else:
            token_args, _ = api_token(workdir)  # one per install: the follower reports to the leader with it
            elect = ("--leader-elect", "--advertise", "127.0.0.1", "--no-envoy", *token_args)
            start_ferry(procs, workdir, "leader", *elect)
            while (lease := fake.get("leases", "ferry")) is None or not lease["spec"].get("holderIdentity"):
                await asyncio.sleep(0.05)
            follower_dir = workdir / "follower"
            follower_dir.mkdir()
            (follower_dir / "routes.yaml").write_text((workdir / "routes.yaml").read_text())
            follower_xds, _ = start_ferry(procs, follower_dir, "follower", *elect)
            config = workdir / "gateway.yaml"
            config.write_text(subprocess.run(
                [sys.executable, "-m", "ferry", "bootstrap", "--node-id", "gateway-on-follower",
                 "--xds", f"127.0.0.1:{follower_xds}", "--admin", f"127.0.0.1:{free_port()}",
                 "--stats", f"127.0.0.1:{free_port()}"],
                check=True, capture_output=True, text=True).stdout)
            from ferry.envoy.process import envoy_binary

            procs.start("envoy", [envoy_binary(), "-c", str(config), "--log-level", "warning"],
                        stdout=subprocess.DEVNULL, stderr=open(workdir / "envoy.log", "wb"))
        deadline = time.monotonic() + 60
        deadline = time.monotonic() + 60
        while fake.get("services", "hello-00001") is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Service from ferry (log: {workdir / 'ferry.log'})")
            await asyncio.sleep(0.05)
        labels = fake.get("services", "hello-00001")["metadata"]["labels"]

        def serve_from(pod: str) -> None:
            fake.put_slice("hello-00001-x", service="hello-00001", endpoints=[("127.0.0.1", True, False)],
                           port=pods[pod], labels=labels)

        async with aiohttp.ClientSession() as session:

            async def answer() -> str | None:
                try:
                    async with session.get(f"http://127.0.0.1:{gateway}/", headers={"Host": "hello.localhost"}) as r:
                        return (await r.text()).strip() if r.status == 200 else None
                except aiohttp.ClientError:
                    return None

            serve_from("a")
            while await answer() != "hello-00001: a":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the gateway never answered from pod a (log: {workdir / 'ferry.log'})")
                await asyncio.sleep(0.05)
            for round_ in range(changes):
                pod = "b" if round_ % 2 == 0 else "a"
                began = time.perf_counter()
                serve_from(pod)
                while await answer() != f"hello-00001: {pod}":
                    pass
                timings.append((time.perf_counter() - began) * 1000)
                log(f"round {round_ + 1}: slice -> pod {pod}: gateway answered from it after {timings[-1]:.1f} ms")
    finally:
        procs.stop_all()
    return timings


async def main(args) -> None:
    fake = FakeKubeAPI()
    await fake.start()
    try:
        created, idle, created_s = await api_calls_per_idle_tick(fake, args.revisions)
        print(f"\n1. {args.revisions} revisions created with {created} API requests in {created_s:.1f} s; "
              f"a tick asking each for the scale it has: {idle} requests (target 0)")
        fake.objects["deployments"].clear()
        fake.objects["services"].clear()
        timings = await watch_to_traffic(fake, args.changes)
        print(f"2. EndpointSlice change -> the gateway answers from the new pod ({len(timings)} changes): "
              f"median {statistics.median(timings):.1f} ms, max {max(timings):.1f} ms (target <= 50 ms)")
        for kind in ("deployments", "services", "leases"):
            fake.objects[kind].clear()
        timings = await watch_to_traffic(fake, args.changes, replicas=True)
        print(f"3. The same, the gateway connected to a follower replica (leader -> follower's mirror -> gateway): "
              f"median {statistics.median(timings):.1f} ms, max {max(timings):.1f} ms (target <= 50 ms)")
    finally:
        await fake.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revisions", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
