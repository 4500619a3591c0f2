"""Knative Service manifests: a corpus written from Knative's documentation, each read as the routes.yaml it
equals (tests/knative/valid/NAME.yaml and NAME.expected.yaml); a corpus ferry refuses, each with its exact
problems, paths and lines (tests/knative/invalid/NAME.yaml and NAME.errors); and the way back: export and convert
read back to the same specs and template digests (no new revision).

A corpus file's first line says the flags it is read with: `# ferry: --backend kubernetes --namespace apps`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from ferry import cli, knative_cli
from ferry.api import ApiState, build_api
from ferry.reconcile.config import ConfigSource
from ferry.routing import ConfigError, RevisionStore, load_routes, validate
from ferry.routing.fields import HostPort
from ferry.routing.knative_export import NotExpressible, dump, manifests, service_manifest
from ferry.routing.overrides import Overrides
from ferry.routing.revisions import template_digest
from ferry.routing.schema import RoutesFile, ServiceSpec, backend_kind, container_recorded

from .helpers import write_routes

CORPUS = Path(__file__).resolve().parent / "knative"
VALID = sorted(p for p in (CORPUS / "valid").glob("*.yaml") if not p.name.endswith(".expected.yaml"))
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))


def flags(path: Path) -> Overrides:
    """The flags a corpus file is read with, from its first line."""
    first = path.read_text().splitlines()[0]
    parser = argparse.ArgumentParser()
    knative_cli.add_overrides(parser)
    words = shlex.split(first.removeprefix("# ferry:")) if first.startswith("# ferry:") else []
    return knative_cli.overrides_from(parser.parse_args(words))


def expected(path: Path) -> RoutesFile:
    """NAME.expected.yaml as a routes.yaml, with a Knative container's fields recorded as a Knative file records
    them on backend local."""
    data = yaml.safe_load(path.with_name(path.stem + ".expected.yaml").read_text())
    with container_recorded():
        return RoutesFile.model_validate(data)


def without_container_fields(spec: RoutesFile) -> RoutesFile:
    """What a routes.yaml on backend local can hold of a Knative file: no image, port or resources."""
    services = {name: s.model_copy(update={"template": s.template.model_copy(
        update={"image": None, "port": None, "resources": None})}) for name, s in spec.services.items()}
    return spec.model_copy(update={"services": services})


def test_the_corpora_are_large_enough():
    assert len(VALID) >= 15 and len(INVALID) >= 8
    assert all(p.with_name(p.stem + ".expected.yaml").exists() for p in VALID)
    assert all(p.with_suffix(".errors").exists() for p in INVALID)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_a_knative_manifest_reads_as_its_routes_yaml(path: Path):
    loaded = load_routes(path, overrides=flags(path))
    assert loaded.format == "knative"
    assert loaded.spec == expected(path)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_what_ferry_cannot_honour_is_refused_with_file_line_and_knative_path(path: Path):
    with pytest.raises(ConfigError) as info:
        load_routes(path, overrides=flags(path))
    assert info.value.file == str(path)
    got = [f"{p.line}: {p.path}: {p.message}" for p in info.value.problems]
    assert got == path.with_suffix(".errors").read_text().splitlines()
    assert str(info.value).splitlines()[0].startswith(f"{path}:")


# -- the way back: export and convert ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_export_reads_back_to_the_same_spec_and_template_digest(path: Path, tmp_path: Path):
    overrides = flags(path)
    loaded = load_routes(path, overrides=overrides)
    text = dump(manifests(loaded.spec))
    again = load_routes(tmp_path / "exported.yaml", text, overrides=overrides)
    assert again.spec == loaded.spec
    for name, spec in loaded.spec.services.items():
        assert template_digest(again.spec.services[name].template) == template_digest(spec.template)
    assert dump(manifests(again.spec)) == text  # a fixed point, to the byte


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_ferry_export_writes_what_the_api_answers_as_the_same_service(path: Path, tmp_path: Path, capsys):
    """What `ferry export` does with GET /services/NAME/spec (daemon/roles.py Leading.service_spec)."""
    overrides = flags(path)
    loaded = load_routes(path, overrides=overrides)
    for name, spec in loaded.spec.services.items():
        answer = json.loads(json.dumps({
            "service": name, "spec": spec.model_dump(mode="json", exclude_defaults=True),
            "backend": loaded.spec.backend.model_dump(mode="json", exclude_defaults=True)}))
        args = argparse.Namespace(command="export", service=name, api="api")
        assert knative_cli.run(args, lambda api, route: answer if route == f"/services/{name}/spec" else None) == 0
        printed = capsys.readouterr().out
        assert printed == dump([service_manifest(name, spec, loaded.spec.backend)])
        again = load_routes(tmp_path / "exported.yaml", printed, overrides=overrides)
        assert again.spec.services == {name: spec}


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_convert_of_a_convert_gives_the_same_specs(path: Path, tmp_path: Path, capsys):
    overrides = flags(path)
    words = shlex.split(path.read_text().splitlines()[0].removeprefix("# ferry:")) if path.read_text().startswith(
        "# ferry:") else []
    knative = load_routes(path, overrides=overrides)
    assert cli.main(["convert", str(path), *words]) == 0
    routes_yaml = tmp_path / "routes.yaml"
    routes_yaml.write_text(capsys.readouterr().out)
    routes = load_routes(routes_yaml, overrides=overrides)
    assert routes.format == "routes"
    if knative.spec.backend.kind == "kubernetes":
        assert routes.spec == knative.spec
    else:  # a routes.yaml on backend local refuses image, port and resources: convert leaves them out, and says so
        assert routes.spec == without_container_fields(knative.spec)
    assert cli.main(["convert", str(routes_yaml), *words]) == 0
    back = tmp_path / "knative.yaml"
    back.write_text(capsys.readouterr().out)
    assert load_routes(back, overrides=overrides).spec == routes.spec


ROUTES_WITH_EVERYTHING = """
    gateway: {listen: 127.0.0.1:9080, domain: example.com, internal: 127.0.0.1:9081}
    services:
      shop:
        hosts: [shop.example.org]
        template:
          name: shop-blue
          command: [python3, shop.py, --fast]
          env: {MODE: prod, EMPTY: ""}
          readiness: {path: /ready}
          concurrency: 8
          timeout: 90s
          responseStartTimeout: 1.5s
          idleTimeout: 0.25s
          protocol: h2c
          scale: {min: 1, max: 9, initial: 2, metric: rps, target: 42.5, utilization: 65.5, activation: 2,
                  stableWindow: 90s, panicWindowPercent: 12.5, panicThreshold: 250, maxScaleUpRate: 3.5,
                  maxScaleDownRate: 1.5, zeroGracePeriod: 12.5s, scaleDownDelay: 1m, burstCapacity: -1}
        traffic:
          - {revision: shop-green, percent: 30}
          - {latestRevision: true, percent: 70, tag: next}
        rollout: {strategy: canary, steps: [10, 40, 100], interval: 15s,
                  analysis: {minRequests: 20, successRate: 97.5, maxLatencyP99: 250ms, failureLimit: 2}, sticky: true}
      internal:
        visibility: private
        template: {command: [python3, internal.py], readiness: {}}
        rollout: {strategy: gradual, duration: 45s}
      preview:
        template: {command: [python3, preview.py]}
        rollout: {strategy: blue-green, interval: 5s, autoPromote: false}
    """


def test_a_routes_yaml_with_every_field_goes_to_knative_and_back(tmp_path: Path, capsys):
    path = write_routes(tmp_path, ROUTES_WITH_EVERYTHING)
    routes = load_routes(path)
    assert cli.main(["convert", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "# run it with: ferry up FILE --listen 127.0.0.1:9080 --domain example.com --internal 127.0.0.1:9081" in out
    assert "ferry: note: run it with" in err
    knative = tmp_path / "knative.yaml"
    knative.write_text(out)
    overrides = Overrides(listen=HostPort("127.0.0.1", 9080), domain="example.com",
                          internal=HostPort("127.0.0.1", 9081))
    again = load_routes(knative, overrides=overrides)
    assert again.spec == routes.spec
    assert {n: template_digest(s.template) for n, s in again.spec.services.items()} == {
        n: template_digest(s.template) for n, s in routes.spec.services.items()}
    documents = list(yaml.safe_load_all(out))
    shop = documents[0]
    assert shop["metadata"]["annotations"]["ferry.dev/hosts"] == "shop.example.org"
    assert json.loads(shop["metadata"]["annotations"]["ferry.dev/rollout"])["strategy"] == "canary"
    assert shop["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/target"] == "42.5"
    assert shop["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"name": "h2c"}]
    assert shop["spec"]["template"]["spec"]["responseStartTimeoutSeconds"] == 1.5
    assert documents[1]["metadata"]["labels"] == {"networking.knative.dev/visibility": "cluster-local"}
    assert documents[1]["metadata"]["annotations"] == {"serving.knative.dev/rollout-duration": "45s"}


def test_what_knative_cannot_hold_is_refused_on_the_way_back(tmp_path: Path, capsys):
    path = write_routes(tmp_path, """
        services:
          static: {template: {endpoints: [10.0.0.1:80]}}
          fine: {template: {command: [python3, app.py]}}
        """)
    assert cli.main(["convert", str(path)]) == 1
    assert "service static routes to endpoints (10.0.0.1:80)" in capsys.readouterr().err
    with pytest.raises(NotExpressible, match="instances ferry does not run"):
        manifests(load_routes(path).spec)


def test_export_leaves_out_what_is_default_and_names_no_revision_that_was_not_named():
    spec = ServiceSpec.model_validate({"template": {"command": ["a"], "timeout": 300, "scale": {"target": 100,
                                                                                                 "utilization": 70}}})
    manifest = service_manifest("hello", spec, RoutesFile().backend)
    assert manifest == {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello"},
                        "spec": {"template": {"spec": {"containers": [{"command": ["a"]}]}}}}
    rps = ServiceSpec.model_validate({"template": {"command": ["a"], "scale": {"metric": "rps"}}})
    annotations = service_manifest("hello", rps, RoutesFile().backend)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"autoscaling.knative.dev/metric": "rps"}  # the target is rps's default, 200


# -- overrides ---------------------------------------------------------------------------------------------------


def test_flags_hold_over_a_routes_yaml_gateway_and_backend(tmp_path: Path):
    path = write_routes(tmp_path, """
        gateway: {listen: 127.0.0.1:8080, domain: example.com, tagHeader: true}
        backend: {kind: kubernetes, namespace: apps}
        services:
          hello: {template: {image: nginx}}
        """)
    overrides = Overrides(listen=HostPort("127.0.0.1", 9999), internal=HostPort("127.0.0.1", 9998),
                          namespace="other")
    loaded = load_routes(path, overrides=overrides)
    gateway = loaded.spec.gateway
    assert (gateway.listen, gateway.internal, gateway.domain, gateway.tagHeader) == (
        HostPort("127.0.0.1", 9999), HostPort("127.0.0.1", 9998), "example.com", True)
    assert (loaded.spec.backend.kind, loaded.spec.backend.namespace) == ("kubernetes", "other")
    assert load_routes(path).spec.gateway.listen == HostPort("127.0.0.1", 8080)
    # A load with other flags reuses nothing of the last one.
    assert load_routes(path, previous=loaded).spec.gateway.listen == HostPort("127.0.0.1", 8080)
    same = load_routes(path, previous=loaded, overrides=overrides)
    assert same is loaded


def test_backend_flags_on_a_routes_yaml(tmp_path: Path):
    path = write_routes(tmp_path, "backend: kubernetes\nservices:\n  hello: {template: {command: [a]}}\n")
    local = load_routes(path, overrides=Overrides(backend="local"))
    assert local.spec.backend.kind == "local"
    kube = write_routes(tmp_path, "services:\n  hello: {template: {image: nginx}}\n")
    assert load_routes(kube, overrides=Overrides(backend="kubernetes", namespace="apps")).spec.backend.namespace == "apps"


async def test_the_flags_hold_for_every_later_apply_of_the_running_ferry(tmp_path: Path):
    """ConfigSource (each save, each `ferry apply`, each POST /apply) loads with the flags ferry started with."""
    path = tmp_path / "hello.yaml"
    path.write_text((CORPUS / "valid" / "multi-document.yaml").read_text())
    applied = []

    async def apply(config):
        applied.append(config)

    overrides = Overrides(listen=HostPort("127.0.0.1", 9555), domain="example.org")
    with RevisionStore(tmp_path / "state.db") as store:
        source = ConfigSource(path, store, apply, CollectorRegistry(), overrides=overrides)
        assert await source.apply()
        routes_yaml = "gateway: {listen: 127.0.0.1:8080}\nservices:\n  hello: {template: {command: [a]}}\n"
        assert await source.apply(routes_yaml, label="sent.yaml")
        path.write_text(path.read_text().replace("python3, worker.py", "python3, worker2.py"))
        assert await source.apply()
    assert [c.loaded.spec.gateway.listen for c in applied] == [HostPort("127.0.0.1", 9555)] * 3
    assert [c.loaded.spec.gateway.domain for c in applied] == ["example.org"] * 3
    assert [c.loaded.format for c in applied] == ["knative", "routes", "knative"]


def test_an_unchanged_service_keeps_its_validated_object(tmp_path: Path):
    path = CORPUS / "valid" / "multi-document.yaml"
    overrides = flags(path)
    first = load_routes(path, overrides=overrides)
    text = path.read_text().replace("python3, worker.py", "python3, worker2.py")
    second = load_routes(path, text, previous=first, overrides=overrides)
    assert second.spec.services["frontend"] is first.spec.services["frontend"]
    assert second.spec.services["worker"] is not first.spec.services["worker"]
    assert second.spec.services["worker"].template.command == ("python3", "worker2.py")


def test_a_save_parses_only_the_documents_that_changed(tmp_path: Path):
    path = CORPUS / "valid" / "multi-document.yaml"
    overrides = flags(path)
    first = load_routes(path, overrides=overrides)
    assert sorted(first.block_names.values()) == ["backend", "frontend", "worker"]
    text = path.read_text().replace("python3, worker.py", "python3, worker2.py")
    second = load_routes(path, text, previous=first, overrides=overrides)
    assert second.raw_services["frontend"] is first.raw_services["frontend"]  # its text was not parsed again
    assert list(second.spec.services) == ["frontend", "backend", "worker"]  # in file order
    assert second.spec == load_routes(path, text, overrides=overrides).spec
    # A problem in a changed document is reported by the full load: every problem, each at its line.
    broken = text.replace('min-scale: "1"', 'min-scale: "-1"').replace("name: backend", "name: Backend")
    with pytest.raises(ConfigError) as info:
        load_routes(path, broken, previous=second, overrides=overrides)
    assert [(p.line, p.path) for p in info.value.problems] == [
        (20, "[1].metadata.name"), (35, '[2].spec.template.metadata.annotations["autoscaling.knative.dev/min-scale"]')]
    # A document repeated (the same text twice) is the full load's duplicate, not a silent merge.
    doubled = text + text.split("---\n")[2]
    with pytest.raises(ConfigError, match="service backend is already defined by document"):
        load_routes(path, "---\n".join(doubled.split("---\n")), previous=second, overrides=overrides)


def test_a_local_knative_file_names_its_namespace_with_namespace(tmp_path: Path):
    text = (CORPUS / "valid" / "hello-local.yaml").read_text().replace("  name: hello\n", "  name: hello\n  namespace: apps\n")
    path = tmp_path / "hello.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="namespace 'apps' is not the one ferry serves, default"):
        load_routes(path)
    loaded = load_routes(path, overrides=Overrides(namespace="apps"))
    assert loaded.spec.backend.kind == "local"


# -- what needs the revision history, and the whole CLI ------------------------------------------------------------


def test_revision_checks_are_reported_at_their_knative_origin(tmp_path: Path):
    path = CORPUS / "valid" / "revision-names.yaml"
    loaded = load_routes(path)
    with RevisionStore(tmp_path / "state.db") as store, pytest.raises(ConfigError) as info:
        validate(loaded, store)
    [problem] = info.value.problems
    assert (problem.line, problem.path) == (18, "spec.traffic[0].revisionName")
    assert "revision named-green does not exist for service named" in problem.message


def test_yaml_errors_name_the_document(tmp_path: Path):
    path = tmp_path / "two.yaml"
    path.write_text((CORPUS / "valid" / "hello-world.yaml").read_text() + "---\napiVersion: v1\nkind: x\nkind: y\n")
    with pytest.raises(ConfigError) as info:
        load_routes(path)
    [problem] = info.value.problems
    assert (problem.line, problem.path) == (19, "[1]") and "duplicate key 'kind'" in problem.message


def test_validate_takes_the_flags(tmp_path: Path, capsys):
    hello = CORPUS / "valid" / "resources-kubernetes.yaml"
    assert cli.main(["validate", str(hello)]) == 1
    assert "namespace 'apps' is not the one ferry serves" in capsys.readouterr().err
    assert cli.main(["validate", str(hello), "--backend", "kubernetes", "--namespace", "apps"]) == 0
    assert "ok (1 services)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["validate", str(hello), "--domain", "Not A Domain"])
    assert "--domain" in capsys.readouterr().err


# -- the API route -----------------------------------------------------------------------------------------------


class SpecLeader:
    def service_spec(self, service):
        if service != "hello":
            raise KeyError(service)
        return {"service": "hello", "spec": {"template": {"command": ["a"]}}, "backend": {}}


async def test_the_spec_route_wants_the_token_and_answers_the_spec():
    state = ApiState(CollectorRegistry(), replica=lambda: {}, leading=SpecLeader(), token="t0ken")
    client = TestClient(TestServer(build_api(state), host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.get("/services/hello/spec") as response:
            assert response.status == 401
        async with client.get("/services/hello/spec", headers={"Authorization": "Bearer t0ken"}) as response:
            assert response.status == 200 and (await response.json())["spec"] == {"template": {"command": ["a"]}}
        async with client.get("/services/nope/spec", headers={"Authorization": "Bearer t0ken"}) as response:
            assert response.status == 404
    finally:
        await client.close()


def test_a_spec_from_the_api_validates_as_the_running_ferry_did():
    with backend_kind("local"), container_recorded():
        spec = ServiceSpec.model_validate({"template": {"command": ["a"], "image": "nginx", "port": 8080}})
    assert (spec.template.image, spec.template.port) == ("nginx", 8080)


def test_the_knative_example_validates_with_the_flags_its_header_gives():
    example = Path(__file__).resolve().parent.parent / "examples" / "knative" / "service.yaml"
    loaded = load_routes(example, overrides=Overrides(listen=HostPort("127.0.0.1", 8080), domain="localhost",
                                                      internal=HostPort("127.0.0.1", 8081)))
    services = loaded.spec.services
    assert set(services) == {"hello", "greeter"} and services["greeter"].visibility == "private"
    assert services["hello"].template.scale.min == 1 and services["hello"].template.image == "ghcr.io/example/hello:1.0"
