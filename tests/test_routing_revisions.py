"""RevisionStore: naming, immutability, history across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.routing import (
    ConfigError,
    RevisionStore,
    RoutesFile,
    ServiceSpec,
    Template,
    TrafficTarget,
)
from ferry.routing.revisions import default_store_path, template_digest


def routes(**templates: Template) -> RoutesFile:
    return RoutesFile(services={name: ServiceSpec(template=t) for name, t in templates.items()})


def apply(store: RevisionStore, spec: RoutesFile) -> dict[str, str]:
    """What `ferry apply` does with the store: plan, commit, and the current revision per service."""
    plan = store.plan(spec)
    store.commit(plan)
    return {service: revision.name for service, revision in plan.current.items()}


V1 = Template(command=["app", "--v1"])
V2 = Template(command=["app", "--v2"])


@pytest.fixture
def store(tmp_path: Path):
    with RevisionStore(tmp_path / ".ferry" / "state.db") as s:
        yield s


def test_first_template_is_generation_one(store: RevisionStore) -> None:
    plan = store.plan(routes(hello=V1, world=V2))
    assert [r.name for r in plan.new] == ["hello-00001", "world-00001"]
    assert plan.current["hello"].generation == 1 and plan.current["hello"].template == V1
    assert store.revisions("hello") == []  # plan() reads only
    store.commit(plan)
    assert [r.name for r in store.revisions("hello")] == ["hello-00001"]
    assert store.get("hello-00001").template == V1  # type: ignore[union-attr]


def test_identical_template_creates_nothing(store: RevisionStore) -> None:
    apply(store, routes(hello=V1))
    same = Template(command=("app", "--v1"), timeout="300s", concurrency=0)  # defaults spelled out
    plan = store.plan(routes(hello=same))
    assert plan.new == () and plan.current["hello"].name == "hello-00001"


def test_changed_template_gets_the_next_generation_and_going_back_is_new_too(store: RevisionStore) -> None:
    assert apply(store, routes(hello=V1)) == {"hello": "hello-00001"}
    assert apply(store, routes(hello=V2)) == {"hello": "hello-00002"}
    assert apply(store, routes(hello=V1)) == {"hello": "hello-00003"}  # like Knative: a new revision
    assert [(r.generation, r.template) for r in store.revisions("hello")] == [(1, V1), (2, V2), (3, V1)]
    assert store.latest_created("hello").name == "hello-00003"  # type: ignore[union-attr]


def test_template_name_is_used_and_counts_a_generation(store: RevisionStore) -> None:
    apply(store, routes(hello=V1))
    named = V2.model_copy(update={"name": "hello-v2"})
    assert apply(store, routes(hello=named)) == {"hello": "hello-v2"}
    assert store.get("hello-v2").generation == 2  # type: ignore[union-attr]
    assert apply(store, routes(hello=named)) == {"hello": "hello-v2"}  # re-apply: nothing new
    assert apply(store, routes(hello=V1)) == {"hello": "hello-00003"}
    assert apply(store, routes(hello=named)) == {"hello": "hello-v2"}  # naming an old revision goes back to it


def test_generated_names_skip_numbers_taken_by_hand(store: RevisionStore) -> None:
    apply(store, routes(hello=V1.model_copy(update={"name": "hello-00002"})))  # generation 1, named like 2
    assert apply(store, routes(hello=V2)) == {"hello": "hello-00003"}
    assert [r.generation for r in store.revisions("hello")] == [1, 3]


def test_byo_name_with_a_different_template_is_refused(store: RevisionStore) -> None:
    apply(store, routes(hello=V1.model_copy(update={"name": "hello-v1"})))
    with pytest.raises(ConfigError) as info:
        store.plan(routes(hello=V2.model_copy(update={"name": "hello-v1"})))
    (problem,) = info.value.problems
    assert problem.path == "services.hello.template.name"
    assert "revision hello-v1 already exists with a different template; revisions are immutable" in problem.message


def test_byo_name_of_another_service_is_refused(store: RevisionStore) -> None:
    apply(store, routes(**{"a-b": V1}))  # a-b-00001, a valid name for service "a" too: it starts with "a-"
    with pytest.raises(ConfigError) as info:
        store.plan(routes(a=V2.model_copy(update={"name": "a-b-00001"})))
    assert "already belongs to service a-b" in info.value.problems[0].message


def test_restart_keeps_history_generations_and_latest_ready(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with RevisionStore(path) as store:
        apply(store, routes(hello=V1))
        apply(store, routes(hello=V2))
        store.set_latest_ready("hello", "hello-00002")
    with RevisionStore(path) as store:
        assert [r.name for r in store.revisions("hello")] == ["hello-00001", "hello-00002"]
        assert store.latest_ready("hello") == "hello-00002"
        assert store.plan(routes(hello=V2)).new == ()
        assert apply(store, routes(hello=Template(command=["app", "--v3"]))) == {"hello": "hello-00003"}


def test_removed_and_re_added_service_never_reuses_a_generation(store: RevisionStore) -> None:
    apply(store, routes(hello=V1))
    apply(store, routes())
    assert apply(store, routes(hello=V2)) == {"hello": "hello-00002"}


def test_latest_ready_must_name_a_revision_of_the_service(store: RevisionStore) -> None:
    apply(store, routes(hello=V1, world=V1))
    assert store.latest_ready("hello") is None
    with pytest.raises(ValueError):
        store.set_latest_ready("hello", "world-00001")
    store.set_latest_ready("hello", "hello-00001")
    assert store.latest_ready("hello") == "hello-00001"


def test_commit_is_all_or_nothing(store: RevisionStore) -> None:
    plan = store.plan(routes(hello=V1, world=V1))
    store.commit(store.plan(routes(world=V1)))  # someone else committed world-00001 meanwhile
    with pytest.raises(RuntimeError, match="plan again"):
        store.commit(plan)
    assert store.revisions("hello") == []


def test_check_references(store: RevisionStore) -> None:
    apply(store, routes(hello=V1))
    spec = RoutesFile(
        services={
            "hello": ServiceSpec(
                template=V2,
                traffic=(
                    TrafficTarget(revision="hello-00001", percent=50),
                    TrafficTarget(revision="hello-00002", percent=40),  # created by this very plan
                    TrafficTarget(revision="hello-00009", percent=10),
                ),
            )
        }
    )
    plan = store.plan(spec)
    (problem,) = store.check_references(spec, plan)
    assert problem.path == "services.hello.traffic[2].revision"
    assert problem.message == (
        "revision hello-00009 does not exist for service hello; known revisions: hello-00001, hello-00002: "
        "name one of them or use latestRevision: true"
    )


def test_digest_ignores_env_order_and_spelled_out_defaults() -> None:
    a = Template(command=["a"], env={"X": "1", "Y": "2"})
    b = Template(command=["a"], env={"Y": "2", "X": "1"}, timeout="5m", scale={"metric": "concurrency"})
    assert template_digest(a) == template_digest(b)
    assert template_digest(a) != template_digest(a.model_copy(update={"concurrency": 1}))


def test_default_store_path_is_beside_the_routes_file(tmp_path: Path) -> None:
    assert default_store_path(tmp_path / "routes.yaml") == tmp_path / ".ferry" / "state.db"
