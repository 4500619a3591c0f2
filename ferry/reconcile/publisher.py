"""Staging what gateways should serve, and publishing it to the snapshot cache in one step.

`Publisher` collects puts and deletions and hands them to the cache together, which checks that no
resource is left naming one that is missing (xds/cache.py) before any gateway is told. It remembers what
it published, so that after taking over a cache another leader filled, what only that leader published can
be dropped. `RouteTables` keeps, per service, its route table and the host scopes that select it.
"""

from __future__ import annotations

import logging

from ..xds import resources as xds
from ..xds.cache import SnapshotCache
from ..xds.types import Resource

log = logging.getLogger("ferry.reconcile")


class Publisher:
    def __init__(self, cache: SnapshotCache):
        self.cache = cache
        self._pending: dict[str, dict[str, Resource | None]] = {t: {} for t in xds.PUSH_ORDER}
        # What the cache's default group held before this publisher (another leader's, mirrored), less what this
        # one put or deleted since: empty unless a follower took over. (Not a set of every name this publisher
        # put: that duplicated the cache's keys, ~4 MiB at 10,000 services.)
        stores = cache.group(SnapshotCache.DEFAULT).stores
        self._inherited: dict[str, set[str]] = {
            t: set(stores[t].entries) if t != xds.LISTENER else set() for t in xds.PUSH_ORDER}

    def put(self, type_url: str, resource: Resource) -> None:
        self._pending[type_url][resource.name] = resource
        self._inherited[type_url].discard(resource.name)

    def delete(self, type_url: str, name: str) -> None:
        self._pending[type_url][name] = None
        self._inherited[type_url].discard(name)

    def publish(self) -> None:
        """Everything staged, to every group at once (InconsistentChanges: nothing was, and it is dropped)."""
        changes = {t: entries for t, entries in self._pending.items() if entries}
        if not changes:
            return
        self._pending = {t: {} for t in xds.PUSH_ORDER}
        self.cache.update(changes)

    def stage_inherited_deletions(self) -> int:
        """Stage the deletion of what the cache's default group holds and this publisher never put (listeners
        excepted: each group's is its own, see xds/groups.py). Returns how many."""
        stores = self.cache.group(SnapshotCache.DEFAULT).stores
        count = 0
        for type_url, names in self._inherited.items():  # (listeners are never in it)
            for name in names & stores[type_url].entries.keys():
                self._pending[type_url][name] = None
                count += 1
            names.clear()
        return count


class RouteTables:
    """Per service, one route table and a host scope per host (SRDS), so that a change to one service is one
    small RDS push at any number of services. A host may move from one service to another in one edit."""

    # never from a client: the activator's key (gateways add it on the hop to the activator only, see xds.cluster)
    # and the listener's mark (for routing only)
    ALWAYS_STRIPPED = (xds.ACTIVATOR_KEY_HEADER, xds.LISTENER_HEADER)

    def __init__(self, publisher: Publisher):
        self._publisher = publisher
        # tag headers too, unless the gateway routes on them (tagHeader)
        self.strip_headers: tuple[str, ...] = (*self.ALWAYS_STRIPPED, *xds.TAG_HEADERS)
        self.https_redirect: xds.HttpsRedirect | None = None  # gateway.tls.redirect
        self._tables: set[str] = set()
        self._scopes: dict[str, set[str]] = {}  # service -> hosts scoped to its route table
        self._scope_owner: dict[str, str] = {}  # host -> the service its scope points at
        self._scope_refs: dict[str, frozenset[str]] = {}  # service -> what its scopes refer to: its route table

    def put(self, service: str, routes: tuple[xds.HostRoute, ...]) -> None:
        """The service's route table, and a host scope for each of its hosts."""
        self._publisher.put(xds.ROUTE, xds.route_table(service, routes, remove=self.strip_headers,
                                                        https_redirect=self.https_redirect))
        self._tables.add(service)
        hosts = {host for r in routes for host in r.domains}
        self._release(service, self._scopes.get(service, set()) - hosts)
        added = hosts - self._scopes.get(service, set())
        if added:
            # the service's scopes share one set of references (a set of one is 216 bytes; 2-3 scopes a service)
            refs = self._scope_refs.setdefault(service, frozenset((service,)))
            for host in added:
                self._scope_owner[host] = service
                self._publisher.put(xds.SCOPED_ROUTE, xds.host_scope(host, service, refs))
        self._scopes[service] = hosts

    def remove(self, service: str) -> None:
        self._release(service, self._scopes.pop(service, set()))
        self._scope_refs.pop(service, None)
        if service in self._tables:
            self._tables.discard(service)
            self._publisher.delete(xds.ROUTE, service)

    def _release(self, service: str, hosts: set[str]) -> None:
        """Delete the scopes of hosts the service no longer has, unless another service took them over in
        this same change (services are processed in file order, so the taker may have come first)."""
        for host in hosts:
            if self._scope_owner.get(host) == service:
                del self._scope_owner[host]
                self._publisher.delete(xds.SCOPED_ROUTE, host)
