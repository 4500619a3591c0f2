"""Revision history on the revisions' Deployments: what is written, what is read back, and a fresh replica
(empty SQLite) continuing the history through the real client and the fake Kubernetes API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry.backends.kubernetes import KubeWorkload, history
from ferry.routing import RevisionStore, RoutesFile, ServiceSpec, Template
from ferry.routing.revisions import Revision, template_digest

from .helpers import wait_until
from .kube_fixtures import deployment

V1 = Template(image="registry.example/hello:1")
V2 = Template(image="registry.example/hello:2")


def routes(template: Template) -> RoutesFile:
    return RoutesFile(services={"hello": ServiceSpec(template=template)})


def apply(store: RevisionStore, template: Template) -> Revision:
    plan = store.plan(routes(template))
    store.commit(plan)
    return plan.current["hello"]


def deployment_of(revision: Revision, **notes: str) -> dict:
    return {"metadata": {"name": revision.name, "labels": {"ferry.dev/service": revision.service,
                                                           "ferry.dev/revision": revision.name},
                         "annotations": {**history.creation_annotations(revision), **notes}}}


def read(deployments: list[dict]) -> history.History:
    return history.read_history(deployments, service_label="ferry.dev/service", revision_label="ferry.dev/revision")


@pytest.fixture
def store(tmp_path: Path):
    with RevisionStore(tmp_path / "a.db") as s:
        yield s


@pytest.fixture
def fresh(tmp_path: Path):
    with RevisionStore(tmp_path / "b.db") as s:
        yield s


def kw(revision: Revision) -> KubeWorkload:
    return KubeWorkload(service="hello", revision=revision.name, image=revision.template.image)


# ---- pure: what the annotations say ----------------------------------------------------------------------


def test_every_fact_round_trips_and_the_newest_write_of_each_wins(store):
    r1, r2 = apply(store, V1), apply(store, V2)
    said = read([
        deployment_of(r1, **{history.LATEST_READY_AT: "10.0",
                             history.TRAFFIC: json.dumps({"splits": [[r1.name, 100]], "at": 5.0})}),
        deployment_of(r2, **{history.LATEST_READY_AT: "20.0",
                             history.RESULT: json.dumps({"result": "rolled-back", "reason": "5xx", "at": 21.0}),
                             history.ROLLOUT: json.dumps({"state": '{"candidate": "x"}', "at": 21.0}),
                             history.TRAFFIC: json.dumps({"splits": None, "at": 6.0})}),
    ])
    assert [(r.name, r.generation, r.digest, r.template) for r in said.revisions] == [
        (r1.name, 1, template_digest(V1), V1), (r2.name, 2, template_digest(V2), V2)]
    assert said.latest_ready == {"hello": r2.name}
    assert said.results == {r2.name: ("rolled-back", "5xx", 21.0)}
    assert said.rollouts == {"hello": ('{"candidate": "x"}', 21.0)}
    assert said.traffic == {"hello": (None, 6.0)}  # the reset came after the override


def test_deployments_without_history_or_with_unreadable_history_are_skipped(store, caplog):
    r1 = apply(store, V1)
    broken = deployment_of(r1)
    broken["metadata"]["annotations"][history.TEMPLATE] = "{not json"
    older_ferry = {"metadata": {"name": "x-00001", "labels": {"ferry.dev/service": "x"}, "annotations": {}}}
    assert read([broken, older_ferry]).revisions == []
    assert "unreadable revision history" in caplog.text


# ---- the store imports it ----------------------------------------------------------------------------


def test_a_fresh_store_continues_the_history(store, fresh):
    r1, r2 = apply(store, V1), apply(store, V2)
    said = read([deployment_of(r1, **{history.LATEST_READY_AT: "1.0"}), deployment_of(r2)])
    assert fresh.import_history(said) == 2
    assert fresh.import_history(said) == 0  # idempotent
    assert fresh.latest_ready("hello") == r1.name
    assert apply(fresh, V2).name == r2.name  # the current template is the revision it already was
    assert apply(fresh, V1).generation == 3  # going back is a new revision, numbered after the shared ones


def test_a_diverged_store_keeps_its_own_revision_and_says_so(store, fresh, caplog):
    r1 = apply(store, V1)
    apply(fresh, V2)  # hello-00001 here is another template
    assert fresh.import_history(read([deployment_of(r1)])) == 0
    assert fresh.get(r1.name).template == V2
    assert "revision history differs" in caplog.text


def test_store_writes_reach_the_observer(store):
    seen = []

    class Observer:
        def __getattr__(self, name):
            return lambda *args: seen.append((name, args[:-1]))

    r1 = apply(store, V1)
    store.observer = Observer()
    store.set_latest_ready("hello", r1.name)
    store.set_result(r1.name, "promoted", None)
    store.clear_result(r1.name)
    store.save_rollout("hello", "{}")
    store.set_traffic_override("hello", [(r1.name, 100)])
    assert [name for name, _ in seen] == [
        "latest_ready_set", "result_set", "result_set", "rollout_saved", "traffic_set"]
    assert seen[2] == ("result_set", (r1.name, None, None))


# ---- through the Kubernetes API --------------------------------------------------------------------


async def test_the_leader_records_and_a_fresh_replica_reads_it_back(fake, make_backend, store, fresh):
    leader = make_backend()
    assert await leader.recover(store) == 0
    r1, r2 = apply(store, V1), apply(store, V2)
    await leader.scale(kw(r1), 1)
    await leader.scale(kw(r2), 0)  # created even at zero: it records the revision
    notes = deployment(fake, r2.name)["metadata"]["annotations"]
    assert notes[history.GENERATION] == "2" and notes[history.DIGEST] == r2.digest
    assert Template.model_validate_json(notes[history.TEMPLATE]) == V2

    store.set_latest_ready("hello", r1.name)
    store.set_result(r2.name, "rolled-back", "error rate 12% > 1%")
    store.save_rollout("hello", json.dumps({"candidate": r2.name, "phase": "rolled-back"}))
    store.set_traffic_override("hello", [(r1.name, 100)])
    await wait_until(lambda: history.TRAFFIC in deployment(fake, r2.name)["metadata"]["annotations"],
                   what="the last fact recorded")

    follower = make_backend()
    assert await follower.recover(fresh) == 2
    assert [r.name for r in fresh.revisions("hello")] == [r1.name, r2.name]
    assert fresh.latest_ready("hello") == r1.name
    assert fresh.results("hello")[r2.name][:2] == ("rolled-back", "error rate 12% > 1%")
    assert json.loads(fresh.rollout("hello"))["candidate"] == r2.name
    assert fresh.traffic_override("hello") == [(r1.name, 100)]
    assert follower.replicas(r1.name) == 1 and follower.replicas(r2.name) == 0 and follower.replicas("x") is None


async def test_history_written_during_an_outage_lands_after_it(fake, make_backend, store):
    backend = make_backend(backoff_max_s=0.2, api_retry_s=0.5)
    await backend.recover(store)
    r1 = apply(store, V1)
    await backend.scale(kw(r1), 1)
    await fake.outage()
    mark = len(fake.requests)
    store.set_latest_ready("hello", r1.name)
    await wait_until(lambda: len([r for r in fake.requests_since(mark) if r.method == "PATCH"]) >= 2,
                   what="the write tried and retried during the outage")
    assert history.LATEST_READY_AT not in deployment(fake, r1.name)["metadata"]["annotations"]
    await fake.recover()
    await wait_until(lambda: history.LATEST_READY_AT in deployment(fake, r1.name)["metadata"]["annotations"],
                   timeout=10, what="the fact recorded once the API is back")


async def test_a_deployment_of_the_same_name_with_another_template_is_not_adopted(fake, make_backend, store, fresh):
    first = make_backend()
    await first.recover(store)
    r1 = apply(store, V1)
    await first.scale(kw(r1), 1)
    # A replica whose history diverged (it could not read the shared one) names another template hello-00001.
    diverged = make_backend()
    diverged._store = fresh  # noqa: SLF001 - skip recover: the divergence is what is under test
    other = apply(fresh, V2)
    assert other.name == r1.name
    with pytest.raises(RuntimeError, match="exists with a different template"):
        await diverged.scale(kw(other), 1)
    assert deployment(fake, r1.name)["spec"]["template"]["spec"]["containers"][0]["image"] == V1.image
