"""Talking to the Kubernetes API: the client for routes.yaml's backend, one-shot calls as raw JSON, and which
errors are worth a retry. Shared by the backend, its watches and the leader election."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

def status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, ApiException) else None


def transient(exc: BaseException) -> bool:
    """Worth retrying: the API server is unreachable, overloaded or failing (not a 4xx about our request)."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 429, 500, 502, 503, 504)
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def conflict(exc: BaseException) -> bool:
    return status(exc) == 409


def reason(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"


def resource_version(obj: Mapping[str, Any]) -> int:
    """An object's resourceVersion as a number for "which is newer" (opaque in theory, etcd's revision in practice)."""
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def json_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a client call made with _preload_content=False (non-2xx raises ApiException) and parse its body."""
    resp = fn(*args, **kwargs)
    try:
        data = resp.data
    finally:
        resp.release_conn()
    return json.loads(data) if data else {}


def api_client_for(kubeconfig: str | None, context: str | None, base_dir: Path) -> k8s.ApiClient:
    """The API client for routes.yaml's backend: its kubeconfig (relative to the routes file, ~ expanded) and
    context; without one, the in-cluster service account when running in a pod, else ~/.kube/config."""
    from kubernetes import config

    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return k8s.ApiClient()
        except config.ConfigException:
            kubeconfig = "~/.kube/config"
    path = (base_dir / Path(kubeconfig).expanduser()).resolve()
    if not path.exists():
        raise OSError(f"kubeconfig {path} does not exist: point backend.kubeconfig at one, or run ferry in a pod")
    return config.new_client_from_config(config_file=str(path), context=context)
