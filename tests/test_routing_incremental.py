"""A one-service edit re-validates and re-plans one service: the rest keep their objects and revisions."""

from __future__ import annotations

from pathlib import Path

import pytest

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


    from ferry.routing.errors import ConfigError

    path = tmp_path / "routes.yaml"
    first = load_routes(path, "services:\n  a:\n    hosts: [x.example.com]\n    template: {command: [app]}\n")
    text = first.text + "  b:\n    hosts: [x.example.com]\n    template: {command: [app]}\n"
    with pytest.raises(ConfigError) as caught:
        load_routes(path, text, previous=first)
    assert "x.example.com" in str(caught.value) and "services.b.hosts" in str(caught.value)


def test_a_host_moves_between_services_across_incremental_edits(tmp_path: Path) -> None:
    """Each service's host claims are kept between loads: a host given up by one edit is free in the next, and
    one still held is refused, whichever services changed."""
    from ferry.routing.errors import ConfigError

    path = tmp_path / "routes.yaml"

    def text(a: str, b: str, c: str = "") -> str:
        services = [("a", a), ("b", b)] + ([("c", c)] if c else [])
        return "services:\n" + "".join(f"  {n}:\n    hosts: [{h}]\n    template: {{command: [app]}}\n"
                                        for n, h in services)

    first = load_routes(path, text("x.example.com", "y.example.com"))
    moved = load_routes(path, text("z.example.com", "x.example.com"), previous=first)
    assert moved.spec.services["b"].hosts == ("x.example.com",)
    with pytest.raises(ConfigError) as caught:
        load_routes(path, text("z.example.com", "x.example.com", "x.example.com"), previous=moved)
    assert "host x.example.com is claimed by both service b (in its hosts)" in str(caught.value)
    again = load_routes(path, text("z.example.com", "x.example.com", "w.example.com"), previous=moved)
    assert again.spec.services["a"] is moved.spec.services["a"]


RICH = """\
# a file with the shapes people write
gateway:
  listen: 127.0.0.1:8080
  domain: localhost
services:
  # the main one
  web:
    hosts:
      - web.example.com
    template:
      command: [python3, app.py]
      env:
        MESSAGE: |
          multi-line
            block scalar
        OTHER: "quoted: with colon"
      readiness: {path: /healthz}
    traffic: [{latestRevision: true, percent: 100,
               tag: current}]

  api:
    template:
      endpoints:
      - 127.0.0.1:9001
      - 127.0.0.1:9002
      timeout: 30s
  # a trailing comment
"""


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace("block scalar", "block scalar, edited"),
        lambda t: t.replace("timeout: 30s", "timeout: 45s"),
        lambda t: t.replace("  api:\n", "  api2:\n"),
        lambda t: t + "  extra:\n    template: {command: [app]}\n",
        lambda t: t.replace("  # the main one\n", "  # the main one, reworded\n"),
        lambda t: t.replace("  api:\n    template:\n      endpoints:\n      - 127.0.0.1:9001\n      - 127.0.0.1:9002\n      timeout: 30s\n", ""),
        lambda t: t.replace("domain: localhost", "domain: example.org"),
        lambda t: t.replace("  api:\n", "  api: &shared\n"),  # an anchor: the full parse handles it
    ],
    ids=["block-scalar", "value", "rename", "add", "comment", "remove", "gateway", "anchor"],
)
def test_the_block_fast_path_equals_a_full_parse(tmp_path: Path, edit) -> None:
    path = tmp_path / "routes.yaml"
    first = load_routes(path, RICH)
    assert first.blocks is not None and len(first.blocks.blocks) == 2
    text = edit(RICH)
    incremental = load_routes(path, text, previous=first)
    full = load_routes(path, text)
    assert incremental.spec == full.spec
    assert list(incremental.spec.services) == list(full.spec.services)
    assert incremental.raw_services == full.raw_services  # (empty when blocks are kept: they find what changed)
    assert (incremental.blocks is None) == bool(incremental.raw_services)


def test_a_duplicate_name_across_blocks_is_reported_with_its_line(tmp_path: Path) -> None:
    from ferry.routing.errors import ConfigError

    path = tmp_path / "routes.yaml"
    first = load_routes(path, RICH)
    text = RICH.replace("  api:\n", "  web:\n")
    with pytest.raises(ConfigError) as caught:
        load_routes(path, text, previous=first)
    assert any("web" in p.message and p.line for p in caught.value.problems), caught.value


def test_a_one_service_edit_parses_only_that_service(tmp_path: Path, monkeypatch) -> None:
    from ferry.routing import yamlsource

    path = tmp_path / "routes.yaml"
    first = load_routes(path, RICH)
    parsed: list[str] = []
    real_parse = yamlsource.parse
    monkeypatch.setattr(yamlsource, "parse", lambda text: parsed.append(text) or real_parse(text))
    second = load_routes(path, RICH.replace("timeout: 30s", "timeout: 45s"), previous=first)
    assert parsed == ["services:\n  api:\n    template:\n      endpoints:\n      - 127.0.0.1:9001\n"
                      "      - 127.0.0.1:9002\n      timeout: 45s\n  # a trailing comment\n"]
    assert second.spec.services["web"] is first.spec.services["web"]
    assert second.spec.services["api"].template.timeout == 45.0


def test_a_large_file_is_parsed_a_chunk_of_services_at_a_time(tmp_path: Path, monkeypatch) -> None:
    """A whole file's YAML node tree was ferry's memory peak (~80 MiB at 10,000 services): services are parsed
    in chunks, at start and on edits, to the same data as one parse of the whole file."""
    from ferry.routing import loader, yamlsource
    from ferry.routing.schema import RoutesFile

    monkeypatch.setattr(loader, "_BLOCKS_PER_PARSE", 2)
    parsed: list[str] = []
    real_parse = yamlsource.parse
    monkeypatch.setattr(yamlsource, "parse", lambda text: parsed.append(text) or real_parse(text))
    path = tmp_path / "routes.yaml"
    text = "gateway: {domain: example.org}\n" + routes({f"s{i}": f"m{i}" for i in range(5)}).replace(
        "  s2:\n", "  # a comment between services\n  s2:\n")
    first = load_routes(path, text)
    whole, _ = real_parse(text)
    assert first.spec == RoutesFile.model_validate(whole)
    assert list(first.spec.services) == [f"s{i}" for i in range(5)]
    assert first.spec.gateway.domain == "example.org"
    chunks = [t for t in parsed if t.startswith("services:\n  ")]
    assert [t.count("template:") for t in chunks] == [2, 2, 1]

    parsed.clear()
    edited = text.replace("m0", "changed").replace("m1", "changed").replace("m4", "changed")
    second = load_routes(path, edited, previous=first)
    assert [t.count("template:") for t in parsed] == [2, 1]
    assert second.spec.services["s2"] is first.spec.services["s2"]
    assert second.spec.services["s4"].template.env == {"MESSAGE": "changed"}


def test_a_duplicate_name_in_another_chunk_is_reported_with_its_line(tmp_path: Path, monkeypatch) -> None:
    from ferry.routing import loader
    from ferry.routing.errors import ConfigError

    monkeypatch.setattr(loader, "_BLOCKS_PER_PARSE", 2)
    text = routes({"a": "1", "b": "2", "c": "3"}) + "  a:\n    template: {command: [other]}\n"
    with pytest.raises(ConfigError) as caught:
        load_routes(tmp_path / "routes.yaml", text)
    assert any("duplicate key 'a'" in p.message and p.line == 8 for p in caught.value.problems), caught.value


def test_a_gateway_edit_keeps_the_objects_of_unchanged_services(tmp_path: Path) -> None:
    """The full path (the part outside `services:` changed) still finds unchanged services by their text, though
    their parsed data is not kept."""
    path = tmp_path / "routes.yaml"
    first = load_routes(path, RICH)
    assert first.raw_services == {}  # the blocks say what changed
    second = load_routes(path, RICH.replace("domain: localhost", "domain: example.org"),
                         previous=first)
    assert second.spec.gateway.domain == "example.org"
    assert second.spec.services["web"] is first.spec.services["web"]
    third = load_routes(path, second.text.replace("timeout: 30s", "timeout: 45s").replace("example.org", "x.org"),
                        previous=second)
    assert third.spec.services["web"] is first.spec.services["web"]
    assert third.spec.services["api"] is not second.spec.services["api"]
    assert third.spec.services["api"].template.timeout == 45.0
