"""The per-revision autoscaler state machine, the load arithmetic, and the connection drain signal."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass

from ferry.autoscaler.decision import Settings
from ferry.autoscaler.metrics import ClusterCounters, loads, parse_cluster_stats
from ferry.autoscaler.scaler import (
    Load,
    activator_in_path,
    in_path_now,
    new_state,
    record,
    tick,
    wake,
    with_settings,
)
from ferry.backends.connections import (
    Socket,
    connected_clients,
    foreign_clients,
    parse_table,
)

FAST = Settings(stable_window=6, scale_to_zero_grace=2.0, target=10.0, utilization=1.0)


def feed(state, start: float, seconds: int, load: Load):
    for second in range(seconds):
        state = record(state, start + second, load)
    return state


# -- the state machine -------------------------------------------------------------------------------


def test_a_new_revision_is_active_at_its_initial_scale():
    state = new_state(FAST, 100.0)
    assert (state.scale, state.active_since, state.inactive_since, state.initialized) == (1, 100.0, None, False)
    zero = new_state(Settings(initial_scale=0), 100.0)
    assert (zero.scale, zero.active_since, zero.inactive_since) == (0, None, 100.0)


def test_two_observations_in_one_second_count_once():
    state = record(new_state(FAST, 0.0), 10.2, Load(5, 0))
    state = record(state, 10.7, Load(8, 0))  # the scrape after a poke: only the 3 more count
    state = record(state, 10.9, Load(2, 0))  # less than already recorded: nothing added
    assert state.stable.average(10.9) == 8


def test_no_metrics_means_no_decision_and_the_activator_holds_requests():
    step = tick(new_state(FAST, 0.0), 0.5, ready=0, reachable=True)
    assert step.scale is None and step.activator_in_path and step.reason == "no metrics yet"


def test_a_poke_at_zero_asks_for_exactly_what_the_held_requests_need():
    state = new_state(Settings(initial_scale=0, target=10.0, utilization=1.0), 0.0)
    step = tick(wake(state, 5.0, held=1), 5.0, ready=0, reachable=True)
    assert step.scale == 1 and step.activator_in_path
    assert step.state.active_since == 5.0 and step.state.inactive_since is None
    step = tick(wake(state, 5.0, held=35), 5.0, ready=0, reachable=True)
    assert step.scale == 4  # ceil(35 / 10)
    assert step.state.decider.panic_since == 5.0  # 4 wanted for 1 (empty) instance: panic


def test_three_times_the_target_scales_to_three_within_the_panic_window():
    state = new_state(FAST, 0.0, ready=1)
    state = feed(state, 0.0, 2, Load(30, 0))
    step = tick(state, 1.5, ready=1, reachable=True)
    assert step.scale == 3 and "panic" in step.reason


def test_idle_revision_deactivates_after_a_stable_window_then_reaches_zero_after_grace():
    state = new_state(FAST, 0.0, ready=1)
    state = feed(state, 0.0, 3, Load(5, 0))
    state = tick(state, 3.0, ready=1, reachable=True).state
    state = feed(state, 3.0, 10, Load(0, 0))  # idle: the stable window holds only zeros
    step = tick(state, 12.5, ready=1, reachable=True)
    assert step.scale is None and step.activator_in_path, step.reason  # deactivated: activator fronts it first
    assert step.state.active_since is None and step.state.inactive_since == 12.5
    early = tick(feed(step.state, 13.0, 1, Load(0, 0)), 13.5, ready=1, reachable=True)
    assert early.scale is None and "grace" in early.reason
    done = tick(feed(early.state, 14.0, 1, Load(0, 0)), 14.6, ready=1, reachable=True)
    assert done.scale == 0 and done.activator_in_path


def test_an_active_revision_keeps_one_instance_for_a_stable_window_after_activation():
    state = new_state(FAST, 0.0, ready=1)
    state = feed(state, 0.0, 3, Load(0, 0))
    step = tick(state, 3.0, ready=1, reachable=True)
    assert step.scale is None and "keeping 1 instance" in step.reason


def test_min_scale_holds_only_while_the_revision_is_routed():
    settings = Settings(stable_window=6, target=10.0, utilization=1.0, min_scale=2, initial_scale=2)
    state = feed(new_state(settings, 0.0, ready=2), 0.0, 8, Load(0, 0))
    assert tick(state, 8.0, ready=2, reachable=True).state.scale == 2
    step = tick(state, 8.0, ready=2, reachable=False)
    assert step.scale is None and step.state.active_since is None  # unrouted: deactivates towards zero


def test_activator_mode_follows_knative_plus_no_ready_instance():
    assert activator_in_path(ready=0, scale=3, active_since=1.0, excess_burst_capacity=5)
    assert activator_in_path(ready=2, scale=2, active_since=1.0, excess_burst_capacity=-1)
    assert activator_in_path(ready=2, scale=0, active_since=1.0, excess_burst_capacity=5)
    assert activator_in_path(ready=2, scale=2, active_since=None, excess_burst_capacity=5)
    assert not activator_in_path(ready=2, scale=2, active_since=1.0, excess_burst_capacity=0)


def test_instances_becoming_ready_between_ticks_take_the_activator_out_when_burst_capacity_allows():
    no_burst = new_state(Settings(target_burst_capacity=0), 0.0)
    assert in_path_now(no_burst, ready=0) and not in_path_now(no_burst, ready=1)
    default = new_state(Settings(), 0.0)  # 211 spare requests wanted: 3 instances of 100
    assert in_path_now(default, ready=2) and not in_path_now(default, ready=3)
    unlimited = new_state(Settings(target_burst_capacity=-1), 0.0)
    assert in_path_now(unlimited, ready=10)


def test_new_settings_keep_history_unless_the_window_changes():
    state = feed(new_state(FAST, 0.0), 0.0, 3, Load(4, 0))
    same_windows = with_settings(state, Settings(stable_window=6, target=20.0))
    assert same_windows.stable is state.stable and same_windows.settings.target == 20.0
    longer = with_settings(state, Settings(stable_window=12))
    assert longer.stable.average(3.0) is None


def test_rps_metric_records_the_rate():
    settings = Settings(metric="rps", target=10.0, utilization=1.0, stable_window=6)
    state = feed(new_state(settings, 0.0, ready=1), 0.0, 2, Load(concurrency=1, rps=45))
    assert tick(state, 1.5, ready=1, reachable=True).scale == 5


# -- load arithmetic ---------------------------------------------------------------------------------


def test_envoy_stats_are_parsed_per_revision():
    body = b"""\
# TYPE envoy_cluster_upstream_rq_active gauge
envoy_cluster_upstream_rq_active{envoy_cluster_name="hello/hello-00001"} 3
envoy_cluster_upstream_rq_pending_active{envoy_cluster_name="hello/hello-00001"} 2
# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="hello/hello-00001"} 120
envoy_cluster_upstream_rq_total{envoy_cluster_name="other/other-00002"} 7
envoy_cluster_upstream_rq_active{envoy_cluster_name="ferry_xds"} 1
envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="hello/hello-00001",le="0.5"} 4
"""
    assert parse_cluster_stats(body) == {
        "hello-00001": ClusterCounters(3, 2, 120),
        "other-00002": ClusterCounters(0, 0, 7),
    }


@dataclass
class Held:
    in_flight: int
    requests_total: int


def test_loads_sum_gateways_and_never_count_activator_requests_twice():
    first, totals = loads(
        10.0,
        {"gw1": {"r1": ClusterCounters(4, 1, 100)}, "gw2": {"r1": ClusterCounters(2, 0, 50)}},
        {"r1": Held(3, 10), "r2": Held(7, 7)},
        None,
    )
    assert first == {"r1": Load(7, 0.0), "r2": Load(7, 0.0)}  # activator's 3 are among Envoy's 7
    second, _ = loads(
        12.0,
        {"gw1": {"r1": ClusterCounters(0, 0, 140)}, "gw2": {"r1": ClusterCounters(0, 0, 5)}},  # gw2 restarted
        {"r1": Held(0, 10), "r2": Held(9, 27)},
        totals,
    )
    assert second["r1"] == Load(0, (40 + 5) / 2)
    assert second["r2"] == Load(9, 10.0)  # only the activator saw it (its gateway was not scraped)


# -- the connection drain signal -----------------------------------------------------------------------


def test_proc_net_tcp_rows_are_parsed():
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1\n"
        "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 222 1\n"
        "   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 333 1\n"
    )
    rows = parse_table(text)
    assert rows[1] == Socket(8080, 50000, "01", 222)
    assert foreign_clients(8080, rows, own_inodes=set()) == 1
    assert foreign_clients(8080, rows, own_inodes={333}) == 0  # our own client (the activator)


def test_connected_clients_sees_other_processes_but_not_our_own_sockets():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    ours = socket.create_connection(("127.0.0.1", port))
    accepted = [server.accept()[0]]
    child = subprocess.Popen(
        [sys.executable, "-c",
         f"import socket,sys; s=socket.create_connection(('127.0.0.1',{port})); print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "up"
        accepted.append(server.accept()[0])
        assert connected_clients(port) == 1
    finally:
        child.stdin.close()
        child.wait(10)
        for s in (ours, server, *accepted):
            s.close()
