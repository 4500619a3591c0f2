"""The Kubernetes path end to end: `ferry up` with `backend: kubernetes` against a fake API server, whose
"pods" are local example-app processes started by a tiny kubelet stand-in; real Envoy serves real requests.

The fake (tests/kube_fake.py) speaks the Kubernetes API through the real client library; the stand-in does
what the Deployment and EndpointSlice controllers would: for every replica of a ferry Deployment it runs the
container's command locally, and publishes an EndpointSlice (labelled like the revision's Service) once the
process answers its readiness path.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import pytest

from ferry.certs import make as make_certs
from ferry.envoy.bootstrap import BootstrapOptions, XdsTls
from ferry.envoy.process import EnvoyProcess

from .ferry_process import HELLO_APP
from .helpers import free_port, wait_until
from .kube_fake import FakeKubeAPI
from .load import Load, count_revisions

pytestmark = pytest.mark.timeout(180)


class Kubelet:
    """Runs each ferry Deployment's replicas as local processes and reports them in EndpointSlices."""

    def __init__(self, fake: FakeKubeAPI) -> None:
        self.fake = fake
        self.pods: dict[str, list[tuple[asyncio.subprocess.Process, int]]] = {}
        self._task: asyncio.Task | None = None
        self._probes: set[asyncio.Task] = set()
        self._stopping = False

    async def __aenter__(self) -> Kubelet:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc) -> None:
        # Let the loop finish its round rather than cancel it mid-spawn (a pod started then would leak).
        self._stopping = True
        self.fake.changed.set()
        await asyncio.gather(self._task, return_exceptions=True)
        for task in self._probes:
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)
        for pods in self.pods.values():
            for proc, _ in pods:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    async def _run(self) -> None:
        while not self._stopping:
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


def hello_routes(gateway_port: int, kubeconfig, message: str) -> str:
    """The example app as one revision on the Kubernetes backend (the stand-in kubelet runs its command)."""
    return f"""\
gateway: {{listen: 127.0.0.1:{gateway_port}, domain: localhost}}
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


def write_atomically(path, text: str) -> None:
    """As editors and kubelet's ConfigMap updates do: the watcher never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_revisions_run_as_deployments_and_serve_through_envoy(ferry, tmp_path):
    fake = FakeKubeAPI()
    await fake.start()
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        f = ferry(extra=("--retain-revisions", "1"))
        async with Kubelet(fake):

            def routes(message: str) -> None:
                write_atomically(f.routes, hello_routes(f.gateway_port, kubeconfig, message))

            routes("v1")
            await f.start()
            await f.wait_converged()
            deployment = fake.get("deployments", "hello-00001")
            assert deployment["spec"]["replicas"] == 1
            assert deployment["metadata"]["labels"]["ferry.dev/revision"] == "hello-00001"
            assert await count_revisions(f.gateway, "hello.localhost", 40) == {"hello-00001": 40}

            routes("v2")  # a new revision: a new Deployment; traffic moves once its slice says ready
            await wait_until(lambda: _serves_at(f.gateway, "hello-00002"), 60, f"hello-00002; log:\n{f.log_text}")
            assert fake.get("deployments", "hello-00002")["spec"]["replicas"] == 1
            # Out of the traffic: drained and scaled to zero, then (only the newest revision retained here)
            # garbage-collected.
            await wait_until(lambda: fake.get("deployments", "hello-00001") is None, 60,
                             f"the retired revision's Deployment to be deleted; log:\n{f.log_text}")
            scaled = [r.path for r in fake.requests if r.method == "PATCH" and "hello-00001/scale" in r.path]
            assert scaled, "scaled to zero before deletion"
    finally:
        await fake.close()


async def test_replicas_serve_one_state_and_a_follower_takes_over_without_dropping_its_gateway(ferry, tmp_path):
    """Two ferry replicas, each with its own state folder (its own SQLite, as with an emptyDir): the follower
    serves the leader's xDS state to its own gateway, forwards the API, and reports that gateway to the leader;
    when the leader is killed, the follower takes over with the same cache and the revision history the
    leader recorded on the Deployments: its gateway stays connected and answers every request."""
    fake = FakeKubeAPI()
    await fake.start()
    gateway = None
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        # 6 s: the fake API shares this test's loop with the load below; on a loaded machine its answers to a lease
        # renewal can lag by seconds, and a shorter lease would make the new leader step down.
        token = tmp_path / "api-token"  # one per install, shared by the replicas
        token.write_text("replicas-share-this-token\n")
        elect = ("--leader-elect", "--lease-duration", "6", "--advertise", "127.0.0.1", "--token-file", str(token))
        leader_dir, follower_dir = tmp_path / "a", tmp_path / "b"
        leader_dir.mkdir(), follower_dir.mkdir()
        leader = ferry(workdir=leader_dir, extra=elect)
        follower = ferry(workdir=follower_dir, envoy=False, extra=elect)

        def routes(message: str) -> None:
            for f in (leader, follower):  # one ConfigMap, mounted in every replica
                write_atomically(f.routes, hello_routes(leader.gateway_port, kubeconfig, message))

        routes("v1")
        async with Kubelet(fake):
            await leader.start()
            await leader.wait_converged()
            await follower.start()
            await wait_until(lambda: _replica(follower, "mirror", "synced"), 30, f"mirror; log:\n{follower.log_text}")
            assert await _replica(follower, "role") == "follower"
            async with aiohttp.ClientSession() as session:  # ready: the Service may send it gateways
                for f in (leader, follower):
                    async with session.get(f"{f.api}/readyz") as response:
                        assert response.status == 200, f.log_text

            # A gateway of its own on the follower, listening on its own port (node metadata ferry.listen).
            port = free_port()
            gateway = EnvoyProcess(BootstrapOptions(
                node_id="gateway-on-follower", xds_port=follower.xds_port, admin_port=free_port(),
                listen=f"127.0.0.1:{port}"), follower_dir)
            await gateway.start()
            via_follower = f"http://127.0.0.1:{port}"
            await wait_until(lambda: _serves_at(via_follower, "hello-00001"), 30, "the follower's gateway")

            # The API of a follower is the leader's; the leader counts the follower's gateway for autoscaling.
            status = await follower.status()
            assert status["services"]["hello"]["latest_ready"] == "hello-00001"
            await wait_until(lambda: _gateway_via(leader, "gateway-on-follower"), 10, "the follower's report")

            routes("v2")  # the leader applies it; the follower's gateway follows through the mirror
            await wait_until(lambda: _serves_at(via_follower, "hello-00002"), 60, f"v2; log:\n{leader.log_text}")
            deployments = set(name for _, name in fake.objects["deployments"])

            async with Load(via_follower, "hello.localhost", concurrency=2) as load:
                await load.wait_for(50)
                await leader.kill()  # no release: the follower waits out the lease, its gateway keeps serving
                await wait_until(lambda: _replica(follower, "role", expect="leader"), 30,
                                 f"takeover; log:\n{follower.log_text}")
                await follower.wait_converged()
                await load.wait_for(100)
            assert load.failures == 0, load.bad
            assert load.revisions.keys() == {"hello-00002"}

            # The new leader continued the history it never wrote: same names, nothing created again.
            status = await follower.status()
            assert status["services"]["hello"]["latest_created"] == "hello-00002"
            assert status["services"]["hello"]["latest_ready"] == "hello-00002"
            assert set(name for _, name in fake.objects["deployments"]) == deployments
            (connected,) = [g for g in status["gateways"] if g["node"] == "gateway-on-follower"]
            assert connected["connected"] and connected["in_sync"]
            assert len([g for g in status["gateways"] if g["node"] == "gateway-on-follower"]) == 1  # never reconnected
            lease = fake.get("leases", "ferry")["spec"]
            assert lease["holderIdentity"].endswith(f"-{follower.proc.pid}") and lease["leaseTransitions"] == 1
    finally:
        if gateway is not None:
            await gateway.stop()
        await fake.close()


async def test_replicas_over_mutual_tls(ferry, tmp_path):
    """As `ferry manifests` runs them: xDS and the API between replicas over mutual TLS with one install's
    certificates. The follower mirrors the leader and reports its gateway over HTTPS with its certificate; a
    gateway with the gateway certificate is served; the user's `ferry status` reaches the leader through the
    follower with the token and the CA; the token alone does not make a replica."""
    fake = FakeKubeAPI()
    await fake.start()
    gateway = None
    try:
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        certs = make_certs(tmp_path / "certs")
        token = tmp_path / "api-token"
        token.write_text("replicas-share-this-token\n")
        elect = ("--leader-elect", "--lease-duration", "6", "--advertise", "127.0.0.1", "--token-file", str(token),
                 "--xds-cert", str(certs["server.crt"]), "--xds-key", str(certs["server.key"]),
                 "--xds-ca", str(certs["ca.crt"]))
        leader_dir, follower_dir = tmp_path / "a", tmp_path / "b"
        leader_dir.mkdir(), follower_dir.mkdir()
        leader = ferry(workdir=leader_dir, extra=elect)
        follower = ferry(workdir=follower_dir, envoy=False, extra=elect)
        for f in (leader, follower):
            write_atomically(f.routes, hello_routes(leader.gateway_port, kubeconfig, "v1"))
        async with Kubelet(fake):
            await leader.start()
            await leader.wait_converged()  # its own Envoy connects with ferry's certificate
            await follower.start()
            await wait_until(lambda: _replica(follower, "mirror", "synced"), 30, f"mirror; log:\n{follower.log_text}")

            port = free_port()
            gateway = EnvoyProcess(BootstrapOptions(
                node_id="gateway-on-follower", xds_port=follower.xds_port, admin_port=free_port(),
                listen=f"127.0.0.1:{port}", xds_tls=XdsTls(str(certs["gateway.crt"]), str(certs["gateway.key"]),
                                                           str(certs["ca.crt"]))), follower_dir)
            await gateway.start()
            await wait_until(lambda: _serves_at(f"http://127.0.0.1:{port}", "hello-00001"), 30, "the gateway")
            await wait_until(lambda: _gateway_via(leader, "gateway-on-follower"), 10, "the follower's report")

            cli = subprocess.run(
                [sys.executable, "-m", "ferry", "status", "--json", "--api", follower.api, "--ca", str(certs["ca.crt"]),
                 "--token-file", str(token)], capture_output=True, text=True, timeout=30)
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout)["services"]["hello"]["latest_ready"] == "hello-00001"

            async with leader.session() as session:  # the token, but no client certificate
                async with session.put(f"{leader.api}/replicas/intruder/gateways",
                                       json={"gateways": [], "ttl_s": 5}) as response:
                    assert response.status == 403
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientError):  # plain HTTP is not spoken
                    async with session.get(f"http://127.0.0.1:{leader.api_port}/healthz") as response:
                        await response.read()
    finally:
        if gateway is not None:
            await gateway.stop()
        await fake.close()


async def _replica(f, *keys: str, expect=None):
    value = await f.get_json("/replica")
    for key in keys:
        value = value[key]
    return value == expect if expect is not None else value


async def _gateway_via(f, node: str) -> bool:
    return any(g["node"] == node and g.get("via") for g in (await f.status())["gateways"])


async def _serves_at(url: str, revision: str) -> bool:
    try:
        return await count_revisions(url, "hello.localhost", 10, concurrency=2) == {revision: 10}
    except aiohttp.ClientError:
        return False
