"""A one-service edit re-validates and re-plans one service: the rest keep their objects and revisions."""

from __future__ import annotations

from pathlib import Path

from ferry.routing.loader import load_routes, validate
from ferry.routing.revisions import RevisionStore


def routes(services: dict[str, str]) -> str:
    lines = ["services:"]
    for name, message in services.items():
        lines += [f"  {name}:", f"    template: {{command: [app], env: {{MESSAGE: {message}}}}}"]
    return "\n".join(lines) + "\n"


def test_unchanged_services_keep_their_objects_and_revisions(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    store = RevisionStore(tmp_path / "state.db")
    first = load_routes(path, routes({"a": "one", "b": "one", "c": "one"}))
    plan = validate(first, store)
    store.commit(plan)

    second = load_routes(path, routes({"a": "one", "b": "two", "c": "one"}), previous=first)
    assert second.spec.services["a"] is first.spec.services["a"]
    assert second.spec.services["c"] is first.spec.services["c"]
    assert second.spec.services["b"] is not first.spec.services["b"]
    assert second.spec.services["b"].template.env == {"MESSAGE": "two"}

    store.close()  # unchanged services must not even need the store: a closed one proves it
    reopened = RevisionStore(tmp_path / "state.db")
    next_plan = validate(second, reopened, (first, plan))
    assert next_plan.current["a"] is plan.current["a"] and next_plan.current["c"] is plan.current["c"]
    assert [r.name for r in next_plan.new] == ["b-00002"]
    reopened.close()


def test_identical_text_returns_the_previous_load(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    first = load_routes(path, routes({"a": "one"}))
    assert load_routes(path, routes({"a": "one"}), previous=first) is first


def test_errors_are_as_precise_on_the_incremental_path(tmp_path: Path) -> None:
    import pytest

    from ferry.routing.errors import ConfigError

    path = tmp_path / "routes.yaml"
    first = load_routes(path, routes({"a": "one", "b": "one"}))
    text = routes({"a": "one", "b": "one"}).replace("    template: {command: [app], env: {MESSAGE: one}}\n", "    template: {command: [], env: {MESSAGE: one}}\n", 1)
    with pytest.raises(ConfigError) as caught:
        load_routes(path, text, previous=first)
    (problem,) = caught.value.problems
    assert problem.path == "services.a.template.command" and problem.line == 3
    assert problem.path in str(caught.value)


def test_a_new_service_that_claims_a_kept_services_host_is_refused(tmp_path: Path) -> None:
    import pytest

    from ferry.routing.errors import ConfigError

    path = tmp_path / "routes.yaml"
    first = load_routes(path, "services:\n  a:\n    hosts: [x.example.com]\n    template: {command: [app]}\n")
    text = first.text + "  b:\n    hosts: [x.example.com]\n    template: {command: [app]}\n"
    with pytest.raises(ConfigError) as caught:
        load_routes(path, text, previous=first)
    assert "x.example.com" in str(caught.value) and "services.b.hosts" in str(caught.value)
