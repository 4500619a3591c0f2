"""The snapshot cache: what each group of gateways should run, and who to tell when it changes.

Like go-control-plane's cache layer, it knows nothing of gRPC or of ferry's routing model, and it checks a
snapshot's consistency before anyone is served from it (here: every update, and the references too, which
go-control-plane leaves to its users). Unlike it, changes are applied per resource (a one-service change
touches one entry, not a rebuilt snapshot), versions derive from content (a restarted ferry offers the
same versions for the same config), and watchers learn exactly which names changed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

from . import groups
from .types import PUSH_ORDER, REFERS_TO, SHORT_TYPE, Changes, Resource

# type_url -> names that changed
Changed = Mapping[str, frozenset[str]]


class InconsistentChanges(ValueError):
    """An update would leave a resource naming one that is not there: nothing of it was applied."""


class TooManyGroups(RuntimeError):
    """A gateway asked for a group beyond the cache's limit (each group holds a copy of every resource)."""


MAX_GROUPS = 64


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
        """False if it holds the same already."""
        old = self.entries.get(resource.name)
        if old is not None and old.version == resource.version and old.refs == resource.refs:
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

    def copy(self) -> TypeStore:
        clone = TypeStore()
        clone.entries = dict(self.entries)
        clone._fold = self._fold
        return clone


class Watcher(Protocol):
    def resources_changed(self, changed: Changed) -> None: ...


class GroupSnapshot:
    """The resources served to one group of gateways (Envoy's node.cluster), and who refers to whom."""

    def __init__(self, name: str, source: GroupSnapshot | None = None):
        self.name = name
        self.stores: dict[str, TypeStore] = {
            t: (source.stores[t].copy() if source else TypeStore()) for t in PUSH_ORDER}
        # target type -> name -> how many resources refer to it
        self.referrers: dict[str, Counter[str]] = {
            t: (Counter(source.referrers[t]) if source else Counter()) for t in REFERS_TO.values()}
        self.watchers: set[Watcher] = set()

    def problems(self, changes: Changes) -> list[str]:
        """What `changes` would leave dangling: a resource naming one that is missing, or a deletion of one that
        something still names."""
        out = []
        for referring, target in REFERS_TO.items():
            puts = changes.get(referring, {})
            target_changes = changes.get(target, {})
            stored = self.stores[target].entries

            def exists(name: str) -> bool:
                return target_changes[name] is not None if name in target_changes else name in stored

            for name, resource in puts.items():
                if resource is not None:
                    missing = sorted(r for r in resource.refs if not exists(r))
                    if missing:
                        out.append(f"{SHORT_TYPE[referring]} {name} names {SHORT_TYPE[target]} {', '.join(missing)}, "
                                   "which would not exist")
            deleted = [n for n, r in target_changes.items() if r is None and n in stored]
            if not deleted:
                continue
            after = Counter({n: self.referrers[target][n] for n in deleted})
            old_entries = self.stores[referring].entries
            for name, resource in puts.items():
                if (old := old_entries.get(name)) is not None:
                    after.subtract(old.refs & after.keys())
                if resource is not None:
                    after.update(resource.refs & after.keys())
            out += [f"{SHORT_TYPE[target]} {n} would be deleted while {count} {SHORT_TYPE[referring]} resource(s) "
                    "still name it" for n, count in after.items() if count > 0]
        return out

    def apply(self, changes: Changes) -> dict[str, frozenset[str]]:
        changed: dict[str, frozenset[str]] = {}
        for type_url, entries in changes.items():
            store = self.stores[type_url]
            counts = self.referrers.get(REFERS_TO.get(type_url, ""))
            names = set()
            for name, resource in entries.items():
                old = store.entries.get(name)
                if not (store.delete(name) if resource is None else store.put(resource)):
                    continue
                names.add(name)
                if counts is not None:
                    if old is not None:
                        for ref in old.refs:
                            counts[ref] -= 1
                            if counts[ref] <= 0:
                                del counts[ref]
                    if resource is not None:
                        counts.update(resource.refs)
            if names:
                changed[type_url] = frozenset(names)
        return changed

    def versions(self) -> dict[str, str]:
        return {t: s.version for t, s in self.stores.items()}


class SnapshotCache:
    """Per-group snapshots, keyed by `groups.snapshot_key`. A group appears when its first gateway connects: a
    copy of the `default` group, specialised by its key (groups.specialise)."""

    DEFAULT = "default"

    def __init__(self, max_groups: int = MAX_GROUPS) -> None:
        self._groups: dict[str, GroupSnapshot] = {self.DEFAULT: GroupSnapshot(self.DEFAULT)}
        self.max_groups = max_groups

    def groups(self) -> Iterable[GroupSnapshot]:
        return self._groups.values()

    def group(self, key: str) -> GroupSnapshot:
        snapshot = self._groups.get(key)
        if snapshot is None:
            if len(self._groups) >= self.max_groups:
                raise TooManyGroups(f"{len(self._groups)} gateway groups exist, the most allowed: group {key!r} "
                                    "refused (groups are node.cluster values, and listen addresses)")
            default = self._groups[self.DEFAULT]
            snapshot = self._groups[key] = GroupSnapshot(key, default)
            snapshot.apply(groups.specialise(key, {t: s.entries for t, s in default.stores.items()}))
        return snapshot

    def forget(self, key: str) -> None:
        """Drop group `key` if no gateway watches it (never the default group, the one every change goes to)."""
        snapshot = self._groups.get(key)
        if key != self.DEFAULT and snapshot is not None and not snapshot.watchers:
            del self._groups[key]

    def group_of(self, group: str, metadata: Mapping[str, str]) -> GroupSnapshot:
        """The snapshot a gateway of node.cluster `group` with node `metadata` is served from."""
        return self.group(groups.snapshot_key(group, metadata))

    def update(self, changes: Changes, keys: Iterable[str] | None = None, *, check: bool = True) -> None:
        """Apply changes atomically to the named groups (default: all) and notify their watchers.

        InconsistentChanges, and nothing applied, if a group would be left with a dangling reference. A mirror
        of another control plane (which checked its own) passes check=False: it takes a type at a time."""
        targets = list(self._groups.values() if keys is None else [self.group(k) for k in keys])
        specialised = [(snapshot, groups.specialise(snapshot.name, changes)) for snapshot in targets]
        if check:
            for snapshot, group_changes in specialised:
                problems = snapshot.problems(group_changes)
                if problems:
                    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
                    raise InconsistentChanges(f"group {snapshot.name}: {'; '.join(problems[:5])}{more}")
        for snapshot, group_changes in specialised:
            changed = snapshot.apply(group_changes)
            if changed:
                for watcher in list(snapshot.watchers):
                    watcher.resources_changed(changed)
