"""`ferry manifests`: Kubernetes objects that run ferry and its Envoy gateways in one namespace."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from ferry.backends.kubernetes import RBAC_RULES
from ferry.envoy.process import envoy_binary
from ferry.manifests import manifests, render
from ferry.routing.loader import load_routes, validate
from ferry.routing.revisions import RevisionStore

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "deploy" / "ferry.yaml"
LEASES = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}


def ferry_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferry", *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def docs(namespace: str = "ferry", **kwargs) -> list[dict]:
    return [d for d in yaml.safe_load_all(render(manifests(namespace, **kwargs))) if d is not None]


def one(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(objects: list[dict], deployment: str) -> dict:
    (c,) = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}


def test_render_is_multi_document_yaml_of_the_objects():
    objects = manifests("ferry")
    assert docs() == objects
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ServiceAccount", "ferry"), ("Role", "ferry"), ("RoleBinding", "ferry"), ("ConfigMap", "ferry-routes"),
        ("Deployment", "ferry"), ("Service", "ferry"), ("PodDisruptionBudget", "ferry"), ("ConfigMap", "ferry-gateway"),
        ("Deployment", "ferry-gateway"), ("Service", "ferry-gateway"),
    ]
    assert "&id" not in render(objects)  # no YAML anchors/aliases


def test_role_is_the_backends_rules_plus_leases_and_nothing_cluster_wide():
    objects = docs()
    assert one(objects, "Role", "ferry")["rules"] == [*map(dict, RBAC_RULES), LEASES]
    assert not {o["kind"] for o in objects} & {"ClusterRole", "ClusterRoleBinding", "Namespace"}
    binding = one(objects, "RoleBinding", "ferry")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ferry"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ferry", "namespace": "ferry"}]
    manifests("ferry")[1]["rules"][0]["verbs"].append("escalate")
    assert "escalate" not in RBAC_RULES[0]["verbs"]  # the objects hold copies


@pytest.mark.parametrize("namespace", ["ferry", "apps-2"])
def test_every_object_is_in_the_namespace(namespace):
    objects = docs(namespace)
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}
    routes = yaml.safe_load(one(objects, "ConfigMap", "ferry-routes")["data"]["routes.yaml"])
    assert routes["backend"] == {"kind": "kubernetes", "namespace": namespace}
    bootstrap = yaml.safe_load(one(objects, "ConfigMap", "ferry-gateway")["data"]["bootstrap.yaml"])
    address = bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert address["endpoint"]["address"]["socket_address"] == {
        "address": f"ferry.{namespace}.svc.cluster.local", "port_value": 18000}


def test_ferry_deployment():
    objects = docs(image="registry.example/ferry:1.2")
    deployment = one(objects, "Deployment", "ferry")
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert "leader" in deployment["metadata"]["annotations"]["ferry.dev/note"]
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    budget = one(objects, "PodDisruptionBudget", "ferry")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "ferry"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    c = container(objects, "ferry")
    assert c["image"] == "registry.example/ferry:1.2"
    assert c["args"] == [
        "up", "/etc/ferry/routes.yaml", "--no-envoy", "--xds", "0.0.0.0:18000", "--api", "0.0.0.0:8090",
        "--activator", "0.0.0.0:8012", "--leader-elect", "--advertise", "$(POD_IP)",
        "--state", "/var/lib/ferry/state.db",
    ]
    assert env_of(c)["POD_IP"] == "status.podIP"  # defined in env, so Kubernetes expands $(POD_IP) in args
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"xds": 18000, "api": 8090, "activator": 8012}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8090}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8090}
    assert c["resources"]["requests"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/ferry"]]["configMap"] == {"name": "ferry-routes"}
    assert "emptyDir" in volumes[mounts["/var/lib/ferry"]]

    service = one(objects, "Service", "ferry")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {18000: "xds", 8090: "api"}


def test_example_routes_pass_ferry_validation(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(one(docs("apps"), "ConfigMap", "ferry-routes")["data"]["routes.yaml"])
    loaded = load_routes(routes)
    store = RevisionStore(tmp_path / "state.db")
    try:
        validate(loaded, store)
    finally:
        store.close()
    assert loaded.spec.backend.kind == "kubernetes" and loaded.spec.backend.namespace == "apps"
    assert str(loaded.spec.gateway.listen) == "0.0.0.0:8080"
    assert loaded.spec.services["hello"].template.image


def test_gateway_deployment_and_service():
    objects = docs(gateway_replicas=3)
    deployment = one(objects, "Deployment", "ferry-gateway")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    c = container(objects, "ferry-gateway")
    assert c["image"].startswith("envoyproxy/envoy:v1.40")
    assert env_of(c) == {"POD_IP": "status.podIP", "POD_NAME": "metadata.name"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "admin": 9901}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 9901}
    (mount,) = c["volumeMounts"]
    (volume,) = pod["volumes"]
    assert volume["configMap"] == {"name": "ferry-gateway"} and mount["name"] == volume["name"]
    assert f"{mount['mountPath']}/bootstrap.yaml" in c["args"]

    service = one(objects, "Service", "ferry-gateway")
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    bootstrap = yaml.safe_load(one(objects, "ConfigMap", "ferry-gateway")["data"]["bootstrap.yaml"])
    assert bootstrap["node"] == {"id": "gateway", "cluster": "default", "metadata": {"ferry.listen": "0.0.0.0:8080"}}
    assert bootstrap["admin"]["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9901}
    assert bootstrap["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def _bootstrap_file(tmp_path: Path, *, xds_host: str | None = None, admin_port: int | None = None) -> Path:
    text = one(docs(), "ConfigMap", "ferry-gateway")["data"]["bootstrap.yaml"]
    if xds_host:
        text = text.replace("ferry.ferry.svc.cluster.local", xds_host)
    if admin_port:
        text = text.replace("port_value: 9901", f"port_value: {admin_port}")
    path = tmp_path / "bootstrap.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("xds_host", [None, "127.0.0.1"], ids=["dns-name", "ip"])
def test_gateway_bootstrap_passes_envoy_validation(tmp_path, xds_host):
    path = _bootstrap_file(tmp_path, xds_host=xds_host)
    check = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gateway_command_line_sets_node_id_and_admin_metadata(tmp_path):
    """What a gateway pod runs: Kubernetes expands $(POD_NAME)/$(POD_IP) in args; Envoy merges --config-yaml
    over the file, so ferry sees each gateway's own node id and admin address."""
    admin = _free_port()
    path = _bootstrap_file(tmp_path, xds_host="127.0.0.1", admin_port=admin)
    args = [a.replace("$(POD_NAME)", "ferry-gateway-abc12").replace("$(POD_IP)", "10.1.2.3")
            for a in container(docs(), "ferry-gateway")["args"]]
    args[args.index("-c") + 1] = str(path)
    envoy = subprocess.Popen([envoy_binary(), *args, "--use-dynamic-base-id", "-l", "warning"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/server_info", timeout=2) as response:
                    node = json.load(response)["node"]
                break
            except OSError:
                assert envoy.poll() is None, envoy.stderr.read()
                assert time.monotonic() < deadline, "envoy's admin did not answer"
                time.sleep(0.1)
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
    assert node["id"] == "ferry-gateway-abc12" and node["cluster"] == "default"
    assert node["metadata"] == {"ferry.listen": "0.0.0.0:8080", "ferry.admin": "10.1.2.3:9901"}


def test_checked_in_manifest_is_current():
    result = ferry_cli("manifests", "--namespace", "ferry")
    assert result.returncode == 0, result.stderr
    assert CHECKED_IN.read_text() == result.stdout, (
        "deploy/ferry.yaml is stale: regenerate with `ferry manifests --namespace ferry > deploy/ferry.yaml`")


def test_cli_options():
    result = ferry_cli("manifests", "--namespace", "apps", "--image", "ferry:dev", "--gateways", "4",
                       "--replicas", "3")
    assert result.returncode == 0, result.stderr
    objects = list(yaml.safe_load_all(result.stdout))
    assert objects == manifests("apps", image="ferry:dev", gateway_replicas=4, replicas=3)
    assert ferry_cli("manifests", "--namespace", "apps", "--gateways", "0").returncode == 2
    assert ferry_cli("manifests").returncode == 2  # --namespace is required


def test_objects_round_trip_through_the_kubernetes_models():
    """Every field is one the API types know (a misspelled or misplaced key would be dropped by the models)."""
    from kubernetes import client as k8s

    api = k8s.ApiClient()
    for obj in manifests("ferry"):
        model = api._ApiClient__deserialize(obj, f"V1{obj['kind']}")  # the client's own typed deserializer
        assert api.sanitize_for_serialization(model) == obj, obj["kind"]


def test_ferry_args_parse_as_ferry_up(monkeypatch):
    """The container's args are a valid `ferry up` command line once Kubernetes has expanded $(POD_IP)."""
    import ferry.cli

    seen = []
    monkeypatch.setattr(ferry.cli, "_up", lambda args: seen.append(args) or 0)
    args = [a.replace("$(POD_IP)", "10.0.0.7") for a in container(docs(), "ferry")["args"]]
    assert ferry.cli.main(args) == 0
    (parsed,) = seen
    assert parsed.no_envoy and parsed.leader_elect and parsed.advertise == "10.0.0.7"
    assert str(parsed.routes) == "/etc/ferry/routes.yaml" and str(parsed.state) == "/var/lib/ferry/state.db"
