"""The snapshot cache: what each group of gateways should run, and who to tell when it changes.

Like go-control-plane's cache layer, it knows nothing of gRPC or of ferry's routing model. Unlike it,
changes are applied per resource (a one-service change touches one entry, not a rebuilt snapshot),
versions derive from content (a restarted ferry offers the same versions for the same config), and
watchers learn exactly which names changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol

from .resources import PUSH_ORDER


def content_version(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    body: bytes  # the serialized message
    version: str

    @classmethod
    def of(cls, name: str, body: bytes) -> "Resource":
        return cls(name, body, content_version(body))


def _fingerprint(resource: Resource) -> int:
    digest = hashlib.blake2b(f"{resource.name}\0{resource.version}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class TypeStore:
    """All resources of one type for one group, with an O(1)-maintained content version of the set."""

    __slots__ = ("entries", "_fold")

    def __init__(self, entries: Mapping[str, Resource] | None = None):
        self.entries: dict[str, Resource] = dict(entries or {})
        self._fold = 0
        for resource in self.entries.values():
            self._fold ^= _fingerprint(resource)

    @property
    def version(self) -> str:
        return f"{self._fold:016x}"

    def put(self, resource: Resource) -> bool:
        old = self.entries.get(resource.name)
        if old is not None and old.version == resource.version:
            return False
        if old is not None:
            self._fold ^= _fingerprint(old)
        self.entries[resource.name] = resource
        self._fold ^= _fingerprint(resource)
        return True

    def delete(self, name: str) -> bool:
        old = self.entries.pop(name, None)
        if old is None:
            return False
        self._fold ^= _fingerprint(old)
        return True

    def copy(self) -> "TypeStore":
        clone = TypeStore()
        clone.entries = dict(self.entries)
        clone._fold = self._fold
        return clone


# type_url -> {name: Resource to put, or None to delete}
Changes = Mapping[str, Mapping[str, Resource | None]]
# type_url -> names that changed
Changed = Mapping[str, frozenset[str]]


class Watcher(Protocol):
    def resources_changed(self, changed: Changed) -> None: ...


class GroupSnapshot:
    """The resources served to one group of gateways (Envoy's node.cluster)."""

    def __init__(self, name: str, stores: Mapping[str, TypeStore] | None = None):
        self.name = name
        self.stores: dict[str, TypeStore] = {t: (stores[t].copy() if stores else TypeStore()) for t in PUSH_ORDER}
        self.watchers: set[Watcher] = set()

    def apply(self, changes: Changes) -> dict[str, frozenset[str]]:
        changed: dict[str, frozenset[str]] = {}
        for type_url, entries in changes.items():
            store = self.stores[type_url]
            names = set()
            for name, resource in entries.items():
                if resource is None:
                    if store.delete(name):
                        names.add(name)
                elif store.put(resource):
                    names.add(name)
            if names:
                changed[type_url] = frozenset(names)
        return changed

    def versions(self) -> dict[str, str]:
        return {t: s.version for t, s in self.stores.items()}


class SnapshotCache:
    """Per-group snapshots. Groups appear when a gateway of a new node.cluster connects: they start as a
    copy of the `default` group, then `on_new_group` may specialise them (e.g. the listener address)."""

    DEFAULT = "default"

    def __init__(self, on_new_group: Callable[[str, Mapping[str, str]], Changes] | None = None):
        self._groups: dict[str, GroupSnapshot] = {self.DEFAULT: GroupSnapshot(self.DEFAULT)}
        self.on_new_group = on_new_group  # settable: its owner may be built after the cache

    def groups(self) -> Iterable[GroupSnapshot]:
        return self._groups.values()

    def group(self, name: str, metadata: Mapping[str, str] | None = None) -> GroupSnapshot:
        snapshot = self._groups.get(name)
        if snapshot is None:
            snapshot = GroupSnapshot(name, self._groups[self.DEFAULT].stores)
            self._groups[name] = snapshot
            if self.on_new_group is not None:
                snapshot.apply(self.on_new_group(name, metadata or {}))
        return snapshot

    def update(self, changes: Changes, groups: Iterable[str] | None = None) -> None:
        """Apply changes atomically to the named groups (default: all) and notify their watchers."""
        targets = self._groups.values() if groups is None else [self.group(g) for g in groups]
        for snapshot in list(targets):
            changed = snapshot.apply(changes)
            if changed:
                for watcher in list(snapshot.watchers):
                    watcher.resources_changed(changed)
