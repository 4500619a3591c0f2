"""Kubernetes manifests that run ferry itself in a cluster: `ferry manifests --namespace NS`.

Pure functions: `manifests()` returns the objects as dicts, `render()` writes them as multi-document YAML.
Everything is namespaced (ServiceAccount, Role, RoleBinding, ConfigMaps, Deployments, Services); ferry needs
nothing cluster-wide. The Role is exactly the Kubernetes backend's RBAC_RULES plus the Lease verbs of leader
election: ferry runs as REPLICAS pods, one leading (it scales and writes), every one serving xDS.

The gateway bootstrap comes from ferry.envoy.bootstrap, post-processed here (that module is for local gateways):
- the xDS cluster points at the ferry Service's DNS name, so its type becomes STRICT_DNS (the builder writes
  STATIC, which only takes an IP address);
- node metadata `ferry.admin` (where ferry reads each gateway's stats for the autoscaler) must be the pod's
  own IP, which a ConfigMap cannot hold. It is removed from the file and supplied per pod on Envoy's command
  line instead: `--config-yaml` merges `node.metadata` over the file, and Kubernetes expands `$(POD_IP)` in
  container args from the downward-API env var. `--service-node $(POD_NAME)` gives each gateway its own node id.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .backends.kubernetes import RBAC_RULES
from .envoy.bootstrap import BootstrapOptions, bootstrap
from .xds.groups import ADMIN_METADATA_KEY

NAME = "ferry"
GATEWAY = "ferry-gateway"
ROUTES_CONFIGMAP = "ferry-routes"
XDS_PORT = 18000
API_PORT = 8090
ACTIVATOR_PORT = 8012
GATEWAY_LISTEN_PORT = 8080
GATEWAY_ADMIN_PORT = 9901
ENVOY_IMAGE = "envoyproxy/envoy:v1.40-latest"
EXAMPLE_IMAGE = "ghcr.io/knative/helloworld-go:latest"
ROUTES_DIR = "/etc/ferry"
STATE_DIR = "/var/lib/ferry"
BOOTSTRAP_DIR = "/etc/envoy"

LEASE_RULE: dict[str, Any] = {
    # leader election (ferry/backends/kubernetes/lease.py)
    "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"],
}

NOTE = "ferry.dev/note"


def role_rules() -> list[dict[str, Any]]:
    """The backend's rules (copied, lists included) and the Lease rule."""
    return [copy.deepcopy(dict(rule)) for rule in RBAC_RULES] + [copy.deepcopy(LEASE_RULE)]


def ferry_args() -> list[str]:
    return [
        "up", f"{ROUTES_DIR}/routes.yaml", "--no-envoy",
        "--xds", f"0.0.0.0:{XDS_PORT}",
        "--api", f"0.0.0.0:{API_PORT}",
        "--activator", f"0.0.0.0:{ACTIVATOR_PORT}",
        "--leader-elect", "--advertise", "$(POD_IP)",  # the leader's EDS names its own activator at its IP
        "--state", f"{STATE_DIR}/state.db",
    ]


def gateway_bootstrap(namespace: str) -> dict:
    """ferry's bootstrap for a gateway in the cluster: xDS at the ferry Service by DNS, listener on
    0.0.0.0:8080 (node metadata `ferry.listen`), admin on 0.0.0.0:9901, no `ferry.admin` (per pod: see module)."""
    config = bootstrap(BootstrapOptions(
        node_id="gateway", group="default",
        xds_host=f"{NAME}.{namespace}.svc.cluster.local", xds_port=XDS_PORT,
        admin_host="0.0.0.0", admin_port=GATEWAY_ADMIN_PORT,
        listen=f"0.0.0.0:{GATEWAY_LISTEN_PORT}",
    ))
    del config["node"]["metadata"][ADMIN_METADATA_KEY]  # "0.0.0.0:9901" would send ferry to its own pod
    (cluster,) = config["static_resources"]["clusters"]
    cluster["type"] = "STRICT_DNS"  # a DNS name, not an IP: STATIC would reject it
    return config


def gateway_args() -> list[str]:
    return [
        "-c", f"{BOOTSTRAP_DIR}/bootstrap.yaml",
        "--service-node", "$(POD_NAME)",
        "--config-yaml", f'{{node: {{metadata: {{{ADMIN_METADATA_KEY}: "$(POD_IP):{GATEWAY_ADMIN_PORT}"}}}}}}',
    ]


def example_routes(namespace: str) -> str:
    return f"""\
# ferry's routes, mounted from the ConfigMap {ROUTES_CONFIGMAP} at {ROUTES_DIR}/routes.yaml.
# Revision history (names, latest ready revision, rollouts) is recorded on the revisions' Deployments as
# annotations, so any ferry pod (a new leader, or one whose emptyDir --state was lost) continues it.
# Editing this ConfigMap is applied live (the leader watches the mounted file; kubelet updates it within a
# minute); `ferry apply` through the API (kubectl port-forward svc/{NAME} {API_PORT}) is immediate.
gateway:
  listen: 0.0.0.0:{GATEWAY_LISTEN_PORT}
  domain: example.com             # hello.example.com -> the hello service
backend:
  kind: kubernetes
  namespace: {namespace}
services:
  hello:
    template:
      image: {EXAMPLE_IMAGE}
      env: {{TARGET: ferry}}
      port: 8080
      scale: {{min: 0, initial: 1}}
"""


def _meta(name: str, namespace: str, component: str, **extra: Any) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": component}
    return {"name": name, "namespace": namespace, "labels": labels, **extra}


def _downward_env() -> list[dict[str, Any]]:
    return [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]


REPLICAS = 2


def manifests(
    namespace: str, *, image: str = "ferry:latest", gateway_replicas: int = 2, replicas: int = REPLICAS
) -> list[dict]:
    """Every object ferry needs in `namespace`, in apply order."""
    ns = namespace
    control = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "control-plane"}
    gateway = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "gateway"}
    bootstrap_text = (
        "# Envoy bootstrap for ferry's gateways (from ferry.envoy.bootstrap, xDS cluster made STRICT_DNS).\n"
        f"# node.id and node.metadata.{ADMIN_METADATA_KEY} are per pod, which a ConfigMap cannot express: the\n"
        f"# Deployment {GATEWAY} sets them on Envoy's command line (--service-node $(POD_NAME) and\n"
        f"# --config-yaml with $(POD_IP):{GATEWAY_ADMIN_PORT}, merged over this file). Without {ADMIN_METADATA_KEY},\n"
        "# ferry's autoscaler does not see this gateway's requests.\n"
        + yaml.dump(gateway_bootstrap(ns), Dumper=_Dumper, sort_keys=False)
    )
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, ns, "control-plane")},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(NAME, ns, "control-plane", annotations={
                NOTE: "ferry.backends.kubernetes.RBAC_RULES plus coordination.k8s.io leases for leader election"}),
            "rules": role_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": _meta(NAME, ns, "control-plane"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}],
        },
        {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(ROUTES_CONFIGMAP, ns, "control-plane"),
            "data": {"routes.yaml": example_routes(ns)},
        },
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(NAME, ns, "control-plane", annotations={
                NOTE: "replicas elect a leader on the Lease ferry; all of them serve xDS (a follower mirrors the "
                      "leader) and are ready once they hold the state, so the Service spreads gateways over them. "
                      "A rolling update hands the lease over; revision history lives on the revisions' "
                      "Deployments, so the emptyDir state may be lost."}),
            "spec": {
                "replicas": replicas,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "selector": {"matchLabels": control},
                "template": {
                    "metadata": {"labels": control},
                    "spec": {
                        "serviceAccountName": NAME,
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                "labelSelector": {"matchLabels": control}},
                        }]}},
                        "containers": [{
                            "name": NAME,
                            "image": image,
                            "args": ferry_args(),
                            "env": _downward_env(),
                            "ports": [
                                {"name": "xds", "containerPort": XDS_PORT, "protocol": "TCP"},
                                {"name": "api", "containerPort": API_PORT, "protocol": "TCP"},
                                {"name": "activator", "containerPort": ACTIVATOR_PORT, "protocol": "TCP"},
                            ],
                            # ready = holds a whole state to serve (leader: applied; follower: mirrored)
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": API_PORT},
                                               "periodSeconds": 2},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": API_PORT},
                                              "periodSeconds": 10, "failureThreshold": 6},
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                            "volumeMounts": [
                                {"name": "routes", "mountPath": ROUTES_DIR, "readOnly": True},
                                {"name": "state", "mountPath": STATE_DIR},
                            ],
                        }],
                        "volumes": [
                            {"name": "routes", "configMap": {"name": ROUTES_CONFIGMAP}},
                            {"name": "state", "emptyDir": {}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service", "metadata": _meta(NAME, ns, "control-plane"),
            "spec": {
                "type": "ClusterIP",
                "selector": control,
                "ports": [
                    {"name": "grpc-xds", "port": XDS_PORT, "targetPort": "xds", "protocol": "TCP",
                     "appProtocol": "grpc"},
                    # a follower forwards API requests to the leader
                    {"name": "http-api", "port": API_PORT, "targetPort": "api", "protocol": "TCP"},
                ],
            },
        },
        {
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(NAME, ns, "control-plane"),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": control}},
        },
        {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(GATEWAY, ns, "gateway"),
            "data": {"bootstrap.yaml": bootstrap_text},
        },
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(GATEWAY, ns, "gateway"),
            "spec": {
                "replicas": gateway_replicas,
                "selector": {"matchLabels": gateway},
                "template": {
                    "metadata": {"labels": gateway},
                    "spec": {
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 101},
                        "containers": [{
                            "name": "envoy",
                            "image": ENVOY_IMAGE,
                            "command": ["envoy"],
                            "args": gateway_args(),
                            "env": _downward_env(),
                            "ports": [
                                {"name": "http", "containerPort": GATEWAY_LISTEN_PORT, "protocol": "TCP"},
                                {"name": "admin", "containerPort": GATEWAY_ADMIN_PORT, "protocol": "TCP"},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": GATEWAY_ADMIN_PORT},
                                               "periodSeconds": 5},
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                            "volumeMounts": [{"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": True}],
                        }],
                        "volumes": [{"name": "bootstrap", "configMap": {"name": GATEWAY}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": _meta(GATEWAY, ns, "gateway", annotations={
                NOTE: "LoadBalancer: the public entry. On a cluster without a load balancer (kind, minikube) it "
                      "stays pending; use type ClusterIP or NodePort and kubectl port-forward instead."}),
            "spec": {
                "type": "LoadBalancer",
                "selector": gateway,
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        },
    ]


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: shared dicts are written out in full
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:  # embedded files (routes.yaml, bootstrap.yaml) as literal blocks, readable in the manifest
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def render(objects: list[dict]) -> str:
    """Multi-document YAML, `kubectl apply -f`-ready."""
    header = "# Generated by `ferry manifests`; do not edit (regenerate instead).\n"
    return header + "".join(
        "---\n" + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120) for obj in objects
    )
