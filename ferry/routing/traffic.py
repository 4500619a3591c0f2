"""Which revisions get what share of a service's requests, from its traffic block and "latest ready"."""

from __future__ import annotations

from dataclasses import dataclass

from .schema import ServiceSpec


@dataclass(frozen=True)
class Split:
    revision: str
    percent: int


@dataclass(frozen=True)
class ResolvedTraffic:
    main: tuple[Split, ...]  # the service's hosts: percent > 0 only, one split per revision, in file order
    tags: tuple[tuple[str, str], ...]  # (tag, revision), in file order: <tag>-<service>.<domain> -> 100% revision

    def revisions(self) -> frozenset[str]:
        """Every revision that receives traffic or a tag: these must keep running."""
        return frozenset(s.revision for s in self.main) | {revision for _, revision in self.tags}


@dataclass(frozen=True)
class Unresolved:
    reason: str  # why the service cannot route yet, e.g. no revision is ready


def resolve_traffic(spec: ServiceSpec, latest_ready: str | None) -> ResolvedTraffic | Unresolved:
    """Pure. latestRevision (and a missing traffic block) means the latest *ready* revision, as in Knative:
    a new revision takes traffic only once it is ready."""
    if spec.traffic is None:
        if latest_ready is None:
            return Unresolved("no revision is ready yet")
        return ResolvedTraffic((Split(latest_ready, 100),), ())
    percents: dict[str, int] = {}  # insertion order = first appearance
    tags: list[tuple[str, str]] = []
    for target in spec.traffic:
        revision = latest_ready if target.latestRevision else target.revision
        if revision is None:
            return Unresolved("latestRevision: true, but no revision is ready yet")
        if target.percent:
            percents[revision] = percents.get(revision, 0) + target.percent
        if target.tag is not None:
            tags.append((target.tag, revision))
    return ResolvedTraffic(tuple(Split(r, p) for r, p in percents.items()), tuple(tags))


def blend(old: ResolvedTraffic, new: ResolvedTraffic, weight: int, extra_tags: tuple[tuple[str, str], ...] = ()) -> ResolvedTraffic:
    """Pure. A rollout `weight` percent of the way from `old` to `new`: each revision gets
    (100 - weight)% of its old share plus weight% of its new one, in whole percents that sum to 100
    (largest remainder). Tags follow `new` (a tag on latestRevision means the candidate), plus `extra_tags`
    (a blue-green preview)."""
    shares: dict[str, float] = {}
    for splits, part in ((old.main, 100 - weight), (new.main, weight)):
        for split in splits:
            shares[split.revision] = shares.get(split.revision, 0.0) + split.percent * part / 100
    floors = {revision: int(share) for revision, share in shares.items()}
    short = 100 - sum(floors.values())
    by_remainder = sorted(shares, key=lambda r: shares[r] - floors[r], reverse=True)
    for revision in by_remainder[:short]:
        floors[revision] += 1
    main = tuple(Split(revision, percent) for revision, percent in floors.items() if percent > 0)
    tags = tuple(dict.fromkeys((*new.tags, *extra_tags)))
    return ResolvedTraffic(main, tags)
