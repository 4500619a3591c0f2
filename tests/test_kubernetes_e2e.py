"""The Kubernetes path end to end: `ferry up` with `backend: kubernetes` against a fake API server, whose
"pods" are local example-app processes started by a tiny kubelet stand-in; real Envoy serves real requests.

The fake (tests/kube_fake.py) speaks the Kubernetes API through the real client library; the stand-in does
what the Deployment and EndpointSlice controllers would: for every replica of a ferry Deployment it runs the
container's command locally, and publishes an EndpointSlice (labelled like the revision's Service) once the
process answers its readiness path.
"""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp
import pytest

from .ferry_process import HELLO_APP
from .helpers import free_port, wait_until
from .kube_fake import FakeKubeAPI
from .load import count_revisions

pytestmark = pytest.mark.timeout(180)


class Kubelet:
    """Runs each ferry Deployment's replicas as local processes and reports them in EndpointSlices."""

    def __init__(self, fake: FakeKubeAPI) -> None:
        self.fake = fake
        self.pods: dict[str, list[tuple[asyncio.subprocess.Process, int]]] = {}
        self._task: asyncio.Task | None = None
        self._probes: set[asyncio.Task] = set()

    async def __aenter__(self) -> Kubelet:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        for task in (self._task, *self._probes):
            task.cancel()
        await asyncio.gather(self._task, *self._probes, return_exceptions=True)
        for pods in self.pods.values():
            for proc, _ in pods:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    async def _run(self) -> None:
        while True:
            self.fake.changed.clear()
            for (_namespace, name), deployment in list(self.fake.objects["deployments"].items()):
                await self._converge(name, deployment)
            for name in [n for n in self.pods if ("default", n) not in self.fake.objects["deployments"]]:
                await self._converge(name, None)
            try:
                await asyncio.wait_for(self.fake.changed.wait(), 0.2)
            except asyncio.TimeoutError:
                pass

    async def _converge(self, name: str, deployment: dict | None) -> None:
        pods = self.pods.setdefault(name, [])
        want = deployment["spec"]["replicas"] if deployment else 0
        while len(pods) > want:
            proc, port = pods.pop()
            self.fake.delete_slice(f"{name}-{port}")
            proc.terminate()
            await proc.wait()
        if len(pods) < want:
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            labels = self.fake.get("services", name)["metadata"]["labels"]
            while len(pods) < want:
                port = free_port()
                proc = await asyncio.create_subprocess_exec(
                    *container["command"], *container.get("args", []), env={**os.environ, **env, "PORT": str(port)},
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                )
                pods.append((proc, port))
                probe = asyncio.create_task(self._report_ready(name, port, labels))
                self._probes.add(probe)
                probe.add_done_callback(self._probes.discard)

    async def _report_ready(self, name: str, port: int, labels: dict) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
        self.fake.put_slice(f"{name}-{port}", service=name, endpoints=[("127.0.0.1", True, False)], port=port,
                            labels=labels)


async def test_revisions_run_as_deployments_and_serve_through_envoy(ferry, tmp_path):
    fake = FakeKubeAPI()
    await fake.start()
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        f = ferry(extra=("--retain-revisions", "1"))
        async with Kubelet(fake):

            def routes(message: str) -> None:
                text = f"""\
gateway: {{listen: 127.0.0.1:{f.gateway_port}, domain: localhost}}
backend: {{kind: kubernetes, kubeconfig: {kubeconfig}}}
services:
  hello:
    template:
      image: example/hello:1
      command: [{sys.executable}, {HELLO_APP}]
      env: {{MESSAGE: {message}}}
      readiness: {{path: /healthz}}
      scale: {{min: 1, burstCapacity: 0}}
"""
                tmp = f.routes.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, f.routes)

            routes("v1")
            await f.start()
            await f.wait_converged()
            deployment = fake.get("deployments", "hello-00001")
            assert deployment["spec"]["replicas"] == 1
            assert deployment["metadata"]["labels"]["ferry.dev/revision"] == "hello-00001"
            assert await count_revisions(f.gateway, "hello.localhost", 40) == {"hello-00001": 40}

            routes("v2")  # a new revision: a new Deployment; traffic moves once its slice says ready
            await wait_until(lambda: _serves(f, "hello-00002"), 60, f"hello-00002; log:\n{f.log_text}")
            assert fake.get("deployments", "hello-00002")["spec"]["replicas"] == 1
            # Out of the traffic: drained and scaled to zero, then (only the newest revision retained here)
            # garbage-collected.
            await wait_until(lambda: fake.get("deployments", "hello-00001") is None, 60,
                             f"the retired revision's Deployment to be deleted; log:\n{f.log_text}")
            scaled = [r.path for r in fake.requests if r.method == "PATCH" and "hello-00001/scale" in r.path]
            assert scaled, "scaled to zero before deletion"
    finally:
        await fake.close()


async def _serves(f, revision: str) -> bool:
    try:
        return await count_revisions(f.gateway, "hello.localhost", 10, concurrency=2) == {revision: 10}
    except aiohttp.ClientError:
        return False


async def test_a_standby_replica_takes_over_when_the_leader_dies(ferry, tmp_path):
    fake = FakeKubeAPI()
    await fake.start()
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        elect = ("--leader-elect", "--lease-duration", "2")
        leader, standby = ferry(extra=elect), ferry(extra=elect)  # one folder: one routes file, one state
        standby.gateway_port = leader.gateway_port  # the gateway a Service would send clients to
        leader.routes.write_text(f"""\
gateway: {{listen: 127.0.0.1:{leader.gateway_port}, domain: localhost}}
backend: {{kind: kubernetes, kubeconfig: {kubeconfig}}}
services:
  hello:
    template:
      image: example/hello:1
      command: [{sys.executable}, {HELLO_APP}]
      readiness: {{path: /healthz}}
      scale: {{min: 1, burstCapacity: 0}}
""")
        async with Kubelet(fake):
            await leader.start()
            await leader.wait_converged()
            assert await count_revisions(leader.gateway, "hello.localhost", 20) == {"hello-00001": 20}
            holder = fake.get("leases", "ferry")["spec"]["holderIdentity"]
            assert holder.endswith(f"-{leader.proc.pid}"), holder

            taking_over = asyncio.create_task(standby.start())  # returns once its API answers: when it leads
            # While the leader renews, the standby waits (its API is not even up, so it is never ready).
            done, _ = await asyncio.wait({taking_over}, timeout=3)
            assert not done, "the standby started while the leader held the lease"

            await leader.kill()  # no release: the standby must wait out the lease
            await taking_over
            await standby.wait_converged()
            assert await count_revisions(standby.gateway, "hello.localhost", 20) == {"hello-00001": 20}
            lease = fake.get("leases", "ferry")["spec"]
            assert lease["holderIdentity"].endswith(f"-{standby.proc.pid}") and lease["leaseTransitions"] == 1
    finally:
        await fake.close()
