"""Valid routes files: what they parse to, the defaults, durations and the host helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ferry.routing import (
    Analysis,
    Gateway,
    HostPort,
    LoadedRoutes,
    Readiness,
    Rollout,
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
from ferry.routing.revisions import canonical_template, template_digest

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


def scale_of(tmp_path: Path, scale: str, extra: str = "") -> Scale:
    text = f"services:\n  hello:\n    template:\n      command: [app]\n{extra}      scale: {scale}\n"
    return load_routes(tmp_path / "r.yaml", text=text).spec.services["hello"].template.scale


def test_scale_defaults_are_knatives(tmp_path: Path) -> None:
    s = scale_of(tmp_path, "{}")
    assert s == Scale()
    assert (s.min, s.max, s.initial, s.target, s.metric) == (0, 0, 1, 100.0, "concurrency")
    assert (s.utilization, s.activation, s.stableWindow, s.panicWindowPercent, s.panicThreshold) == (
        70.0,
        1,
        60.0,
        10.0,
        200.0,
    )
    assert (s.maxScaleUpRate, s.maxScaleDownRate, s.zeroGracePeriod, s.scaleDownDelay, s.burstCapacity) == (
        1000.0,
        2.0,
        30.0,
        0.0,
        211.0,
    )
    assert scale_of(tmp_path, "{metric: rps}").target == 200.0


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("target", "0.01", 0.01),
        ("target", "1000000", 1e6),
        ("utilization", "1.5", 1.5),
        ("utilization", "100", 100.0),
        ("utilization", "1", 1.0),
        ("activation", "1", 1),
        ("activation", "500", 500),
        ("stableWindow", "6s", 6.0),
        ("stableWindow", "6", 6.0),
        ("stableWindow", "6000ms", 6.0),
        ("stableWindow", "1h", 3600.0),
        ("stableWindow", "3600", 3600.0),
        ("stableWindow", "1m30s", 90.0),
        ("stableWindow", "0.1h", 360.0),
        ("stableWindow", "1.5m", 90.0),
        ("stableWindow", "60.0", 60.0),
        ("panicWindowPercent", "1", 1.0),
        ("panicWindowPercent", "100", 100.0),
        ("panicWindowPercent", "12.5", 12.5),
        ("panicThreshold", "110", 110.0),
        ("panicThreshold", "1000", 1000.0),
        ("panicThreshold", "150.5", 150.5),
        ("maxScaleUpRate", "1.001", 1.001),
        ("maxScaleUpRate", "1.0e+6", 1e6),
        ("maxScaleDownRate", "1.001", 1.001),
        ("maxScaleDownRate", "10", 10.0),
        ("zeroGracePeriod", "0", 0.0),
        ("zeroGracePeriod", "0s", 0.0),
        ("zeroGracePeriod", "1.5s", 1.5),
        ("zeroGracePeriod", "500ms", 0.5),
        ("zeroGracePeriod", "24h", 86400.0),
        ("scaleDownDelay", "0s", 0.0),
        ("scaleDownDelay", "0", 0.0),
        ("scaleDownDelay", "1h", 3600.0),
        ("scaleDownDelay", "5m", 300.0),
        ("scaleDownDelay", "1000ms", 1.0),
        ("burstCapacity", "-1", -1.0),
        ("burstCapacity", "0", 0.0),
        ("burstCapacity", "0.5", 0.5),
        ("burstCapacity", "1000000", 1e6),
    ],
)
def test_scale_fields_accept_their_range_edges(tmp_path: Path, field: str, value: str, stored: float) -> None:
    s = scale_of(tmp_path, f"{{{field}: {value}}}")
    assert getattr(s, field) == stored
    assert type(getattr(s, field)) is type(stored)


@pytest.mark.parametrize(
    "scale",
    [
        "{min: 2, max: 2, initial: 2, activation: 2}",  # equal to max is fine
        "{max: 0, initial: 50, activation: 50, min: 50}",  # max 0 is unbounded
        "{min: 3, initial: 0}",  # initial below min: min wins at run time, as in Knative
    ],
)
def test_scale_bounds_accepted(tmp_path: Path, scale: str) -> None:
    scale_of(tmp_path, scale)


def test_target_above_concurrency_is_allowed(tmp_path: Path) -> None:
    """Knative caps the target at containerConcurrency (ferry.autoscaler.settings does too); it is no error."""
    assert scale_of(tmp_path, "{target: 500}", extra="      concurrency: 10\n").target == 500.0


def test_templates_without_the_autoscaling_knobs_keep_their_digest() -> None:
    """The knobs were added later with defaults: a template not using them digests as before, so no revision
    changes; writing a default out explicitly makes no new revision either."""
    # digests computed by ferry before the knobs existed
    before = {
        Template(command=("a",)): "77730907f5a491c1f53aedf3ade7c45e96264b83fe642f020a9c02afc42755dc",
        Template(command=("a",), scale={"max": 10}): "76cd7e4eb5232b0839d9489cbb3a6f3dc0c54bf0143837428feda0beb2585bea",
        Template(command=("a",), concurrency=10, scale={"max": 10, "metric": "rps"}): (
            "9ca24a159bf3d8e13157bd0925df712d50c230d191755cd1371bd2197e34b550"
        ),
    }
    assert {t: template_digest(t) for t in before} == before
    plain = Template(command=("a",))
    explicit = Template(
        command=("a",),
        scale={
            "utilization": 70,
            "activation": 1,
            "stableWindow": "1m",
            "panicWindowPercent": 10,
            "panicThreshold": 200,
            "maxScaleUpRate": 1000,
            "maxScaleDownRate": 2,
            "zeroGracePeriod": "30s",
            "scaleDownDelay": "0s",
            "burstCapacity": 211,
        },
    )
    assert explicit == plain and hash(explicit) == hash(plain)
    assert template_digest(explicit) == template_digest(plain)
    changed = Template(command=("a",), scale={"panicThreshold": 300})
    assert changed != plain and template_digest(changed) != template_digest(plain)
    assert canonical_template(changed) == '{"command":["a"],"scale":{"panicThreshold":300.0,"target":100.0}}'


def test_scale_knobs_round_trip_through_a_dump(tmp_path: Path) -> None:
    text = """\
services:
  hello:
    template:
      command: [app]
      scale:
        utilization: 85.5
        activation: 2
        stableWindow: 2m
        panicWindowPercent: 20
        panicThreshold: 300
        maxScaleUpRate: 5
        maxScaleDownRate: 1.5
        zeroGracePeriod: 1500ms
        scaleDownDelay: 10m
        burstCapacity: -1
"""
    spec = load_routes(tmp_path / "r.yaml", text=text).spec
    s = spec.services["hello"].template.scale
    assert (s.stableWindow, s.zeroGracePeriod, s.scaleDownDelay, s.burstCapacity) == (120.0, 1.5, 600.0, -1.0)
    dumped = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    assert load_routes(tmp_path / "r.yaml", text=dumped).spec == spec
    with pytest.raises(ValidationError, match="frozen"):
        s.utilization = 1  # type: ignore[misc]


def test_a_rollout_block_is_service_level_and_keeps_the_pinned_digest(tmp_path: Path) -> None:
    """rollout: lives beside the template, not in it: the digest pinned above is the same with any rollout."""
    base = "services:\n  hello:\n    template: {command: [a]}\n"
    for rollout in ("", "{strategy: canary}", "{strategy: blue-green, autoPromote: false}", "{strategy: gradual}"):
        text = base + (f"    rollout: {rollout}\n" if rollout else "")
        hello = load_routes(tmp_path / "r.yaml", text=text).spec.services["hello"]
        assert hello.template == Template(command=("a",))
        assert template_digest(hello.template) == "77730907f5a491c1f53aedf3ade7c45e96264b83fe642f020a9c02afc42755dc"
    spec = load_routes(tmp_path / "r.yaml", text=base + "    rollout: {strategy: canary}\n").spec
    assert spec.services["hello"] == ServiceSpec(template=Template(command=("a",)), rollout=Rollout(strategy="canary"))
    assert spec.services["hello"].rollout == Rollout(strategy="canary", steps=(5, 25, 50, 100), analysis=Analysis())


def test_models_with_the_same_fields_given_share_one_set_of_their_names() -> None:
    """Memory: pydantic keeps a set of the fields given per model; the models are frozen, so equal sets are
    shared, and what pydantic reports and copies is unchanged."""
    from ferry.routing.schema import ServiceSpec

    a = ServiceSpec.model_validate({"template": {"command": ["x"]}})
    b = ServiceSpec.model_validate({"template": {"command": ["y"], "env": {"A": "1"}}})
    assert a.__pydantic_fields_set__ is b.__pydantic_fields_set__
    assert a.model_fields_set == {"template"}
    assert a.template.model_fields_set == {"command"} and b.template.model_fields_set == {"command", "env"}
    copied = a.model_copy(update={"hosts": ("h.example.com",)})
    assert copied.model_fields_set == {"template", "hosts"} and a.model_fields_set == {"template"}
    assert b.model_fields_set == {"template"}
    assert a.model_dump(exclude_unset=True) == {"template": {"command": ("x",)}}
