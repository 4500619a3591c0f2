"""10,000 services load and validate correctly (timing is reported by the author, not asserted here)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ferry.routing import ConfigError, HostPort, RevisionStore, load_routes, validate

N = 10_000


def many_services(n: int) -> str:
    head = "gateway:\n  listen: 127.0.0.1:8080\n  domain: example.test\nservices:\n"
    return head + "".join(
        f"""\
  svc-{i:05d}:
    template:
      endpoints:
        - 127.0.0.1:{9000 + i % 1000}
      concurrency: 10
      timeout: 30s
    traffic:
      - latestRevision: true
        percent: 100
"""
        for i in range(n)
    )


def test_ten_thousand_services_load_and_plan(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(many_services(N))
    start = time.perf_counter()
    loaded = load_routes(path)
    print(f"\nload_routes: {N} services in {time.perf_counter() - start:.3f}s")
    services = loaded.spec.services
    assert len(services) == N
    last = services[f"svc-{N - 1:05d}"]
    assert last.template.endpoints == (HostPort("127.0.0.1", 9000 + (N - 1) % 1000),)
    assert last.template.timeout == 30.0 and last.traffic is not None and last.traffic[0].percent == 100
    with RevisionStore(tmp_path / "state.db") as store:
        plan = validate(loaded, store)
        store.commit(plan)
        assert len(plan.new) == N
        assert validate(loaded, store).new == ()


def test_one_bad_service_among_ten_thousand_is_found_with_its_line(tmp_path: Path) -> None:
    text = many_services(N).replace(
        "svc-07777:\n    template:\n      endpoints:\n        - 127.0.0.1:9777",
        "svc-07777:\n    template:\n      endpoints:\n        - 127.0.0.1:0",
    )
    with pytest.raises(ConfigError) as info:
        load_routes(tmp_path / "routes.yaml", text=text)
    (problem,) = info.value.problems
    assert problem.path == "services.svc-07777.template.endpoints[0]"
    assert problem.line == 4 + 7777 * 9 + 4
