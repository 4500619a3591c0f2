"""Kubernetes manifests that run ferry itself in a cluster: `ferry manifests --namespace NS`.

Pure functions: `manifests()` returns the objects as dicts, `render()` writes them as multi-document YAML.
Everything is namespaced (ServiceAccount, Role, RoleBinding, Secrets, ConfigMaps, Deployments, Services,
NetworkPolicies); ferry needs nothing cluster-wide. The Role is exactly the Kubernetes backend's RBAC_RULES plus
the Lease verbs of leader election: ferry runs as REPLICAS pods, one leading (it scales and writes), every one
serving xDS.

Secure by default (the README's security model): the API wants the install's token (Secret `ferry`, which the
CLI uses through a port-forward), xDS and the API between replicas are mutual TLS with the install's
certificates (Secret `ferry` for ferry, `ferry-gateway` for gateways), the activator takes only requests that
carry the install's key (gateways add it; the route config that holds it travels over mutual TLS), Envoy's
admin API stays on the pod's loopback and ferry reads stats through the gateway's read-only stats listener, and
NetworkPolicies admit xDS from gateways and replicas, the API from replicas, the activator from gateways, stats
from ferry. The secrets differ per install: `InstallSecrets`, made and kept by the CLI.

The gateway bootstrap comes from ferry.envoy.bootstrap; its xDS cluster points at the ferry Service's DNS name, so
its type becomes STRICT_DNS (the builder writes STATIC, which only takes an IP address). `--service-node
$(POD_NAME)` gives each gateway its own node id; ferry reads each gateway's stats at the pod address its xDS
connection comes from, on the port the bootstrap advertises.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .backends.kubernetes import RBAC_RULES
from .envoy.bootstrap import BootstrapOptions, XdsTls, bootstrap

NAME = "ferry"
GATEWAY = "ferry-gateway"
ROUTES_CONFIGMAP = "ferry-routes"
XDS_PORT = 18000
API_PORT = 8090
ACTIVATOR_PORT = 8012
GATEWAY_LISTEN_PORT = 8080
GATEWAY_ADMIN_PORT = 9901  # on the pod's loopback only
GATEWAY_STATS_PORT = 9902  # GET /stats... and /ready only, for ferry and the kubelet
ENVOY_IMAGE = "envoyproxy/envoy:v1.40-latest"
EXAMPLE_IMAGE = "ghcr.io/knative/helloworld-go:latest"
ROUTES_DIR = "/etc/ferry"
STATE_DIR = "/var/lib/ferry"
BOOTSTRAP_DIR = "/etc/envoy"
SECRETS_DIR = "/var/run/ferry"  # Secret `ferry` in ferry's pods
GATEWAY_TLS_DIR = "/etc/ferry-gateway-tls"  # Secret `ferry-gateway` in the gateways'
SECRET_MODE = 0o440  # root-owned files, readable by the pod's fsGroup

LEASE_RULE: dict[str, Any] = {
    # leader election (ferry/backends/kubernetes/lease.py)
    "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"],
}

NOTE = "ferry.dev/note"


def role_rules() -> list[dict[str, Any]]:
    """The backend's rules (copied, lists included) and the Lease rule."""
    return [copy.deepcopy(dict(rule)) for rule in RBAC_RULES] + [copy.deepcopy(LEASE_RULE)]


@dataclass(frozen=True)
class InstallSecrets:
    """What differs per install: the API token, the activator key, and the certificates by file name (PEM, as
    ferry.certs.generate makes them for the ferry Service's names)."""

    token: str
    activator_key: str
    certs: Mapping[str, bytes]


def server_names(namespace: str) -> list[str]:
    """The names ferry's certificate carries in the cluster (clients check SERVER_NAME, any address)."""
    return [f"{NAME}.{namespace}", f"{NAME}.{namespace}.svc", f"{NAME}.{namespace}.svc.cluster.local"]


def ferry_args() -> list[str]:
    return [
        "up", f"{ROUTES_DIR}/routes.yaml", "--no-envoy",
        "--xds", f"0.0.0.0:{XDS_PORT}",
        "--api", f"0.0.0.0:{API_PORT}",
        "--activator", f"0.0.0.0:{ACTIVATOR_PORT}",
        "--leader-elect", "--advertise", "$(POD_IP)",  # the leader's EDS names its own activator at its IP
        "--state", f"{STATE_DIR}/state.db",
        "--token-file", f"{SECRETS_DIR}/api-token",
        "--activator-key-file", f"{SECRETS_DIR}/activator-key",
        "--xds-cert", f"{SECRETS_DIR}/tls.crt", "--xds-key", f"{SECRETS_DIR}/tls.key",
        "--xds-ca", f"{SECRETS_DIR}/ca.crt",
    ]


def gateway_bootstrap(namespace: str) -> dict:
    """ferry's bootstrap for a gateway in the cluster: xDS over mutual TLS at the ferry Service by DNS, listener
    on 0.0.0.0:8080 (node metadata `ferry.listen`), admin on loopback, the stats listener on 0.0.0.0:9902."""
    config = bootstrap(BootstrapOptions(
        node_id="gateway", group="default",
        xds_host=f"{NAME}.{namespace}.svc.cluster.local", xds_port=XDS_PORT,
        admin_port=GATEWAY_ADMIN_PORT, stats=("0.0.0.0", GATEWAY_STATS_PORT),
        listen=f"0.0.0.0:{GATEWAY_LISTEN_PORT}",
        xds_tls=XdsTls(f"{GATEWAY_TLS_DIR}/tls.crt", f"{GATEWAY_TLS_DIR}/tls.key", f"{GATEWAY_TLS_DIR}/ca.crt"),
    ))
    xds = next(c for c in config["static_resources"]["clusters"] if c["name"] == "ferry_xds")
    xds["type"] = "STRICT_DNS"  # a DNS name, not an IP: STATIC would reject it
    return config


def gateway_args() -> list[str]:
    return ["-c", f"{BOOTSTRAP_DIR}/bootstrap.yaml", "--service-node", "$(POD_NAME)"]


def secrets(namespace: str, given: InstallSecrets) -> list[dict]:
    """Secret `ferry` (token, activator key, ferry's certificate) and `ferry-gateway` (a gateway's)."""
    def text(name: str) -> str:
        return given.certs[name].decode()

    return [
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": _meta(NAME, namespace, "control-plane"),
         "stringData": {"api-token": given.token, "activator-key": given.activator_key, "ca.crt": text("ca.crt"),
                        "tls.crt": text("server.crt"), "tls.key": text("server.key")}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": _meta(GATEWAY, namespace, "gateway"),
         "stringData": {"ca.crt": text("ca.crt"), "tls.crt": text("gateway.crt"), "tls.key": text("gateway.key")}},
    ]


def network_policies(namespace: str, control: dict, gateway: dict) -> tuple[dict, dict]:
    """Who may reach what: xDS from gateways and replicas, the API from replicas (users come through kubectl
    port-forward, which no policy sees), the activator from gateways; the gateways' HTTP from anywhere, their
    stats from ferry."""
    def rule(port: int, *sources: dict) -> dict:
        allowed: dict[str, Any] = {"ports": [{"port": port, "protocol": "TCP"}]}
        if sources:
            allowed["from"] = [{"podSelector": {"matchLabels": source}} for source in sources]
        return allowed

    def policy(name: str, component: str, selector: dict, rules: list[dict]) -> dict:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": _meta(name, namespace, component),
                "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": rules}}

    return (
        policy(NAME, "control-plane", control, [
            rule(XDS_PORT, gateway, control), rule(API_PORT, control), rule(ACTIVATOR_PORT, gateway)]),
        policy(GATEWAY, "gateway", gateway, [rule(GATEWAY_LISTEN_PORT), rule(GATEWAY_STATS_PORT, control)]),
    )


def _secret_volume(name: str, secret: str) -> dict:
    return {"name": name, "secret": {"secretName": secret, "defaultMode": SECRET_MODE}}


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
    namespace: str, *, image: str = "ferry:latest", gateway_replicas: int = 2, replicas: int = REPLICAS,
    install: InstallSecrets | None = None,
) -> list[dict]:
    """Every object ferry needs in `namespace`, in apply order; the Secrets only with `install` (without them,
    the Secrets `ferry` and `ferry-gateway` must be made some other way)."""
    ns = namespace
    control = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "control-plane"}
    gateway = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "gateway"}
    bootstrap_text = (
        "# Envoy bootstrap for ferry's gateways (from ferry.envoy.bootstrap, xDS cluster made STRICT_DNS).\n"
        f"# node.id is per pod: the Deployment {GATEWAY} sets it with --service-node $(POD_NAME). Admin stays on\n"
        f"# loopback; ferry reads stats on :{GATEWAY_STATS_PORT} at the address this gateway's xDS connection comes\n"
        "# from; xDS is mutual TLS with the certificates of the Secret ferry-gateway.\n"
        + yaml.dump(gateway_bootstrap(ns), Dumper=_Dumper, sort_keys=False)
    )
    control_policy, gateway_policy = network_policies(ns, control, gateway)
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
        *(secrets(ns, install) if install else ()),
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
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": API_PORT, "scheme": "HTTPS"},
                                               "periodSeconds": 2},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": API_PORT, "scheme": "HTTPS"},
                                              "periodSeconds": 10, "failureThreshold": 6},
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                            "volumeMounts": [
                                {"name": "routes", "mountPath": ROUTES_DIR, "readOnly": True},
                                {"name": "state", "mountPath": STATE_DIR},
                                {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
                            ],
                        }],
                        "volumes": [
                            {"name": "routes", "configMap": {"name": ROUTES_CONFIGMAP}},
                            {"name": "state", "emptyDir": {}},
                            _secret_volume("secrets", NAME),
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
        control_policy,
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
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 101, "fsGroup": 101},
                        "containers": [{
                            "name": "envoy",
                            "image": ENVOY_IMAGE,
                            "command": ["envoy"],
                            "args": gateway_args(),
                            "env": _downward_env(),
                            "ports": [
                                {"name": "http", "containerPort": GATEWAY_LISTEN_PORT, "protocol": "TCP"},
                                {"name": "stats", "containerPort": GATEWAY_STATS_PORT, "protocol": "TCP"},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": "stats"}, "periodSeconds": 5},
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                            "volumeMounts": [
                                {"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": True},
                                {"name": "tls", "mountPath": GATEWAY_TLS_DIR, "readOnly": True},
                            ],
                        }],
                        "volumes": [{"name": "bootstrap", "configMap": {"name": GATEWAY}},
                                    _secret_volume("tls", GATEWAY)],
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
        gateway_policy,
    ]


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: shared dicts are written out in full
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:  # embedded files (routes.yaml, bootstrap.yaml) as literal blocks, readable in the manifest
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def render(objects: list[dict], *, header: str = "") -> str:
    """Multi-document YAML, `kubectl apply -f`-ready."""
    header = "# Generated by `ferry manifests`; do not edit (regenerate instead).\n" + header
    return header + "".join(
        "---\n" + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=120) for obj in objects
    )
