"""`ferry manifests`: Kubernetes objects that run ferry and its Envoy gateways in one namespace."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ferry.backends.kubernetes import RBAC_RULES
from ferry.envoy.process import envoy_binary
from ferry.certs import generate
from ferry.manifests import InstallSecrets, manifests, render, server_names
from ferry.routing.loader import load_routes, validate
from ferry.routing.revisions import RevisionStore

from . import ferry_process

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "deploy" / "ferry.yaml"
LEASES = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}


def ferry_cli(*args: str) -> subprocess.CompletedProcess:
    return ferry_process.ferry_cli(*args, cwd=ROOT)


INSTALL = InstallSecrets(token="t0ken", activator_key="k3y", certs=generate(hosts=server_names("ferry")))


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
        ("Deployment", "ferry"), ("Service", "ferry"), ("PodDisruptionBudget", "ferry"), ("NetworkPolicy", "ferry"),
        ("ConfigMap", "ferry-gateway"), ("Deployment", "ferry-gateway"), ("Service", "ferry-gateway"),
        ("NetworkPolicy", "ferry-gateway"),
    ]
    assert "&id" not in render(objects)  # no YAML anchors/aliases
    with_secrets = docs(install=INSTALL)
    assert [(o["kind"], o["metadata"]["name"]) for o in with_secrets[3:5]] == [
        ("Secret", "ferry"), ("Secret", "ferry-gateway")]  # before the pods that mount them
    assert [o for o in with_secrets if o["kind"] != "Secret"] == objects


def test_secrets_hold_what_each_side_needs_and_no_more():
    control, gateway = (one(docs(install=INSTALL), "Secret", name)["stringData"] for name in ("ferry", "ferry-gateway"))
    assert control["api-token"] == "t0ken" and control["activator-key"] == "k3y"
    assert control["tls.key"] == INSTALL.certs["server.key"].decode()
    assert control["tls.crt"] == INSTALL.certs["server.crt"].decode()
    assert control["ca.crt"] == INSTALL.certs["ca.crt"].decode()
    assert gateway == {"ca.crt": INSTALL.certs["ca.crt"].decode(), "tls.crt": INSTALL.certs["gateway.crt"].decode(),
                       "tls.key": INSTALL.certs["gateway.key"].decode()}  # no token, no key of ferry's
    assert "BEGIN PRIVATE KEY" not in render(manifests("ferry"))  # no secret without `install`
    for volume in (v for d in ("ferry", "ferry-gateway")
                   for v in one(docs(), "Deployment", d)["spec"]["template"]["spec"]["volumes"] if "secret" in v):
        assert volume["secret"]["defaultMode"] == 0o440  # root-owned, readable by the pod's fsGroup only


def test_network_policies_admit_each_port_from_whom_needs_it():
    objects = docs()
    control = one(objects, "Deployment", "ferry")["spec"]["selector"]["matchLabels"]
    gateway = one(objects, "Deployment", "ferry-gateway")["spec"]["selector"]["matchLabels"]

    def admitted(policy: dict) -> dict[int, list]:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        return {rule["ports"][0]["port"]: [f["podSelector"]["matchLabels"] for f in rule.get("from", [])] or "any"
                for rule in policy["spec"]["ingress"]}

    ferry_policy = one(objects, "NetworkPolicy", "ferry")
    gateway_policy = one(objects, "NetworkPolicy", "ferry-gateway")
    assert ferry_policy["spec"]["podSelector"]["matchLabels"] == control
    assert admitted(ferry_policy) == {18000: [gateway, control], 8090: [control], 8012: [gateway]}
    assert gateway_policy["spec"]["podSelector"]["matchLabels"] == gateway
    assert admitted(gateway_policy) == {8080: "any", 9902: [control]}


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
        "--state", "/var/lib/ferry/state.db", "--token-file", "/var/run/ferry/api-token",
        "--activator-key-file", "/var/run/ferry/activator-key", "--xds-cert", "/var/run/ferry/tls.crt",
        "--xds-key", "/var/run/ferry/tls.key", "--xds-ca", "/var/run/ferry/ca.crt",
    ]
    assert env_of(c)["POD_IP"] == "status.podIP"  # defined in env, so Kubernetes expands $(POD_IP) in args
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"xds": 18000, "api": 8090, "activator": 8012}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8090, "scheme": "HTTPS"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8090, "scheme": "HTTPS"}
    assert c["resources"]["requests"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/ferry"]]["configMap"] == {"name": "ferry-routes"}
    assert "emptyDir" in volumes[mounts["/var/lib/ferry"]]
    assert volumes[mounts["/var/run/ferry"]]["secret"]["secretName"] == "ferry"

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
    assert env_of(c)["POD_NAME"] == "metadata.name"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "stats": 9902}  # admin: loopback
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "stats"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["bootstrap"]["configMap"] == {"name": "ferry-gateway"}
    assert f"{mounts['bootstrap']}/bootstrap.yaml" in c["args"]
    assert volumes["tls"]["secret"]["secretName"] == "ferry-gateway" and mounts["tls"] == "/etc/ferry-gateway-tls"

    service = one(objects, "Service", "ferry-gateway")
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    bootstrap = yaml.safe_load(one(objects, "ConfigMap", "ferry-gateway")["data"]["bootstrap.yaml"])
    assert bootstrap["node"] == {"id": "gateway", "cluster": "default",
                                 "metadata": {"ferry.listen": "0.0.0.0:8080", "ferry.stats": "9902"}}
    assert bootstrap["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9901}
    xds = bootstrap["static_resources"]["clusters"][0]
    assert xds["type"] == "STRICT_DNS"
    tls = xds["transport_socket"]["typed_config"]
    assert tls["sni"] == "ferry" and tls["common_tls_context"]["tls_certificates"] == [{
        "certificate_chain": {"filename": "/etc/ferry-gateway-tls/tls.crt"},
        "private_key": {"filename": "/etc/ferry-gateway-tls/tls.key"}}]
    (stats,) = bootstrap["static_resources"]["listeners"]
    assert stats["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9902}


def _bootstrap_file(tmp_path: Path, *, xds_host: str | None = None, admin_port: int | None = None,
                    stats_port: int | None = None, quick_start: bool = False) -> Path:
    """The gateway bootstrap with the Secret's files in `tmp_path` (Envoy checks they exist)."""
    for name, data in generate().items():
        (tmp_path / {"gateway.crt": "tls.crt", "gateway.key": "tls.key"}.get(name, name)).write_bytes(data)
    text = one(docs(), "ConfigMap", "ferry-gateway")["data"]["bootstrap.yaml"].replace(
        "/etc/ferry-gateway-tls", str(tmp_path))
    if xds_host:
        text = text.replace("ferry.ferry.svc.cluster.local", xds_host)
    if admin_port:
        text = text.replace("port_value: 9901", f"port_value: {admin_port}")
    if stats_port:
        text = text.replace("port_value: 9902", f"port_value: {stats_port}")
    if quick_start:
        # Envoy opens its listeners once its first CDS and LDS fetches end; with no ferry to answer, each waits
        # out initial_fetch_timeout (15 s by default), which this shortens.
        config = yaml.safe_load(text)
        for source in ("cds_config", "lds_config"):
            config["dynamic_resources"][source]["initial_fetch_timeout"] = "0.2s"
        text = yaml.safe_dump(config)
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


def _get(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_gateway_pod_exposes_stats_and_readiness_but_not_admin(tmp_path):
    """What a gateway pod runs: Kubernetes expands $(POD_NAME) in args, so ferry sees each gateway's own node id;
    the pod's network reaches GET /stats... and /ready, never admin's quit, config dump or any other method."""
    admin, stats = _free_port(), _free_port()
    path = _bootstrap_file(tmp_path, xds_host="127.0.0.1", admin_port=admin, stats_port=stats, quick_start=True)
    args = [a.replace("$(POD_NAME)", "ferry-gateway-abc12") for a in container(docs(), "ferry-gateway")["args"]]
    args[args.index("-c") + 1] = str(path)
    envoy = subprocess.Popen([envoy_binary(), *args, "--use-dynamic-base-id", "-l", "warning"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                node = json.loads(_get(f"http://127.0.0.1:{admin}/server_info")[1])["node"]
                if _get(f"http://127.0.0.1:{stats}/stats?filter=^server.live$")[0] == 200:
                    break
            except OSError:
                pass
            assert envoy.poll() is None, envoy.stderr.read()
            assert time.monotonic() < deadline, "envoy's admin or stats listener did not answer"
            time.sleep(0.1)
        status, body = _get(f"http://127.0.0.1:{stats}/stats?filter=^server.live$")
        assert status == 200 and b"server.live: 1" in body
        assert _get(f"http://127.0.0.1:{stats}/stats/prometheus")[0] == 200
        assert _get(f"http://127.0.0.1:{stats}/ready")[0] in (200, 503)  # not ready until xDS answers: still routed
        for method, route in [("GET", "/config_dump"), ("GET", "/clusters"), ("POST", "/quitquitquit"),
                              ("POST", "/stats"), ("POST", "/reset_counters"), ("GET", "/server_info")]:
            assert _get(f"http://127.0.0.1:{stats}{route}", method)[0] == 404, (method, route)
        assert envoy.poll() is None
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
    assert node["id"] == "ferry-gateway-abc12" and node["cluster"] == "default"
    assert node["metadata"] == {"ferry.listen": "0.0.0.0:8080", "ferry.stats": "9902"}


def test_checked_in_manifest_is_current():
    result = ferry_cli("manifests", "--namespace", "ferry", "--no-secrets")
    assert result.returncode == 0, result.stderr
    assert CHECKED_IN.read_text() == result.stdout, (
        "deploy/ferry.yaml is stale: regenerate with `ferry manifests --namespace ferry --no-secrets > "
        "deploy/ferry.yaml`")


def test_cli_options(tmp_path):
    keep = tmp_path / "secrets"
    args = ("manifests", "--namespace", "apps", "--image", "ferry:dev", "--gateways", "4", "--replicas", "3",
            "--secrets", str(keep))
    result = ferry_cli(*args)
    assert result.returncode == 0, result.stderr
    objects = [o for o in yaml.safe_load_all(result.stdout) if o is not None]
    assert [o for o in objects if o["kind"] != "Secret"] == manifests("apps", image="ferry:dev", gateway_replicas=4,
                                                                      replicas=3)
    control = one(objects, "Secret", "ferry")["stringData"]
    assert control["api-token"] == (keep / "api-token").read_text().strip()
    assert oct(keep.stat().st_mode & 0o777) == "0o700"
    assert {oct(f.stat().st_mode & 0o777) for f in keep.iterdir()} == {"0o600"}
    assert ferry_cli(*args).stdout == result.stdout  # the install's secrets are kept, not remade
    assert ferry_cli("manifests", "--namespace", "apps", "--gateways", "0").returncode == 2
    assert ferry_cli("manifests").returncode == 2  # --namespace is required


def test_objects_round_trip_through_the_kubernetes_models():
    """Every field is one the API types know (a misspelled or misplaced key would be dropped by the models)."""
    from kubernetes import client as k8s

    api = k8s.ApiClient()
    for obj in manifests("ferry", install=INSTALL):
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
    assert str(parsed.token_file) == "/var/run/ferry/api-token" and parsed.xds_cert and parsed.xds_key and parsed.xds_ca
