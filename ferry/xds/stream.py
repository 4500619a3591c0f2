"""One gateway's ADS stream: what it subscribed to, what it holds, what it rejected, what to send next.

Pure protocol state; no gRPC here (server.py feeds requests in and writes responses out), so Envoy's xDS
protocol rules (api-docs/xds_protocol.rst) can be tested without a socket:

- ACK/NACK is decided by nonce + error_detail; stale nonces are ignored in SotW, while Delta still honours
  their subscription changes.
- A client's holdings (`known`) change only on ACK, never on send.
- A NACKed version is recorded and not sent again; the next *new* version is.
- One response per type in flight; clusters and endpoints reach the gateway before listeners and routes,
  and a route table goes out only once every cluster it names (its `refs`) is ACKed with its endpoints.
- After a cluster changes, its endpoints are sent again (a changed cluster warms only on EDS).
- In Delta, clusters and endpoints are removed only after the route tables the gateway holds are ACKed, so that
  none still names them (a gateway that reconnects holds another control plane's routes); secrets likewise after
  the listeners.
- Secrets (private keys) and the HTTPS listener go only to a gateway whose group serves HTTPS (groups.serves_tls):
  to any other they do not exist, whatever it subscribes to.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from .cache import Changed, GroupSnapshot
from .groups import STATS_METADATA_KEY, serves_tls, tls_only
from .https import HTTPS_LISTENER_NAME
from .types import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SCOPED_ROUTE, SECRET, SHORT_TYPE, Resource

log = logging.getLogger("ferry.xds")

# SotW sends the full set for these; a missing name is a deletion (Envoy treats SRDS like LDS and CDS).
FULL_STATE_TYPES = frozenset({LISTENER, CLUSTER, SCOPED_ROUTE})
# Waiting on clusters/endpoints forever would hide a bug as a stale gateway; past this, send and log.
DEPENDENCY_WAIT_S = 5.0
# A Delta response carries at most this many bytes of resources; the rest follow, each part after the gateway
# ACKed the one before (the types after it wait meanwhile, as for any response in flight). One response of a whole
# new file's 10,000 route tables was ~10 MB, held three times at once while it was sent (the messages, their
# serialization, gRPC's copy): ferry's memory peak. Envoy applies each part as it comes.
MAX_RESPONSE_BYTES = 2 * 1024 * 1024


@dataclass
class Nack:
    type_url: str
    version: str
    message: str
    at: float


@dataclass
class InFlight:
    nonce: str
    versions: dict[str, str | None]  # name -> version sent, None = removal
    type_version: str
    sent_at: float
    dirty_since: float


@dataclass
class TypeState:
    requested: bool = False
    wildcard: bool = False
    subscribed: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # ACKed by the client
    rejected: dict[str, str] = field(default_factory=dict)  # name -> version the client NACKed
    rejected_type_version: str | None = None
    dirty: set[str] = field(default_factory=set)
    all_dirty: bool = False
    dirty_since: float | None = None
    inflight: InFlight | None = None
    last_nonce: str = ""
    answered: bool = False  # a wildcard subscriber needs a first answer, even an empty one, to finish init
    acked_version: str = ""
    last_nack: Nack | None = None
    waiting_since: float | None = None

    def in_scope(self, name: str) -> bool:
        return self.wildcard or name in self.subscribed

    def mark_dirty(self, names: Iterable[str] | None, now: float) -> None:
        if names is None:
            self.all_dirty = True
        else:
            self.dirty.update(names)
        if self.dirty_since is None:
            self.dirty_since = now

    @property
    def is_dirty(self) -> bool:
        return self.all_dirty or bool(self.dirty)

    def clear_dirty(self) -> None:
        self.all_dirty = False
        self.dirty.clear()
        self.dirty_since = None


@dataclass(frozen=True)
class Node:
    id: str
    group: str
    metadata: Mapping[str, str]


class StreamObserver:
    """Where a stream reports what happened (metrics, logs); all methods optional to override."""

    def sent(self, stream: "AdsStream", type_url: str, count: int) -> None: ...
    def acked(self, stream: "AdsStream", type_url: str, latency_s: float) -> None: ...
    def nacked(self, stream: "AdsStream", nack: Nack) -> None: ...
    def state_changed(self, stream: "AdsStream") -> None: ...


class AdsStream:
    """Protocol state for one stream. `delta` selects the incremental variant."""

    def __init__(
        self,
        *,
        delta: bool,
        resolve_group: Callable[[Node], GroupSnapshot],
        observer: StreamObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.delta = delta
        self.node: Node | None = None
        self.snapshot: GroupSnapshot | None = None
        self.types: dict[str, TypeState] = {t: TypeState() for t in PUSH_ORDER}
        self.connected_at = time.time()
        self.closed = False
        self.peer: str | None = None  # the IP address the stream comes from (set by the server)
        self._resolve_group = resolve_group
        self._observer = observer or StreamObserver()
        self._clock = clock
        self._nonce = 0
        self.wake: Callable[[], None] = lambda: None

    # -- inputs ---------------------------------------------------------------------------------------

    def resources_changed(self, changed: Changed) -> None:
        now = self._clock()
        for type_url, names in changed.items():
            state = self.types[type_url]
            if state.requested:
                state.mark_dirty(names, now)
        secrets = self.types[SECRET]
        if HTTPS_LISTENER_NAME in changed.get(LISTENER, ()) and secrets.requested:
            secrets.mark_dirty(None, now)  # which groups serve HTTPS may have changed with it
        self.wake()

    def _withholds(self, type_url: str, name: str) -> bool:
        """A secret or the HTTPS listener, for a gateway whose group does not serve HTTPS."""
        return tls_only(type_url, name) and not serves_tls(
            self.snapshot.name, self.node.group, self.node.metadata, self.snapshot.stores[LISTENER].entries)

    def handle(self, request) -> None:
        """Apply one DiscoveryRequest / DeltaDiscoveryRequest."""
        if self.snapshot is None:
            self._attach(request)
        type_url = request.type_url
        state = self.types.get(type_url)
        if state is None:
            log.warning("unsupported type requested", extra={"type_url": type_url, "node": self.node_id})
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={
                "node": self.node_id, "type": SHORT_TYPE[type_url], "nonce": request.response_nonce,
                "names": len(request.resource_names_subscribe if self.delta else request.resource_names),
                "error": request.error_detail.message})
        if self.delta:
            self._handle_delta(state, type_url, request)
        else:
            self._handle_sotw(state, type_url, request)
        self._observer.state_changed(self)

    def _attach(self, request) -> None:
        node = request.node
        metadata = {}
        for key, value in node.metadata.fields.items():
            if value.WhichOneof("kind") == "string_value":
                metadata[key] = value.string_value
        self.node = Node(id=node.id or "unknown", group=node.cluster or "default", metadata=metadata)
        self.snapshot = self._resolve_group(self.node)
        self.snapshot.watchers.add(self)

    def stats_address(self) -> tuple[str, int] | None:
        """Where this gateway's stats are read: its stats port (node metadata) at its own address."""
        port = self.node.metadata.get(STATS_METADATA_KEY, "") if self.node is not None else ""
        if self.peer is None or not port.isdigit() or not 1 <= int(port) <= 65535:
            return None
        return self.peer, int(port)

    @property
    def serving(self) -> bool:
        """It has acknowledged a config, or came back holding one: a gateway, not a client that only listens."""
        return any(s.acked_version or s.known for s in self.types.values())

    @property
    def resuming(self) -> bool:
        """A Delta stream whose gateway already holds resources (it says which, with their versions)."""
        return self.delta and any(s.known for s in self.types.values())

    def close(self) -> None:
        self.closed = True
        if self.snapshot is not None:
            self.snapshot.watchers.discard(self)

    def _handle_sotw(self, state: TypeState, type_url: str, request) -> None:
        nonce = request.response_nonce
        if nonce and nonce != state.last_nonce:
            return  # stale: the client has not seen our latest response of this type yet
        now = self._clock()
        if state.inflight is not None and nonce == state.inflight.nonce:
            self._settle(state, type_url, request.version_info, request.error_detail, now)
        names = set(request.resource_names)
        wildcard = type_url in FULL_STATE_TYPES and (not names or "*" in names)
        first = not state.requested
        state.requested = True
        if wildcard != state.wildcard or names != state.subscribed or first:
            added = names - state.subscribed
            for gone in state.subscribed - names:
                state.known.pop(gone, None)
            state.wildcard, state.subscribed = wildcard, names
            if first and not nonce and request.version_info:
                self._resume(state, type_url, request.version_info)
            state.mark_dirty(None if (first or wildcard) else added, now)

    def _resume(self, state: TypeState, type_url: str, version: str) -> None:
        """A reconnecting gateway that already runs our current version needs nothing re-sent."""
        store = self.snapshot.stores[type_url]
        if version != store.version:
            return
        scope = store.entries if state.wildcard else (n for n in state.subscribed if n in store.entries)
        for name in scope:
            if not self._withholds(type_url, name):
                state.known[name] = store.entries[name].version
        state.acked_version = version
        state.answered = True

    def _handle_delta(self, state: TypeState, type_url: str, request) -> None:
        now = self._clock()
        first = not state.requested
        state.requested = True
        subscribe = set(request.resource_names_subscribe)
        if first:
            # An explicit "*" is a wildcard for any type; an empty first subscription only for LDS/CDS/SRDS.
            state.wildcard = "*" in subscribe or (type_url in FULL_STATE_TYPES and not subscribe)
            for name, version in request.initial_resource_versions.items():
                state.known[name] = version
            # A gateway that resumes with what it holds needs no first answer; only differences are sent.
            state.answered = bool(request.initial_resource_versions)
            state.mark_dirty(None, now)
        elif "*" in subscribe and not state.wildcard:
            state.wildcard = True
            state.mark_dirty(None, now)
        subscribe.discard("*")
        if "*" in request.resource_names_unsubscribe:
            state.wildcard = False
            # The client drops what it held only through the wildcard: a later subscription must resend it.
            for name in [n for n in state.known if n not in state.subscribed and n not in subscribe]:
                del state.known[name]
        new = subscribe - state.subscribed
        state.subscribed |= subscribe
        for name in request.resource_names_unsubscribe:
            state.subscribed.discard(name)
            state.known.pop(name, None)
            state.rejected.pop(name, None)
        if new:
            state.mark_dirty(new, now)
        nonce = request.response_nonce
        if nonce and state.inflight is not None and nonce == state.inflight.nonce:
            self._settle(state, type_url, state.inflight.type_version, request.error_detail, now)

    def _settle(self, state: TypeState, type_url: str, version: str, error_detail, now: float) -> None:
        inflight = state.inflight
        state.inflight = None
        if error_detail.message or error_detail.code:
            nack = Nack(type_url=type_url, version=inflight.type_version, message=error_detail.message, at=time.time())
            state.last_nack = nack
            for name, sent in inflight.versions.items():
                if sent is not None:
                    state.rejected[name] = sent
            state.rejected_type_version = inflight.type_version
            log.warning(
                "gateway rejected config",
                extra={"node": self.node_id, "type": SHORT_TYPE[type_url], "version": inflight.type_version,
                       "error": error_detail.message},
            )
            self._observer.nacked(self, nack)
            return
        for name, sent in inflight.versions.items():
            if sent is None:
                state.known.pop(name, None)
            else:
                state.known[name] = sent
            state.rejected.pop(name, None)
        state.acked_version = version
        state.last_nack = None
        self._observer.acked(self, type_url, now - inflight.dirty_since)

    # -- outputs --------------------------------------------------------------------------------------

    def responses(self) -> list:
        """Everything that may be sent now, in make-before-break order."""
        if self.snapshot is None:
            return []
        out = []
        now = self._clock()
        for index, type_url in enumerate(PUSH_ORDER):
            state = self.types[type_url]
            if not state.requested or state.inflight is not None or not state.is_dirty:
                continue
            if type_url in (LISTENER, SCOPED_ROUTE, ROUTE) and any(
                self.types[t].inflight is not None for t in PUSH_ORDER[:index]
            ):
                continue
            response = self._build(state, type_url, now)
            if response is not None:
                out.append(response)
        return out

    def _build(self, state: TypeState, type_url: str, now: float):
        store = self.snapshot.stores[type_url]
        if state.all_dirty:
            candidates = set(store.entries) | set(state.known) if state.wildcard else set(state.subscribed)
        else:
            candidates = {n for n in state.dirty if state.in_scope(n)}
        updates: list[Resource] = []
        removals: list[str] = []
        # SotW has no way to delete a route table or endpoints: Envoy drops them once nothing names them.
        implicit_removal = not self.delta and type_url not in FULL_STATE_TYPES
        for name in candidates:
            resource = store.entries.get(name)
            if resource is not None and self._withholds(type_url, name):
                resource = None
            if resource is None:
                if name in state.known:
                    if implicit_removal:
                        del state.known[name]
                    else:
                        removals.append(name)
            elif state.known.get(name) != resource.version and state.rejected.get(name) != resource.version:
                updates.append(resource)
        if type_url == ROUTE and not self._dependencies_ready(state, updates, now):
            return None
        deferred: list[str] = []
        if self.delta and removals and type_url in (CLUSTER, ENDPOINT, SECRET) and self._routes_unsettled():
            deferred, removals = removals, []
        if self.delta:
            updates, later = _first_bytes(updates, MAX_RESPONSE_BYTES)
            deferred += [r.name for r in later]
        dirty_since = state.dirty_since or now
        state.clear_dirty()
        if deferred:
            state.mark_dirty(deferred, dirty_since)
        if not updates and not removals and (state.answered or not state.wildcard):
            return None
        changed_clusters = [r.name for r in updates] if type_url == CLUSTER else []
        full_state = not self.delta and type_url in FULL_STATE_TYPES
        if full_state:
            if store.version == state.rejected_type_version:
                return None
            updates = [r for r in store.entries.values() if not self._withholds(type_url, r.name)]
            removals = [n for n in state.known if n not in store.entries or self._withholds(type_url, n)]
        self._nonce += 1
        nonce = str(self._nonce)
        versions: dict[str, str | None] = {r.name: r.version for r in updates}
        versions.update((n, None) for n in removals)
        state.inflight = InFlight(nonce, versions, store.version, now, dirty_since)
        state.last_nonce = nonce
        state.answered = True
        if changed_clusters:
            self._refresh_endpoints(changed_clusters, now)
        self._observer.sent(self, type_url, len(updates) + len(removals))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("response", extra={"node": self.node_id, "type": SHORT_TYPE[type_url], "nonce": nonce,
                                         "updates": len(updates), "removals": len(removals)})
        if self.delta:
            return discovery_pb2.DeltaDiscoveryResponse(
                type_url=type_url,
                nonce=nonce,
                system_version_info=store.version,
                resources=[
                    discovery_pb2.Resource(
                        name=r.name, version=r.version, resource=any_pb2.Any(type_url=type_url, value=r.body)
                    )
                    for r in updates
                ],
                removed_resources=removals,
            )
        return discovery_pb2.DiscoveryResponse(
            type_url=type_url,
            nonce=nonce,
            version_info=store.version,
            resources=[any_pb2.Any(type_url=type_url, value=r.body) for r in updates],
        )

    def _refresh_endpoints(self, clusters: list[str], now: float) -> None:
        """A new or changed cluster warms only when its endpoints arrive: send them again."""
        eds = self.types[ENDPOINT]
        for name in clusters:
            eds.known.pop(name, None)
            eds.rejected.pop(name, None)
            if eds.inflight is not None:
                eds.inflight.versions.pop(name, None)  # its ACK must not count for the new cluster
        if clusters and eds.requested:
            eds.mark_dirty(clusters, now)

    def _routes_unsettled(self) -> bool:
        """Make before break, for removals: a gateway may hold route tables that still name a cluster this
        stream is about to remove (one that reconnects after ferry restarted holds the last ferry's): clusters
        and endpoints go only once its listener, scopes and route tables are this stream's and ACKed."""
        return any(s.requested and (s.is_dirty or s.inflight is not None)
                   for t, s in self.types.items() if t in (LISTENER, SCOPED_ROUTE, ROUTE))

    def _dependencies_ready(self, state: TypeState, updates: list[Resource], now: float) -> bool:
        clusters, endpoints = self.types[CLUSTER].known, self.types[ENDPOINT].known
        missing = [
            dep
            for resource in updates
            for dep in resource.refs
            if dep not in clusters or dep not in endpoints
        ]
        if not missing:
            state.waiting_since = None
            return True
        if state.waiting_since is None:
            state.waiting_since = now
        if now - state.waiting_since >= DEPENDENCY_WAIT_S:
            log.warning(
                "sending routes before their clusters were acknowledged",
                extra={"node": self.node_id, "missing": missing[:5], "waited_s": DEPENDENCY_WAIT_S},
            )
            state.waiting_since = None
            return True
        return False

    # -- status ---------------------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.node.id if self.node else "unknown"

    def in_sync(self) -> bool:
        """Nothing in flight, nothing left to send, no rejected config outstanding."""
        return all(
            s.inflight is None and not s.is_dirty and s.last_nack is None
            for s in self.types.values()
            if s.requested
        )

    def waiting_on_dependencies(self) -> bool:
        return self.types[ROUTE].waiting_since is not None

    def status(self) -> dict:
        return {
            "node": self.node_id,
            "group": self.node.group if self.node else None,
            "protocol": "delta" if self.delta else "sotw",
            "connected": not self.closed,
            "connected_at": self.connected_at,
            "in_sync": self.in_sync(),
            "stats": _host_port(*address) if (address := self.stats_address()) else None,  # where ferry reads them
            "acked": {SHORT_TYPE[t]: s.acked_version for t, s in self.types.items() if s.requested},
            "last_nack": (
                {"type": SHORT_TYPE[n.type_url], "version": n.version, "message": n.message, "at": n.at}
                if (n := self._latest_nack())
                else None
            ),
        }

    def _latest_nack(self) -> Nack | None:
        nacks = [s.last_nack for s in self.types.values() if s.last_nack]
        return max(nacks, key=lambda n: n.at) if nacks else None


def _first_bytes(resources: list[Resource], limit: int) -> tuple[list[Resource], list[Resource]]:
    """The first resources whose bodies fit in `limit` bytes (at least one), and the rest."""
    total = 0
    for index, resource in enumerate(resources):
        total += len(resource.body) + len(resource.name)
        if total > limit and index > 0:
            return resources[:index], resources[index:]
    return resources, []


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
