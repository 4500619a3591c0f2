"""Valid routes files: what they parse to, the defaults, durations and the host helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ferry.routing import (
    Gateway,
    HostPort,
    LoadedRoutes,
    Readiness,
    RoutesFile,
    Scale,
    ServiceSpec,
    Template,
    TrafficTarget,
    load_routes,
    service_hosts,
    tag_host,
)
from ferry.routing.durations import parse_duration

EXAMPLE = """\
gateway:
  listen: 127.0.0.1:8080
  domain: localhost
services:
  hello:
    hosts: [hello.example.com]
    template:
      name: hello-v2
      command: [python, app.py]
      env: {MESSAGE: hello}
      readiness: {path: /healthz}
      concurrency: 0
      timeout: 300s
      scale: {min: 0, max: 10, initial: 1, target: 100, metric: concurrency}
    traffic:
      - revision: hello-00001
        percent: 90
      - latestRevision: true
        percent: 10
        tag: canary
  static:
    template:
      endpoints: [127.0.0.1:9001, "[::1]:9002"]
"""


def test_the_contract_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(EXAMPLE)
    loaded = load_routes(path)
    assert loaded == LoadedRoutes(path, tmp_path, loaded.spec)
    assert loaded.path.is_absolute() and loaded.base_dir == tmp_path
    spec = loaded.spec
    assert spec.gateway == Gateway(listen=HostPort("127.0.0.1", 8080), domain="localhost")
    hello = spec.services["hello"]
    assert hello == ServiceSpec(
        hosts=("hello.example.com",),
        template=Template(
            name="hello-v2",
            command=("python", "app.py"),
            env={"MESSAGE": "hello"},
            readiness=Readiness(path="/healthz"),
            concurrency=0,
            timeout=300.0,
            scale=Scale(min=0, max=10, initial=1, target=100, metric="concurrency"),
        ),
        traffic=(
            TrafficTarget(revision="hello-00001", percent=90),
            TrafficTarget(latestRevision=True, percent=10, tag="canary"),
        ),
    )
    assert spec.services["static"].template.endpoints == (HostPort("127.0.0.1", 9001), HostPort("::1", 9002))
    assert list(spec.services) == ["hello", "static"]  # file order


def test_text_is_validated_instead_of_the_file(tmp_path: Path) -> None:
    loaded = load_routes(tmp_path / "absent.yaml", text=EXAMPLE)
    assert loaded.path == tmp_path / "absent.yaml" and "hello" in loaded.spec.services


def test_unchanged_content_returns_the_previous_load(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(EXAMPLE)
    first = load_routes(path)
    assert load_routes(path, previous=first) is first
    changed = load_routes(path, text=EXAMPLE.replace("300s", "30s"), previous=first)
    assert changed is not first and changed.spec.services["hello"].template.timeout == 30.0


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_routes("routes.yaml", text="")
    assert loaded.path == tmp_path / "routes.yaml" and loaded.base_dir == tmp_path


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "services:\n", "gateway:\nservices: {}\n"])
def test_empty_files_mean_no_services_and_default_gateway(tmp_path: Path, text: str) -> None:
    spec = load_routes(tmp_path / "r.yaml", text=text).spec
    assert spec == RoutesFile()
    assert spec.gateway.listen == HostPort("127.0.0.1", 8080) and spec.gateway.domain == "localhost"


def test_template_defaults(tmp_path: Path) -> None:
    spec = load_routes(tmp_path / "r.yaml", text="services:\n  hello:\n    template: {command: [app]}\n").spec
    hello = spec.services["hello"]
    assert hello.hosts == () and hello.traffic is None
    t = hello.template
    assert (t.name, t.env, t.readiness, t.concurrency, t.timeout) == (None, {}, None, 0, 300.0)
    assert t.scale == Scale(min=0, max=0, initial=1, target=100.0, metric="concurrency")


def test_scale_target_default_follows_the_metric() -> None:
    assert Scale().target == 100.0
    assert Scale(metric="rps").target == 200.0
    assert Scale(metric="rps", target=50).target == 50.0


def test_percent_defaults_to_zero_for_tag_only_targets(tmp_path: Path) -> None:
    text = """\
services:
  hello:
    template: {command: [app]}
    traffic:
      - {latestRevision: true, percent: 100}
      - {revision: hello-00001, tag: old}
"""
    traffic = load_routes(tmp_path / "r.yaml", text=text).spec.services["hello"].traffic
    assert traffic is not None and traffic[1] == TrafficTarget(revision="hello-00001", percent=0, tag="old")


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    text = """\
services:
  hello:
    template: &base
      command: [app]
      timeout: 10s
  world:
    template:
      <<: *base
      timeout: 20s
"""
    services = load_routes(tmp_path / "r.yaml", text=text).spec.services
    assert services["hello"].template.timeout == 10.0
    assert services["world"].template == Template(command=("app",), timeout=20.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300s", 300.0),
        ("1.5s", 1.5),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        (".5s", 0.5),
        (45, 45.0),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert Template(command=("a",), timeout=text).timeout == seconds


def test_models_are_frozen_hashable_and_compare_by_value() -> None:
    a = Template(command=["app"], env={"A": "1", "B": "2"})
    b = Template(command=("app",), env={"B": "2", "A": "1"})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != Template(command=("app",), env={"A": "1"})
    with pytest.raises(ValidationError, match="frozen"):
        a.concurrency = 3  # type: ignore[misc]
    spec = RoutesFile(services={"hello": ServiceSpec(template=a)})
    assert hash(spec) == hash(RoutesFile(services={"hello": ServiceSpec(template=b)}))


def test_host_port_round_trips_through_str() -> None:
    assert str(HostPort("127.0.0.1", 8080)) == "127.0.0.1:8080"
    assert str(HostPort("::1", 80)) == "[::1]:80"
    assert HostPort.parse("[::1]:80") == HostPort("::1", 80)
    assert HostPort.parse("localhost:9001") == ("localhost", 9001)


def test_service_and_tag_hosts() -> None:
    gateway = Gateway(domain="example.com")
    spec = ServiceSpec(hosts=["hello.example.org", "www.example.org"], template=Template(command=["a"]))
    assert service_hosts("hello", spec, gateway) == ["hello.example.com", "hello.example.org", "www.example.org"]
    assert tag_host("canary", "hello", gateway) == "canary-hello.example.com"
    assert service_hosts("hello", ServiceSpec(template=Template(command=["a"])), Gateway()) == ["hello.localhost"]


def test_dumped_spec_loads_back_equal(tmp_path: Path) -> None:
    """model_dump(mode="json") writes YAML that loads to the same spec (what an API GET would return)."""
    spec = load_routes(tmp_path / "r.yaml", text=EXAMPLE).spec
    dumped = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    assert load_routes(tmp_path / "r.yaml", text=dumped).spec == spec
