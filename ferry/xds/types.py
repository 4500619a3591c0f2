"""What every xDS module shares: the resource types ferry serves, their push order, and `Resource`.

A `Resource` carries the names it refers to (`refs`), read from the resource itself where it is built or
decoded, as go-control-plane's `GetResourceReferences` does: a route table names clusters, a host scope names
a route table, a listener names the secrets (SDS) its TLS filter chains serve. The cache checks them before it publishes; a stream holds a route table back until the
clusters it names are acknowledged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# The order in which a change reaches a gateway: clusters, their endpoints, the certificates (a rotation reaches
# the gateway before any listener change), then the listener, the host scopes and the route tables that name them
# (make before break; Envoy does not warm routes). Envoy asks for a listener's secrets by name once it has the
# listener, which warms until they arrive.
PUSH_ORDER = (CLUSTER, ENDPOINT, SECRET, LISTENER, SCOPED_ROUTE, ROUTE)

SHORT_TYPE = {LISTENER: "LDS", ROUTE: "RDS", SCOPED_ROUTE: "SRDS", CLUSTER: "CDS", ENDPOINT: "EDS", SECRET: "SDS"}

# The type a resource's `refs` name: a route table's clusters (each with its endpoints, of the same name), a host
# scope's route table, a listener's secrets.
REFERS_TO = {ROUTE: CLUSTER, SCOPED_ROUTE: ROUTE, LISTENER: SECRET}


def content_version(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    body: bytes  # the serialized message
    version: str
    refs: frozenset[str] = frozenset()  # names of REFERS_TO[its type] it needs in place before it is served

    @classmethod
    def of(cls, name: str, body: bytes, refs: frozenset[str] = frozenset()) -> Resource:
        return cls(name, body, content_version(body), refs)


# type_url -> {name: Resource to put, or None to delete}
Changes = Mapping[str, Mapping[str, "Resource | None"]]
