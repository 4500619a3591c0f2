"""What ferry's per-revision series cost (reconcile/observe.py): /metrics scrape time and size, the longest piece of
rendering (how long the event loop is held at once), and the CPU the series add, at 1,000 and 10,000 revisions.

    python bench/metrics.py [--sizes 1000,10000] [--repeat 5]

In process, no Envoy. Two states per size:
  busy: every revision runs instances (managed) and carried requests on two gateways: answers 2xx and 5xx, the
        latency histogram, requests in flight. The worst case for size: every series of every revision.
  idle: every revision runs instances but none carried a request: the gauges only (instances, in flight, panic,
        activator). (Revisions whose endpoints the file gives and that carried no request have no series at all.)

Added CPU (busy) = one read every READ_EVERY_S (parsing each gateway's answer, Envoy's format, with its 20 histogram
buckets, + summing them) + one /metrics render every SCRAPE_INTERVAL_S (a Prometheus scrape every 15 s). Target:
<= 2 % of a core at 1,000 revisions. CPU is process time (this thread), the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ferry.autoscaler.scaler import Load  # noqa: E402
from ferry.tasks import watch_loop_lag  # noqa: E402
from ferry.reconcile.observe import READ_EVERY_S, RevisionObserver, parse  # noqa: E402

SCRAPE_INTERVAL_S = 15.0
TARGET_CPU_PERCENT = {1000: 2.0}
TARGET_PIECE_MS = 20.0  # no piece of the rendering may hold the loop longer
GATEWAYS = 2
ENVOY_BOUNDS = ("0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000",
                "60000", "300000", "600000", "1.8e+06", "3.6e+06", "+Inf")


def answer(n: int, tick: int) -> bytes:
    """One gateway's /stats/prometheus answer to observe.STATS_FILTER for n used revision clusters, in Envoy's order
    (a family at a time)."""
    clusters = [f"s{i}/s{i}-00001" for i in range(n)]
    lines = ["# TYPE envoy_cluster_upstream_rq_xx counter"]
    for code, share in (("2", 0.95), ("5", 0.05)):
        lines += [f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="{code}",envoy_cluster_name="{c}"}} '
                  f"{int((1000 + tick * 10 + i) * share)}" for i, c in enumerate(clusters)]
    lines.append("# TYPE envoy_cluster_upstream_rq_active gauge")
    lines += [f'envoy_cluster_upstream_rq_active{{envoy_cluster_name="{c}"}} 2' for c in clusters]
    lines.append("# TYPE envoy_cluster_upstream_rq_pending_active gauge")
    lines += [f'envoy_cluster_upstream_rq_pending_active{{envoy_cluster_name="{c}"}} 0' for c in clusters]
    lines.append("# TYPE envoy_cluster_upstream_rq_time histogram")
    for i, c in enumerate(clusters):
        total = 1000 + tick * 10 + i
        for j, le in enumerate(ENVOY_BOUNDS):
            lines.append(f'envoy_cluster_upstream_rq_time_bucket{{envoy_cluster_name="{c}",le="{le}"}} '
                         f"{min(total, total * (j + 1) // 8)}")
        lines.append(f'envoy_cluster_upstream_rq_time_sum{{envoy_cluster_name="{c}"}} {total * 12.5}')
        lines.append(f'envoy_cluster_upstream_rq_time_count{{envoy_cluster_name="{c}"}} {total}')
    return ("\n".join(lines) + "\n").encode()


def controller(n: int) -> SimpleNamespace:
    revisions, states, loads = {}, {}, {}
    for i in range(n):
        name = f"s{i}-00001"
        revisions[name] = SimpleNamespace(revision=SimpleNamespace(service=f"s{i}", name=name), name=name, managed=True,
                                          endpoints=("127.0.0.1:1", "127.0.0.1:2"), activator_in_path=False,
                                          instances=2, retiring=False)
        states[name] = SimpleNamespace(scale=2, decider=SimpleNamespace(panic_since=None))
        loads[name] = Load(2.0, 10.0)
    services = {f"s{i}": SimpleNamespace(name=f"s{i}", rollout=None, traffic=SimpleNamespace(tags=()))
                for i in range(n)}
    services["s0"].rollout = SimpleNamespace(active=True, candidate="s0-00001", stable="s0-00000", step=1, weight=20)
    c = SimpleNamespace(autoscaler=SimpleNamespace(states=states, last_load=loads), revisions=revisions,
                        services=services, activator=SimpleNamespace(stats=lambda: {}),
                        backend=SimpleNamespace(counts=lambda name: SimpleNamespace(total=2)))
    c.observer = RevisionObserver(c, admins=lambda: [], activator=c.activator.stats)
    return c


def cpu(fn) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def render(observer: RevisionObserver) -> tuple[float, float, bytes]:
    """(CPU seconds, the longest piece in seconds, the text), as the API makes it: piece by piece."""
    pieces, longest = [], 0.0
    started = time.process_time()
    last = started
    for piece in observer.chunks():
        pieces.append(piece)
        now = time.process_time()
        longest, last = max(longest, now - last), now
    return time.process_time() - started, longest, b"".join(pieces)


async def loop_held_during_read(observer: RevisionObserver, bodies: dict[str, bytes]) -> float:
    """The longest stretch the event loop is held while a read is parsed and summed in a thread, as ferry does
    (RevisionObserver.read_once): a 1 ms timer's worst lateness, less the time this thread waited for a core
    (ferry's own ferry_event_loop_lag_seconds, tasks.watch_loop_lag: the machine may be busy with other work)."""
    lags: list[float] = []
    watch = asyncio.create_task(watch_loop_lag(lags.append, interval=0.001))
    await asyncio.sleep(0.01)
    await asyncio.to_thread(lambda: observer.absorb({source: parse(body) for source, body in bodies.items()}, {}))
    await asyncio.sleep(0.005)
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    return max(lags)


def run(n: int, repeat: int) -> bool:
    c = controller(n)
    obs = c.observer
    gc.freeze()  # as ferry does after an apply: the controller's long-lived state is not rescanned
    # idle: gauges only
    idle = [render(obs) for _ in range(repeat)]
    idle_body = idle[-1][2]
    # busy: reads of both gateways (the first one makes the totals), then renders
    answers = [answer(n, t) for t in range(repeat + 1)]
    obs.absorb({f"gw{g}": parse(answers[0]) for g in range(GATEWAYS)})
    parse_s, absorb_s = [], []
    for t in range(1, repeat + 1):
        parsed = {}
        parse_s.append(cpu(lambda t=t: parsed.update({f"gw{g}": parse(answers[t]) for g in range(GATEWAYS)})))
        absorb_s.append(cpu(lambda p=parsed: obs.absorb(p)))
    held = asyncio.run(loop_held_during_read(obs, {f"gw{g}": answers[0] for g in range(GATEWAYS)}))
    busy = [render(obs) for _ in range(repeat)]
    body = busy[-1][2]
    read = statistics.median(parse_s) + statistics.median(absorb_s)
    render_s = statistics.median(r[0] for r in busy)
    piece = max(r[1] for r in busy + idle)
    added = 100 * (read / READ_EVERY_S + render_s / SCRAPE_INTERVAL_S)
    target = TARGET_CPU_PERCENT.get(n)
    ok = max(piece, held) * 1000 <= TARGET_PIECE_MS and (target is None or added <= target)

    def samples(text: bytes) -> int:
        return sum(1 for line in text.split(b"\n") if line and not line.startswith(b"#"))

    print(f"{n:>6} revisions, idle: /metrics {statistics.median(r[0] for r in idle) * 1000:6.1f} ms, "
          f"{len(idle_body) / 1024:7.1f} KiB, {samples(idle_body):>7} samples")
    print(f"{n:>6} revisions, busy: /metrics {render_s * 1000:6.1f} ms, {len(body) / 1024:7.1f} KiB, "
          f"{samples(body):>7} samples | longest piece {piece * 1000:.1f} ms (<= {TARGET_PIECE_MS:.0f}) | "
          f"read every {READ_EVERY_S:.0f} s: parse {GATEWAYS} x {len(answers[1]) / 1024:.0f} KiB "
          f"{statistics.median(parse_s) * 1000:.1f} ms + sum {statistics.median(absorb_s) * 1000:.1f} ms | "
          f"loop held <= {held * 1000:.1f} ms during it | added CPU {added:.2f} % of a core"
          + ("" if target is None else f" (target <= {target} %)") + f": {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ok = all([run(int(n), args.repeat) for n in args.sizes.split(",")])
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
