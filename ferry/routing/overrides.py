"""Settings given on ferry's command line (`--listen`, `--domain`, `--internal`, `--backend`, `--namespace`) that
hold over what the file says, on every load of it while ferry runs.

A Knative Service manifest has no gateway or backend: they come from here (or their defaults). In a routes.yaml
they replace the matching fields of its `gateway:` and `backend:` blocks; the rest of those blocks still counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from .fields import Domain, HostPort, Namespace

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Overrides:
    listen: HostPort | None = None  # gateway.listen
    domain: str | None = None  # gateway.domain
    internal: HostPort | None = None  # gateway.internal (private services, Knative's cluster-local)
    backend: Literal["local", "kubernetes"] | None = None  # backend.kind
    namespace: str | None = None  # backend.namespace; in a Knative file, the namespace its Services must be in

    def __bool__(self) -> bool:
        return any(value is not None for value in self.__dict__.values())

    @property
    def kind(self) -> Literal["local", "kubernetes"]:
        """The backend of a Knative file: --backend, local by default."""
        return self.backend or "local"

    @property
    def expected_namespace(self) -> str:
        """The namespace a Knative document must be in (or leave out): --namespace, else Kubernetes' default."""
        return self.namespace or DEFAULT_NAMESPACE

    def gateway(self, written: dict[str, Any] | None = None) -> dict[str, Any]:
        """The gateway block: what is `written` (routes.yaml), with the flags given in its place."""
        gateway = dict(written or {})
        for key, value in (("listen", self.listen), ("domain", self.domain), ("internal", self.internal)):
            if value is not None:
                gateway[key] = str(value)
        return gateway

    def backend_block(self, written: Any = None) -> Any:
        """The backend block: what is `written` (routes.yaml; None for a Knative file), with the flags in its place.
        --namespace goes with backend kubernetes only (on local it only names the Knative documents' namespace)."""
        if not self.backend and not self.namespace:
            return written
        if written is None:
            backend: dict[str, Any] = {}
        elif isinstance(written, str):
            backend = {"kind": written}
        elif isinstance(written, dict):
            backend = dict(written)
        else:
            return written  # not a backend at all: the schema says so, at its line
        if self.backend is not None:
            backend["kind"] = self.backend
        if self.namespace is not None and backend.get("kind", "local") == "kubernetes":
            backend["namespace"] = self.namespace
        return backend

    def apply(self, data: Any) -> Any:
        """A routes.yaml's data with the flags in place of what it says (data that is no mapping is left alone)."""
        if not self or not isinstance(data, dict):
            return data
        data = dict(data)
        if self.listen is not None or self.domain is not None or self.internal is not None:
            written = data.get("gateway")
            data["gateway"] = self.gateway(written) if isinstance(written, dict) or written is None else written
        if self.backend is not None or self.namespace is not None:
            data["backend"] = self.backend_block(data.get("backend"))
        return data

    def knative_base(self) -> dict[str, Any]:
        """The gateway and backend blocks of a file of Knative Services (which has neither)."""
        backend: dict[str, Any] = {"kind": self.kind}
        if self.kind == "kubernetes":
            backend["namespace"] = self.expected_namespace
        return {"gateway": self.gateway(), "backend": backend}


def check_domain(value: str) -> str:
    """--domain: a host name, or ValueError saying how to write it."""
    return _check(Domain, value)


def check_namespace(value: str) -> str:
    """--namespace: a DNS-1123 label, or ValueError saying how to write it."""
    return _check(Namespace, value)


def _check(kind: Any, value: str) -> str:
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as err:
        raise ValueError(err.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")) from None
