"""resolve_traffic: Knative's traffic block turned into splits and tag routes."""

from __future__ import annotations

from ferry.routing import (
    ResolvedTraffic,
    ServiceSpec,
    Split,
    Template,
    TrafficTarget,
    Unresolved,
    resolve_traffic,
)


def service(*targets: TrafficTarget) -> ServiceSpec:
    return ServiceSpec(template=Template(command=["app"]), traffic=targets or None)


def test_no_traffic_block_sends_everything_to_the_latest_ready() -> None:
    assert resolve_traffic(service(), "hello-00002") == ResolvedTraffic((Split("hello-00002", 100),), ())


def test_no_traffic_block_and_nothing_ready() -> None:
    result = resolve_traffic(service(), None)
    assert isinstance(result, Unresolved) and "no revision is ready" in result.reason


def test_ninety_ten_with_a_canary_tag() -> None:
    spec = service(
        TrafficTarget(revision="hello-00001", percent=90),
        TrafficTarget(latestRevision=True, percent=10, tag="canary"),
    )
    result = resolve_traffic(spec, "hello-00002")
    assert result == ResolvedTraffic(
        main=(Split("hello-00001", 90), Split("hello-00002", 10)),
        tags=(("canary", "hello-00002"),),
    )
    assert result.revisions() == {"hello-00001", "hello-00002"}


def test_targets_on_the_same_revision_merge_in_first_appearance_order() -> None:
    spec = service(
        TrafficTarget(latestRevision=True, percent=30, tag="current"),
        TrafficTarget(revision="hello-00001", percent=50),
        TrafficTarget(revision="hello-00003", percent=20, tag="pinned"),
    )
    result = resolve_traffic(spec, "hello-00003")
    assert result == ResolvedTraffic(
        main=(Split("hello-00003", 50), Split("hello-00001", 50)),
        tags=(("current", "hello-00003"), ("pinned", "hello-00003")),
    )


def test_zero_percent_targets_get_no_split_but_keep_their_tag() -> None:
    spec = service(
        TrafficTarget(revision="hello-00002", percent=100),
        TrafficTarget(revision="hello-00001", tag="old"),
    )
    result = resolve_traffic(spec, None)  # pinned revisions need no "latest ready"
    assert result == ResolvedTraffic((Split("hello-00002", 100),), (("old", "hello-00001"),))
    assert result.revisions() == {"hello-00001", "hello-00002"}


def test_latest_revision_target_without_a_ready_revision_is_unresolved() -> None:
    spec = service(
        TrafficTarget(revision="hello-00001", percent=90),
        TrafficTarget(latestRevision=True, percent=10),
    )
    result = resolve_traffic(spec, None)
    assert isinstance(result, Unresolved) and "latestRevision" in result.reason
