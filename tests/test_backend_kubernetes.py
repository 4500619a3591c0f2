"""KubernetesBackend against a fake Kubernetes API (tests/kube_fake.py) through the real `kubernetes` client."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from ferry.backends.base import Endpoint, Workload
from ferry.backends.kubernetes import KubeWorkload, kube_workload
from ferry.backends.kubernetes.manifests import ANNOTATION_OWNER
from tests.helpers import wait_until
from tests.kube_fixtures import NS, deployment


def wl(revision: str = "hello-00001", **kw: Any) -> KubeWorkload:
    return KubeWorkload(service="hello", revision=revision, image="registry.example/hello:1", **kw)


# ---- create and scale -------------------------------------------------------------------------------


async def test_create_at_initial_scale_with_env_contract_and_probe(fake, make_backend):
    b = make_backend()
    local = Workload(service="hello", revision="hello-00001", command=("./server", "--fast"), cwd=Path("/srv"),
                     env={"GREETING": "hi", "PORT": "1"}, readiness_path="/healthz", timeout_s=42)
    await b.scale(kube_workload(local, image="registry.example/hello:1", port=9000,
                                resources={"limits": {"cpu": "1"}}), 2)

    dep = deployment(fake, "hello-00001")
    assert dep is not None
    meta, spec = dep["metadata"], dep["spec"]
    assert meta["labels"] == {"ferry.dev/service": "hello", "ferry.dev/revision": "hello-00001",
                              "app.kubernetes.io/managed-by": "ferry"}
    assert meta["annotations"] == {ANNOTATION_OWNER: "ferry"}
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 42
    (c,) = pod["containers"]
    assert c["image"] == "registry.example/hello:1"
    assert c["command"] == ["./server", "--fast"]
    assert c["resources"] == {"limits": {"cpu": "1"}}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"PORT": "9000", "K_SERVICE": "hello", "K_CONFIGURATION": "hello", "K_REVISION": "hello-00001",
                   "GREETING": "hi"}  # the contract's PORT wins over the template's
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 9000}
    assert c["readinessProbe"]["periodSeconds"] == 1
    assert spec["template"]["metadata"]["labels"]["ferry.dev/revision"] == "hello-00001"

    svc = fake.get("services", "hello-00001", NS)
    assert svc is not None and svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "ferry"
    assert svc["spec"]["selector"]["ferry.dev/revision"] == "hello-00001"

    # a TCP probe when there is no readiness path
    await b.scale(wl("hello-00002"), 1)
    c2 = deployment(fake, "hello-00002")["spec"]["template"]["spec"]["containers"][0]
    assert c2["readinessProbe"]["tcpSocket"] == {"port": 8080} and "command" not in c2


async def test_scale_goes_through_the_scale_subresource_and_zero_keeps_the_deployment(fake, make_backend):
    b = make_backend()
    await b.scale(wl(), 1)
    mark = len(fake.requests)
    await b.scale(wl(), 3)
    await b.scale(wl(), 0)
    writes = [(r.method, r.path) for r in fake.requests_since(mark)]
    scale_path = f"/apis/apps/v1/namespaces/{NS}/deployments/hello-00001/scale"
    assert writes == [("PATCH", scale_path), ("PATCH", scale_path)]
    assert deployment(fake, "hello-00001")["spec"]["replicas"] == 0
    assert b.counts("hello-00001").total == 0
    await b.scale(wl(), 2)
    assert deployment(fake, "hello-00001")["spec"]["replicas"] == 2
    # a revision started at zero still gets its Deployment (at 0): it records the revision's history
    await b.scale(wl("hello-00009"), 0)
    assert deployment(fake, "hello-00009")["spec"]["replicas"] == 0


async def test_idempotent_scale_makes_no_api_request(fake, make_backend):
    b = make_backend()
    await b.start()
    revisions = [f"svc-{i:05d}" for i in range(20)]
    for i, rev in enumerate(revisions):
        await b.scale(wl(rev), i % 3 + 1)
    await wait_until(lambda: all(b._deployments.get(r) for r in revisions), what="watch saw every deployment")
    mark = len(fake.requests)
    for _ in range(50):
        for i, rev in enumerate(revisions):
            await b.scale(wl(rev), i % 3 + 1)  # 1,000 calls, nothing to change
    assert fake.requests_since(mark) == []
    # a change still goes out, once
    await b.scale(wl(revisions[0]), 5)
    assert len(fake.requests_since(mark)) == 1


async def test_external_scale_is_seen_and_corrected(fake, make_backend):
    b = make_backend()
    await b.start()
    await b.scale(wl(), 2)
    # someone else (kubectl scale) changes replicas: the watch updates the cache, the next scale() corrects it
    dep = deployment(fake, "hello-00001")
    dep2 = {**dep, "spec": {**dep["spec"], "replicas": 7}}
    fake._store("deployments", (NS, "hello-00001"), dep2, "MODIFIED")
    await wait_until(lambda: b.counts("hello-00001").total == 7)
    await b.scale(wl(), 2)
    assert deployment(fake, "hello-00001")["spec"]["replicas"] == 2


# ---- endpoints --------------------------------------------------------------------------------------


async def test_endpoint_slice_transitions_reach_on_endpoints_at_once(fake, make_backend, recorder):
    b = make_backend()
    await b.start()
    await b.scale(wl(), 3)
    rev = "hello-00001"
    labels = {"ferry.dev/revision": rev, "ferry.dev/service": "hello", "app.kubernetes.io/managed-by": "ferry"}
    e1, e2, e3 = Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8080), Endpoint("10.0.0.3", 8080)

    fake.put_slice("hello-00001-a", service=rev, labels=labels,
                   endpoints=[("10.0.0.1", True, False), ("10.0.0.2", False, False)])
    await wait_until(lambda: b.endpoints(rev) == (e1,))
    assert recorder.last(rev) == (e1,)

    fake.put_slice("hello-00001-a", service=rev, labels=labels,
                   endpoints=[("10.0.0.1", True, False), ("10.0.0.2", True, False)])
    await wait_until(lambda: b.endpoints(rev) == (e1, e2))

    # a second slice of the same Service is merged
    fake.put_slice("hello-00001-b", service=rev, labels=labels, endpoints=[("10.0.0.3", True, False)])
    await wait_until(lambda: b.endpoints(rev) == (e1, e2, e3))
    assert b.counts(rev).ready == 3

    # not-ready leaves at once
    fake.put_slice("hello-00001-a", service=rev, labels=labels,
                   endpoints=[("10.0.0.1", False, False), ("10.0.0.2", True, False)])
    await wait_until(lambda: recorder.last(rev) == (e2, e3))
    # terminating leaves at once (even while still "ready", as kubelet reports during shutdown)
    fake.put_slice("hello-00001-a", service=rev, labels=labels,
                   endpoints=[("10.0.0.1", False, False), ("10.0.0.2", True, True)])
    await wait_until(lambda: recorder.last(rev) == (e3,))
    infos = {i.endpoint: i for i in b.instances(rev)}
    assert infos[e2].stopping and not infos[e2].ready and not infos[e1].ready and infos[e3].ready
    fake.delete_slice("hello-00001-b")
    await wait_until(lambda: recorder.last(rev) == ())
    assert b.endpoints(rev) == ()
    # every report was a real change
    changes = [eps for r, eps in recorder.events if r == rev]
    assert all(a != b_ for a, b_ in zip(changes, changes[1:], strict=False))


async def test_watch_410_gone_relists_and_resumes_without_losing_a_change(fake, make_backend, recorder):
    b = make_backend()
    await b.start()
    rev = "hello-00001"
    labels = {"ferry.dev/revision": rev, "app.kubernetes.io/managed-by": "ferry"}
    fake.put_slice("s-a", service=rev, labels=labels, endpoints=[("10.0.0.1", True, False)])
    fake.put_slice("s-b", service=rev, labels=labels, endpoints=[("10.0.0.2", True, False)])
    await wait_until(lambda: len(b.endpoints(rev)) == 2)
    slices = b._reflectors[1]
    lists_before = slices.lists

    # The watch ends with 410 Gone; in the same instant (before ferry can re-list) one slice changes and one
    # goes away. Those events are never streamed on the old watch, and resuming it is impossible: only the
    # re-list can reveal them.
    fake.expire_watches()
    fake.put_slice("s-a", service=rev, labels=labels, endpoints=[("10.0.0.1", True, False), ("10.0.0.9", True, False)])
    fake.delete_slice("s-b")
    await wait_until(lambda: b.endpoints(rev) == (Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.9", 8080)))
    assert slices.lists == lists_before + 1
    assert recorder.last(rev) == (Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.9", 8080))

    # ... and the new watch resumed from the list's resourceVersion: later changes stream in
    list_rv = str(fake.rv)
    await wait_until(lambda: any(r.watch and r.query.get("resourceVersion") == list_rv
                               and "endpointslices" in r.path for r in fake.requests))
    fake.put_slice("s-a", service=rev, labels=labels, endpoints=[("10.0.0.9", True, False)])
    await wait_until(lambda: recorder.last(rev) == (Endpoint("10.0.0.9", 8080),))
    assert slices.lists == lists_before + 1


# ---- conflicts --------------------------------------------------------------------------------------


async def test_409_conflict_on_scale_rereads_and_reapplies(fake, make_backend):
    b = make_backend()
    await b.scale(wl(), 1)
    fake.fail("PATCH", r"/deployments/hello-00001/scale$", 409)
    fake.fail("PUT", r"/deployments/hello-00001/scale$", 409)  # and once more on the re-apply
    mark = len(fake.requests)
    await b.scale(wl(), 4)
    assert deployment(fake, "hello-00001")["spec"]["replicas"] == 4
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake.requests_since(mark)]
    assert calls == [("PATCH", "scale"), ("GET", "scale"), ("PUT", "scale"), ("GET", "scale"), ("PUT", "scale")]
    mark = len(fake.requests)
    await b.scale(wl(), 4)
    assert fake.requests_since(mark) == []


async def test_create_conflict_adopts_our_existing_deployment(fake, make_backend):
    from ferry.backends.kubernetes import deployment_manifest

    fake._store("deployments", (NS, "hello-00001"), deployment_manifest(wl(), owner="ferry", replicas=1), "ADDED")
    fake._store("deployments", (NS, "other"), deployment_manifest(wl("other"), owner="someone-else", replicas=1),
                "ADDED")
    b = make_backend()
    await b.scale(wl(), 3)  # not started: its cache is empty, so it tries to create, gets 409, adopts
    assert deployment(fake, "hello-00001")["spec"]["replicas"] == 3
    with pytest.raises(RuntimeError, match="not owned"):
        await b.scale(wl("other"), 2)
    assert deployment(fake, "other")["spec"]["replicas"] == 1


# ---- outage -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("refuse", [False, True], ids=["503", "connection-refused"])
async def test_api_outage_keeps_last_endpoints_and_recovers(fake, make_backend, recorder, caplog, refuse):
    caplog.set_level(logging.INFO, logger="ferry.backends.kubernetes")
    b = make_backend(api_retry_s=0.5, backoff_max_s=0.2)
    await b.start()
    rev = "hello-00001"
    labels = {"ferry.dev/revision": rev, "app.kubernetes.io/managed-by": "ferry"}
    await b.scale(wl(), 1)
    fake.put_slice("s-a", service=rev, labels=labels, endpoints=[("10.0.0.1", True, False)])
    await wait_until(lambda: b.endpoints(rev) == (Endpoint("10.0.0.1", 8080),))
    n_events = len(recorder.events)

    await fake.outage(refuse=refuse)
    await wait_until(lambda: all(r.failing_since is not None for r in b._reflectors), what="watches notice the outage")
    # a few retries happen; the endpoints stay as they were and nothing is reported
    fails_seen = len(fake.requests)
    await wait_until(lambda: refuse or len(fake.requests) >= fails_seen + 4, what="retries")
    assert b.endpoints(rev) == (Endpoint("10.0.0.1", 8080),)
    assert len(recorder.events) == n_events
    assert b.counts(rev).total == 1
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises once api_retry_s is spent
        await b.scale(wl(), 2)
    # the slice changes while the API is unreachable
    fake.put_slice("s-a", service=rev, labels=labels, endpoints=[("10.0.0.2", True, False)])

    await fake.recover()
    await wait_until(lambda: b.endpoints(rev) == (Endpoint("10.0.0.2", 8080),), timeout=10)
    await wait_until(lambda: all(r.failing_since is None for r in b._reflectors))
    outage_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert sorted(r.watch for r in outage_logs) == ["deployments", "endpointslices"]  # once per watch per outage
    await b.scale(wl(), 2)
    assert deployment(fake, "hello-00001")["spec"]["replicas"] == 2


# ---- stop and garbage collection ----------------------------------------------------------------------


async def test_stop_leaves_endpoints_first_drains_then_deletes(fake, api_client, recorder, make_backend):
    rev = "hello-00001"
    seen_during_drain: list[tuple[Endpoint, bool, tuple[Endpoint, ...] | None]] = []

    async def drain(revision: str, ep: Endpoint) -> None:
        assert revision == rev
        recorder.log.append(("drain", revision, ep))
        seen_during_drain.append((ep, deployment(fake, rev) is not None, recorder.last(rev)))

    b = make_backend(drain=drain)
    await b.start()
    await b.scale(wl(timeout_s=5), 2)
    labels = {"ferry.dev/revision": rev, "app.kubernetes.io/managed-by": "ferry"}
    fake.put_slice("s-a", service=rev, labels=labels, endpoints=[("10.0.0.1", True, False), ("10.0.0.2", True, False)])
    await wait_until(lambda: len(b.endpoints(rev)) == 2)
    mark = len(fake.requests)

    await b.stop(rev)
    assert b.endpoints(rev) == ()
    log_after = recorder.log[-3:]
    assert log_after[0] == ("endpoints", rev, ())
    assert {entry[2] for entry in log_after[1:]} == {Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8080)}
    # each drain ran while the Deployment still existed and after EDS was told
    assert all(exists and last == () for _, exists, last in seen_during_drain) and len(seen_during_drain) == 2
    calls = [(r.method, r.path.split("/")[-2] + "/" + r.path.split("/")[-1]) for r in fake.requests_since(mark)]
    assert calls == [("PATCH", "hello-00001/scale"), ("DELETE", "deployments/hello-00001"),
                     ("DELETE", "services/hello-00001")]
    assert deployment(fake, rev) is None and fake.get("services", rev, NS) is None
    # the slice lingering (Kubernetes deletes it a bit later) does not bring endpoints back
    fake.put_slice("s-a", service=rev, labels=labels, endpoints=[("10.0.0.1", True, False)])
    fake.delete_slice("s-a")
    await wait_until(lambda: "s-a" not in b._slices)
    assert b.endpoints(rev) == ()
    assert b.counts(rev).total == 0


async def test_collect_garbage_deletes_only_what_this_owner_created(fake, make_backend):
    from ferry.backends.kubernetes import deployment_manifest, service_manifest

    b = make_backend()
    await b.scale(wl("keep-00001"), 1)
    await b.scale(wl("gone-00001"), 1)
    fake._store("deployments", (NS, "theirs"), deployment_manifest(wl("theirs"), owner="other-ferry", replicas=1),
                "ADDED")
    fake._store("services", (NS, "theirs"), service_manifest(wl("theirs"), owner="other-ferry"), "ADDED")
    unmanaged = deployment_manifest(wl("plain"), owner="ferry", replicas=1)
    del unmanaged["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    fake._store("deployments", (NS, "plain"), unmanaged, "ADDED")

    deleted = await b.collect_garbage({"keep-00001"})
    assert sorted(deleted) == ["deployment/gone-00001", "service/gone-00001"]
    assert sorted(n for _, n in fake.objects["deployments"]) == ["keep-00001", "plain", "theirs"]
    assert sorted(n for _, n in fake.objects["services"]) == ["keep-00001", "theirs"]


async def test_aclose_joins_watch_threads_even_mid_backoff(fake, make_backend):
    b = make_backend()
    await b.start()
    await fake.outage()
    await wait_until(lambda: all(r.failing_since is not None for r in b._reflectors))
    await asyncio.wait_for(b.aclose(), 5)
    assert not [t for t in threading.enumerate() if t.name.startswith("ferry-kube-")]
    with pytest.raises(RuntimeError):
        await b.scale(wl(), 1)





async def test_stop_with_retain_keeps_the_deployment_at_zero_for_a_quick_way_back(fake, make_backend, recorder):
    b = make_backend(retain=True)
    await b.start()
    await b.scale(wl(), 2)
    await b.stop("hello-00001")
    assert deployment(fake, "hello-00001")["spec"]["replicas"] == 0
    assert not [r for r in fake.requests if r.method == "DELETE"]
    mark = len(fake.requests)
    await b.scale(wl(), 1)  # back into the traffic: one scale call, nothing created
    assert [(r.method, r.path.rsplit("/", 2)[-2]) for r in fake.requests_since(mark)] == [("PATCH", "hello-00001")]
    assert await b.collect_garbage(keep=set()) == ["deployment/hello-00001", "service/hello-00001"]
