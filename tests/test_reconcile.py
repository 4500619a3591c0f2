"""The reconciler's rules, in-process: a real controller with a fake backend, fake gateways and an in-memory
snapshot cache (tests/reconcile_fakes.py). No Envoy, no sockets; each test breaks when its rule does."""

from __future__ import annotations

import pytest

from ferry.autoscaler.scaler import Load
from ferry.routing.errors import ConfigError
from ferry.xds import resources as xds
from ferry.xds.cache import InconsistentChanges, SnapshotCache

from .reconcile_fakes import World, app, fixed


@pytest.fixture
async def world(tmp_path):
    w = World(tmp_path)
    await w.controller.start()
    yield w
    await w.close()


async def serving(world: World) -> None:
    """hello-00001 (a managed revision) ready and served."""
    await world.apply(f"hello: {{template: {app('v1')}}}")
    world.backend.ready("hello-00001", 9001)
    await world.settle()


# -- a route moves only when every revision it names is ready --------------------------------------------------


async def test_a_new_service_is_served_only_once_its_revision_is_ready(world: World):
    await world.apply(f"hello: {{template: {app()}}}")
    assert world.backend.scaled == {"hello-00001": 1}
    assert world.served("hello.test") == {}
    assert world.controller.status()["services"]["hello"]["waiting"] == "no revision is ready yet"

    world.backend.ready("hello-00001", 9001)
    await world.settle()
    assert world.served("hello.test") == {"hello-00001": 100}
    assert world.activator.revisions["hello-00001"] == (("127.0.0.1", 9001),)  # in the path: burst capacity
    assert world.store.latest_ready("hello") == "hello-00001"  # persisted with the publish


async def test_endpoints_given_in_the_file_are_served_at_once(world: World):
    await world.apply(f"hello: {{template: {fixed(9001)}}}")
    assert world.served("hello.test") == {"hello-00001": 100}
    assert world.backend.scaled == {}  # ferry runs nothing for it


async def test_a_new_template_takes_traffic_only_when_ready(world: World):
    await serving(world)
    await world.apply(f"hello: {{template: {app('v2')}}}")
    assert world.backend.scaled["hello-00002"] == 1
    assert world.served("hello.test") == {"hello-00001": 100}  # the old route keeps serving

    world.backend.ready("hello-00002", 9002)
    await world.settle()
    assert world.served("hello.test") == {"hello-00002": 100}


async def test_a_split_waits_for_every_revision_it_names(world: World):
    await serving(world)
    await world.apply(f"""
        hello:
          template: {app('v2')}
          traffic: [{{revision: hello-00001, percent: 50}}, {{latestRevision: true, percent: 50}}]
    """)
    # latestRevision is hello-00001 until hello-00002 is ready: the split resolves to it alone.
    assert world.served("hello.test") == {"hello-00001": 100}
    await world.apply(f"""
        hello:
          template: {app('v2')}
          traffic: [{{revision: hello-00001, percent: 50}}, {{revision: hello-00002, percent: 50}}]
    """)
    assert world.served("hello.test") == {"hello-00001": 100}
    assert "hello-00002" in world.controller.status()["services"]["hello"]["waiting"]

    world.backend.ready("hello-00002", 9002)
    await world.settle()
    assert world.served("hello.test") == {"hello-00001": 50, "hello-00002": 50}


async def test_the_revision_gateways_still_route_to_keeps_running_while_the_next_one_starts(world: World):
    await serving(world)
    await world.apply(f"""
        hello:
          template: {app('v2')}
          traffic: [{{revision: hello-00002, percent: 100}}]
    """)
    await world.settle()
    assert world.backend.stopped == []
    assert world.served("hello.test") == {"hello-00001": 100}
    world.backend.ready("hello-00002", 9002)
    await world.settle()
    assert world.backend.stopped == ["hello-00001"]


async def test_a_revision_brought_back_from_retirement_waits_for_new_instances(world: World):
    await world.apply(f"hello: {{template: {app('v1')}}}")
    world.backend.ready("hello-00001", 9001)
    await world.apply(f"hello: {{template: {app('v2')}}}")
    world.backend.ready("hello-00002", 9002)
    await world.settle()
    assert world.backend.stopped == ["hello-00001"]  # retired, its cluster lingering (0 s here) is gone
    await world.apply(f"""
        hello:
          template: {app('v2')}
          traffic: [{{revision: hello-00001, percent: 100}}]
    """)
    assert world.served("hello.test") == {"hello-00002": 100}
    world.backend.ready("hello-00001", 9003)
    await world.settle()
    assert world.served("hello.test") == {"hello-00001": 100}


# -- a revision is stopped only after every gateway acknowledged the route without it --------------------------


async def test_a_retired_revision_stops_only_after_the_gateways_acknowledge(world: World):
    await serving(world)
    world.gateways.acked.clear()  # the gateway has not acknowledged anything yet
    await world.apply(f"hello: {{template: {app('v2')}}}")
    world.backend.ready("hello-00002", 9002)
    await world.settle()
    assert world.served("hello.test") == {"hello-00002": 100}
    assert world.backend.stopped == []
    assert xds.cluster_name("hello", "hello-00001") in world.entries(xds.CLUSTER)

    world.gateways.acked.set()
    await world.settle()
    assert world.backend.stopped == ["hello-00001"]
    assert xds.cluster_name("hello", "hello-00001") not in world.entries(xds.CLUSTER)  # after the linger
    assert "hello-00001" not in world.activator.revisions


async def test_a_revision_wanted_again_before_it_stopped_is_not_stopped(world: World):
    await serving(world)
    world.gateways.acked.clear()
    await world.apply(f"""
        hello:
          template: {app('v1')}
          traffic: [{{revision: hello-00001, percent: 100, tag: old}}]
    """)
    await world.apply(f"hello: {{template: {fixed(9100)}}}")  # hello-00002: hello-00001 retires
    await world.settle()
    await world.apply(f"""
        hello:
          template: {fixed(9100)}
          traffic: [{{revision: hello-00002, percent: 100}}, {{revision: hello-00001, percent: 0, tag: old}}]
    """)
    world.gateways.acked.set()
    await world.settle()
    assert world.backend.stopped == []
    assert world.served("old-hello.test") == {"hello-00001": 100}
    assert world.controller.status()["revisions"]["hello-00001"]["state"] == "ready"


async def test_a_removed_service_goes_whole(world: World):
    await world.apply(f"""
        hello: {{template: {fixed(9001)}}}
        other: {{template: {fixed(9002)}}}
    """)
    await world.apply(f"other: {{template: {fixed(9002)}}}")
    await world.settle()
    assert world.served("hello.test") == {}
    assert "hello" not in world.entries(xds.ROUTE)
    assert xds.cluster_name("hello", "hello-00001") not in world.entries(xds.CLUSTER)
    assert world.served("other.test") == {"other-00001": 100}


# -- hosts ----------------------------------------------------------------------------------------------------------


async def test_a_host_moves_between_services_in_one_edit(world: World):
    await world.apply(f"""
        a: {{hosts: [shared.example], template: {fixed(9001)}}}
        b: {{template: {fixed(9002)}}}
    """)
    assert world.served("shared.example") == {"a-00001": 100}
    published = []
    world.cache.group(SnapshotCache.DEFAULT).watchers.add(type("W", (), {"resources_changed": published.append})())
    await world.apply(f"""
        a: {{template: {fixed(9001)}}}
        b: {{hosts: [shared.example], template: {fixed(9002)}}}
    """)
    assert world.served("shared.example") == {"b-00001": 100}
    assert len(published) == 1  # one publish: the host is never unserved in between


async def test_a_host_moves_to_a_service_earlier_in_the_file(world: World):
    await world.apply(f"""
        a: {{template: {fixed(9001)}}}
        b: {{hosts: [shared.example], template: {fixed(9002)}}}
    """)
    await world.apply(f"""
        a: {{hosts: [shared.example], template: {fixed(9001)}}}
        b: {{template: {fixed(9002)}}}
    """)
    assert world.served("shared.example") == {"a-00001": 100}
    assert world.served("b.test") == {"b-00001": 100}


async def test_a_tag_gets_its_own_host_and_a_zero_percent_tag_no_main_traffic(world: World):
    await world.apply(f"hello: {{template: {fixed(9001)}}}")
    await world.apply(f"""
        hello:
          template: {fixed(9002)}
          traffic: [{{revision: hello-00001, percent: 100}}, {{revision: hello-00002, percent: 0, tag: next}}]
    """)
    assert world.served("hello.test") == {"hello-00001": 100}
    assert world.served("next-hello.test") == {"hello-00002": 100}


async def test_an_edit_of_one_service_touches_only_its_resources(world: World):
    await world.apply(f"""
        a: {{template: {fixed(9001)}}}
        b: {{template: {fixed(9002)}}}
    """)
    changed = []
    world.cache.group(SnapshotCache.DEFAULT).watchers.add(type("W", (), {"resources_changed": changed.append})())
    await world.apply(f"""
        a: {{template: {fixed(9001)}}}
        b: {{template: {fixed(9003)}}}
    """)
    names = {name for change in changed for names in change.values() for name in names}
    assert names and all(name.startswith("b") for name in names), names


async def test_a_new_gateway_address_reaches_every_group_but_one_with_its_own(world: World):
    await world.apply(f"hello: {{template: {fixed(9001)}}}")
    own = world.cache.group_of("edge", {"ferry.listen": "127.0.0.1:7070"})
    world.path.write_text(world.path.read_text().replace("127.0.0.1:8080", "127.0.0.1:8181"))
    await world.source.apply()
    assert world.entries(xds.LISTENER)[xds.LISTENER_NAME] == xds.listener("127.0.0.1", 8181)
    assert own.stores[xds.LISTENER].entries[xds.LISTENER_NAME] == xds.listener("127.0.0.1", 7070)


# -- scale to zero and the activator --------------------------------------------------------------------------


async def test_a_revision_at_zero_is_served_through_the_activator(world: World):
    await world.apply(f"hello: {{template: {app(scale='{initial: 0}')}}}")
    assert world.backend.scaled == {"hello-00001": 0}
    assert world.served("hello.test") == {"hello-00001": 100}  # Knative: ready at zero
    assert world.eds("hello", "hello-00001") == [world.activator.port]


async def test_ready_instances_take_the_activator_out_of_the_path_when_no_burst_capacity_is_kept(world: World):
    await world.apply(f"hello: {{template: {app(scale='{burstCapacity: 0}')}}}")
    assert world.eds("hello", "hello-00001") == [world.activator.port]  # no instance yet
    world.backend.ready("hello-00001", 9001)
    await world.settle()
    assert world.eds("hello", "hello-00001") == [9001]
    assert world.activator.revisions["hello-00001"] == (("127.0.0.1", 9001),)


@pytest.mark.parametrize("burst", ["211", "-1"])
async def test_without_a_concurrency_limit_a_short_burst_capacity_leaves_the_activator_out(world: World, burst: str):
    # Knative would keep its activator in the path here (the KPA's word below), only to proxy: ferry lets
    # Envoy balance the ready instances itself.
    await world.apply(f"hello: {{template: {app(scale=f'{{burstCapacity: {burst}}}')}}}")
    world.backend.ready("hello-00001", 9001)
    world.controller.autoscaler.observe(world.controller.autoscaler.clock(), {"hello-00001": Load(5.0, 5.0)})
    await world.controller.autoscaler.tick_once()
    assert world.controller.autoscaler.decisions["hello-00001"][1].activator_in_path is True  # the KPA's word
    assert world.eds("hello", "hello-00001") == [9001]


async def test_scaling_to_zero_puts_the_activator_back_before_the_instances_go(world: World):
    scaler = world.controller.autoscaler
    now = [1000.0]
    scaler.clock = lambda: now[0]
    await world.apply(f"hello: {{template: {app(scale='{initial: 1, zeroGracePeriod: 0s, stableWindow: 6s}')}}}")
    world.backend.ready("hello-00001", 9001)
    await world.settle()
    assert world.eds("hello", "hello-00001") == [9001]
    for _ in range(20):  # idle: deactivated after a stable window, then asked to scale to zero
        now[0] += 1.0
        scaler.observe(now[0], {})
        await scaler.tick_once()
        if world.backend.scaled.get("hello-00001") == 0:
            break
    assert world.backend.scaled.get("hello-00001") == 0
    assert world.eds("hello", "hello-00001") == [world.activator.port]


async def test_a_concurrency_limit_keeps_the_activator_in_the_path(world: World):
    await world.apply(f"hello: {{template: {app(concurrency=2, scale='{burstCapacity: 0}')}}}")
    world.backend.ready("hello-00001", 9001)
    world.controller.autoscaler.observe(world.controller.autoscaler.clock(), {"hello-00001": Load(1.0, 1.0)})
    await world.controller.autoscaler.tick_once()
    assert world.controller.autoscaler.decisions["hello-00001"][1].activator_in_path is False  # the KPA's word
    assert world.eds("hello", "hello-00001") == [world.activator.port]


async def test_only_unreachable_revisions_may_go_below_their_minimum(world: World):
    await serving(world)
    await world.apply(f"""
        hello:
          template: {app('v2')}
          traffic: [{{revision: hello-00001, percent: 100}}]
    """)
    assert world.controller.reachable("hello-00001")
    assert not world.controller.reachable("hello-00002")  # neither routed nor followed as the latest
    assert not world.controller.reachable("nobody-00001")


# -- rollouts -----------------------------------------------------------------------------------------------------


CANARY = "rollout: {strategy: canary, steps: [20, 50], interval: 1s, analysis: {minRequests: 1}}"


async def canary(world: World, extra: str = CANARY) -> None:
    await world.apply(f"hello:\n  template: {app('v1')}\n  {extra}")
    world.backend.ready("hello-00001", 9001)
    await world.settle()
    await world.apply(f"hello:\n  template: {app('v2')}\n  {extra}")
    world.backend.ready("hello-00002", 9002)
    await world.settle()


async def test_a_rollout_blends_the_stable_split_with_the_new_one(world: World):
    await canary(world)
    assert world.served("hello.test") == {"hello-00001": 80, "hello-00002": 20}
    rollout = world.controller.services["hello"].rollout
    step = type(rollout)(**{**rollout.__dict__, "step": 1, "weight": 50})
    await world.controller.rollout_changed("hello", step, previous=rollout, decided_at=0.0)
    assert world.served("hello.test") == {"hello-00001": 50, "hello-00002": 50}
    assert world.store.latest_ready("hello") == "hello-00002"


async def test_the_stable_revision_keeps_its_scale_during_a_rollout(world: World):
    await canary(world)
    settings = world.controller.autoscaler.states["hello-00001"].settings
    assert settings.min_scale == 1  # the floor: its scale when the rollout started
    await world.controller.rollout_action("hello", "promote")
    assert world.controller.autoscaler.states.get("hello-00001") is None or \
        world.controller.autoscaler.states["hello-00001"].settings.min_scale == 0


async def test_an_aborted_rollout_goes_back_to_the_stable_revision_for_good(world: World):
    await canary(world)
    await world.controller.rollout_action("hello", "abort")
    assert world.served("hello.test") == {"hello-00001": 100}
    assert world.store.latest_ready("hello") == "hello-00001"
    assert "hello-00002" in world.controller.services["hello"].failed
    await world.settle()
    assert "hello-00002" in world.backend.stopped
    # Named again (a tag), it runs and becomes ready again: still never the latest.
    await world.apply(f"""
        hello:
          template: {app('v2')}
          {CANARY}
          traffic: [{{latestRevision: true, percent: 100}}, {{revision: hello-00002, percent: 0, tag: again}}]
    """)
    world.backend.ready("hello-00002", 9003)
    await world.settle()
    assert world.served("hello.test") == {"hello-00001": 100}
    assert world.served("again-hello.test") == {"hello-00002": 100}
    assert world.store.latest_ready("hello") == "hello-00001"


async def test_a_newer_template_supersedes_a_rollout_in_progress(world: World):
    await canary(world)
    await world.apply(f"hello:\n  template: {app('v3')}\n  {CANARY}")
    rollout = world.controller.services["hello"].rollout
    assert (rollout.candidate, rollout.phase) == ("hello-00003", "progressing") or rollout.phase == "aborted"
    assert world.store.results("hello")["hello-00002"][0] == "aborted"


async def test_a_blue_green_rollout_previews_the_candidate_on_its_own_host(world: World):
    await canary(world, "rollout: {strategy: blue-green, interval: 1s}")
    assert world.served("hello.test") == {"hello-00001": 100}
    assert world.served("preview-hello.test") == {"hello-00002": 100}


async def test_a_sticky_rollout_keeps_each_client_on_its_revision(world: World):
    await canary(world, CANARY.replace("interval: 1s", "interval: 1s, sticky: true"))
    routes = world.controller.services["hello"].routes
    assert routes[0].sticky_cookie == "ferry-rollout-hello"
    await world.controller.rollout_action("hello", "promote")
    assert world.controller.services["hello"].routes[0].sticky_cookie is None


# -- `ferry traffic` ------------------------------------------------------------------------------------------


async def test_an_imperative_split_holds_until_the_file_says_the_same(world: World):
    await world.apply(f"hello: {{template: {fixed(9001)}}}")
    await world.apply(f"hello: {{template: {fixed(9002)}}}")
    await world.controller.set_traffic("hello", [("hello-00001", 30), ("hello-00002", 70)])
    assert world.served("hello.test") == {"hello-00001": 30, "hello-00002": 70}
    assert world.controller.status()["services"]["hello"]["split_owner"] == "override (drift from the file)"
    await world.apply(f"""
        hello:
          template: {fixed(9002)}
          traffic: [{{revision: hello-00001, percent: 30}}, {{revision: hello-00002, percent: 70}}]
    """)
    assert world.controller.services["hello"].override is None
    assert world.store.traffic_override("hello") is None


@pytest.mark.parametrize("splits, error", [
    ([("hello-00001", 60)], "sum to exactly 100"),
    ([("hello-00009", 100)], "not a revision of hello"),
    ([("hello-00001", 50), ("hello-00001", 50)], "each revision may appear once"),
])
async def test_an_imperative_split_is_checked(world: World, splits, error):
    await world.apply(f"hello: {{template: {fixed(9001)}}}")
    with pytest.raises(ValueError, match=error):
        await world.controller.set_traffic("hello", splits)
    assert world.controller.services["hello"].override is None


async def test_no_imperative_split_while_a_rollout_owns_it(world: World):
    await canary(world)
    with pytest.raises(ValueError, match="a rollout owns the split"):
        await world.controller.set_traffic("hello", [("hello-00001", 100)])


# -- what reaches the cache ---------------------------------------------------------------------------------------


async def test_a_bad_file_changes_nothing(world: World):
    await world.apply(f"hello: {{template: {fixed(9001)}}}")
    versions = world.cache.group(SnapshotCache.DEFAULT).versions()
    with pytest.raises(ConfigError):
        await world.apply(f"""
            hello:
              template: {fixed(9001)}
              traffic: [{{revision: hello-00007, percent: 100}}]
        """)
    assert world.cache.group(SnapshotCache.DEFAULT).versions() == versions
    assert "hello-00007" in world.source.last_error


def test_the_cache_refuses_a_route_table_naming_a_missing_cluster():
    cache = SnapshotCache()
    table = xds.route_table("svc", [xds.HostRoute("svc", "svc", ("svc.test",),
                                                  (xds.WeightedTarget("svc/r1", "r1", 100),), 30)])
    with pytest.raises(InconsistentChanges, match="svc/r1"):
        cache.update({xds.ROUTE: {"svc": table}})
    assert not cache.group(SnapshotCache.DEFAULT).stores[xds.ROUTE].entries
    cache.update({xds.CLUSTER: {"svc/r1": xds.cluster("svc/r1")}, xds.ROUTE: {"svc": table}})
    with pytest.raises(InconsistentChanges, match="still name it"):
        cache.update({xds.CLUSTER: {"svc/r1": None}})
    cache.update({xds.CLUSTER: {"svc/r1": None}, xds.ROUTE: {"svc": None}})  # together, it is consistent


def test_a_host_scope_must_name_an_existing_route_table():
    cache = SnapshotCache()
    with pytest.raises(InconsistentChanges, match="svc"):
        cache.update({xds.SCOPED_ROUTE: {"svc.test": xds.host_scope("svc.test", "svc")}})
