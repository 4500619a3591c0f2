"""What ferry creates in Kubernetes for a revision, as plain manifests: a Deployment and a headless Service, their
labels, and the RBAC rules the backend needs. Pure: dicts in, dicts out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ferry.backends.base import Workload

LABEL_SERVICE = "ferry.dev/service"
LABEL_REVISION = "ferry.dev/revision"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "ferry"
ANNOTATION_OWNER = "ferry.dev/owner"
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
SLICE_SERVICE_LABEL = "kubernetes.io/service-name"
CONTAINER_NAME = "app"
PORT_NAME = "http"

# What ferry's RBAC Role must allow in its namespace (see rbac_rules()).
RBAC_RULES: tuple[dict[str, Any], ...] = (
    # get: only to adopt an existing Deployment after a 409 AlreadyExists on create; patch: the revision
    # history's annotations (history.py)
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["list", "watch", "get", "create", "patch", "delete"]},
    # update: the re-apply (PUT with resourceVersion) after a 409 Conflict on the patch
    {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "create", "delete"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
)


def rbac_rules() -> list[dict[str, Any]]:
    """The rules of the namespaced Role this backend needs (a copy, ready to dump into a manifest)."""
    return [dict(r) for r in RBAC_RULES]


@dataclass(frozen=True)
class KubeWorkload:
    """One revision's template as a container: what a Deployment needs beyond ferry's local Workload."""

    service: str
    revision: str
    image: str
    command: tuple[str, ...] | None = None  # container entrypoint override (None = the image's)
    args: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 8080
    readiness_path: str | None = None  # HTTP GET probe on the port; None = TCP socket probe
    resources: Mapping[str, Any] | None = None  # the container's `resources` ({"requests": ..., "limits": ...})
    timeout_s: float = 300.0  # request timeout; also the pods' termination grace period
    annotations: Mapping[str, str] = field(default_factory=dict)  # the Deployment's (revision history)


def kube_workload(
    workload: Workload,
    *,
    image: str,
    port: int = 8080,
    args: tuple[str, ...] | list[str] | None = None,
    resources: Mapping[str, Any] | None = None,
) -> KubeWorkload:
    """A local Workload as a container: its command becomes the entrypoint override (empty = the image's)."""
    return KubeWorkload(
        service=workload.service,
        revision=workload.revision,
        image=image,
        command=tuple(workload.command) or None,
        args=tuple(args) if args is not None else None,
        env=dict(workload.env),
        port=port,
        readiness_path=workload.readiness_path,
        resources=resources,
        timeout_s=workload.timeout_s,
    )


def _labels(wl: KubeWorkload) -> dict[str, str]:
    return {LABEL_SERVICE: wl.service, LABEL_REVISION: wl.revision, LABEL_MANAGED_BY: MANAGED_BY}


PRE_STOP_DRAIN_S = 5


def deployment_manifest(wl: KubeWorkload, *, owner: str, replicas: int) -> dict[str, Any]:
    """The Deployment ferry creates for a revision (plain JSON, as sent to the API)."""
    env = [
        {"name": "PORT", "value": str(wl.port)},
        {"name": "K_SERVICE", "value": wl.service},
        {"name": "K_CONFIGURATION", "value": wl.service},
        {"name": "K_REVISION", "value": wl.revision},
    ]
    reserved = {e["name"] for e in env}
    env += [{"name": k, "value": str(v)} for k, v in wl.env.items() if k not in reserved]
    probe: dict[str, Any] = (
        {"httpGet": {"path": wl.readiness_path, "port": wl.port}}
        if wl.readiness_path is not None
        else {"tcpSocket": {"port": wl.port}}
    )
    probe.update(periodSeconds=1, failureThreshold=3, successThreshold=1, timeoutSeconds=1)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": wl.image,
        "ports": [{"name": PORT_NAME, "containerPort": wl.port, "protocol": "TCP"}],
        "env": env,
        "readinessProbe": probe,
        # A pod the Deployment controller picks for a scale-down turns terminating, which takes it out of ferry's
        # EDS at once; waiting a moment before SIGTERM lets every gateway drop it and finish what it sent
        # (the sleep action needs Kubernetes 1.30+).
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_DRAIN_S}}},
    }
    if wl.command is not None:
        container["command"] = list(wl.command)
    if wl.args is not None:
        container["args"] = list(wl.args)
    if wl.resources is not None:
        container["resources"] = dict(wl.resources)
    labels = _labels(wl)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": wl.revision, "labels": labels,
                     "annotations": {**wl.annotations, ANNOTATION_OWNER: owner}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_REVISION: wl.revision, LABEL_MANAGED_BY: MANAGED_BY}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "terminationGracePeriodSeconds": max(1, int(round(wl.timeout_s))),
                },
            },
        },
    }


def service_manifest(wl: KubeWorkload, *, owner: str) -> dict[str, Any]:
    """The headless Service whose EndpointSlices (labelled like it) carry the revision's pod readiness."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": wl.revision, "labels": _labels(wl), "annotations": {ANNOTATION_OWNER: owner}},
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_REVISION: wl.revision, LABEL_MANAGED_BY: MANAGED_BY},
            "ports": [{"name": PORT_NAME, "port": wl.port, "targetPort": wl.port, "protocol": "TCP"}],
            "publishNotReadyAddresses": False,
        },
    }
