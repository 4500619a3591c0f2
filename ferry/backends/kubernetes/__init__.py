"""The Kubernetes backend: each revision a Deployment with a headless Service, endpoints from EndpointSlices.

Modules: `manifests` (what ferry creates, and the RBAC it needs; pure), `api` (the client, raw JSON calls,
which errors to retry), `reflector` (list+watch in a thread), `backend` (`KubernetesBackend`), `history`
(the revision history kept on the Deployments; pure), `lease` (leader election on a Lease).
Importing this package imports the kubernetes client; a local `ferry up` never does.
"""

from .api import api_client_for
from .backend import KubernetesBackend
from .manifests import RBAC_RULES, KubeWorkload, deployment_manifest, kube_workload, rbac_rules, service_manifest

__all__ = [
    "RBAC_RULES",
    "KubeWorkload",
    "KubernetesBackend",
    "api_client_for",
    "deployment_manifest",
    "kube_workload",
    "rbac_rules",
    "service_manifest",
]
