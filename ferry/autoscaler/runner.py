"""The autoscaler's I/O shell: scrape every second, decide every tick, wake at once on a poke.

All state lives in one `ScalerState` per revision, advanced by the pure functions of scaler.py;
this class only gathers observations, keeps time and hands each step to the `ScaleTarget` (the
controller), which owns the backend and what gateways are told.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol

from ..envoy.admin import EnvoyAdmin
from ..tasks import every
from . import metrics
from .decision import Settings
from .scaler import (
    Load,
    ScalerState,
    Step,
    must_hold,
    new_state,
    record,
    tick,
    wake,
    with_settings,
)

log = logging.getLogger("ferry.autoscaler")


class ScaleTarget(Protocol):
    def ready_instances(self, revision: str) -> int:
        """How many instances of the revision are ready now."""

    def reachable(self, revision: str) -> bool:
        """Does any route (main split or tag) send it traffic?"""

    async def apply_step(self, revision: str, step: Step) -> None:
        """Make the backend and the gateways follow the step."""


@dataclass(frozen=True)
class Sources:
    """Where load is read: every gateway's admin endpoint, and the activator's counters."""

    admins: Callable[[], Iterable[EnvoyAdmin]]
    activator: Callable[[], Mapping[str, metrics.ActivatorCounts]]


@dataclass(frozen=True)
class TickTiming:
    revisions: int
    seconds: float


class Autoscaler:
    def __init__(
        self,
        target: ScaleTarget,
        sources: Sources,
        *,
        tick_s: float = 2.0,
        scrape_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.target = target
        self.sources = sources
        self.tick_s = tick_s
        self.scrape_s = scrape_s
        self.clock = clock
        self.states: dict[str, ScalerState] = {}
        self.decisions: dict[str, tuple[float, Step]] = {}  # revision -> (when, what) of its last decision
        self.last_load: dict[str, Load] = {}
        self.last_tick: TickTiming | None = None
        self._totals: metrics.Totals | None = None
        self.observed_at: float | None = None
        """Time of the latest observation. Decisions are taken as of then: a tick that falls between a new
        second and its scrape would otherwise see that second empty (a 1 s panic window would read 0)."""
        self._waking: dict[str, asyncio.Task] = {}
        self._lock = asyncio.Lock()  # one decision at a time: ticks and wake-ups interleave at awaits

    # -- what the controller tells us -----------------------------------------------------------------

    def track(self, revision: str, settings: Settings, ready: int = 0, adopted: int | None = None) -> ScalerState:
        """Start deciding for a revision (or take its new settings); returns its state. `adopted`: it already
        runs that many instances (see new_state)."""
        state = self.states.get(revision)
        state = (new_state(settings, self.clock(), ready, adopted) if state is None
                 else with_settings(state, settings))
        self.states[revision] = state
        return state

    def untrack(self, revision: str) -> None:
        self.states.pop(revision, None)
        self.decisions.pop(revision, None)
        self.last_load.pop(revision, None)
        task = self._waking.pop(revision, None)
        if task is not None:
            task.cancel()

    def must_hold(self, revision: str, ready: int) -> bool:
        """Whether the activator must hold this revision's requests (no instance to send them to)."""
        state = self.states.get(revision)
        return True if state is None else must_hold(ready, state.scale, state.active_since)

    # -- observations ---------------------------------------------------------------------------------

    def observe(self, now: float, loads: Mapping[str, Load]) -> None:
        """Record one scrape; a tracked revision nobody reported counts as idle."""
        idle = Load(0.0, 0.0)
        for revision, state in self.states.items():
            load = loads.get(revision, idle)
            self.last_load[revision] = load
            self.states[revision] = record(state, now, load)
        self.observed_at = now

    async def scrape_once(self) -> None:
        if not self.states:
            return  # nothing autoscaled (every revision's endpoints are managed elsewhere)
        gateways = await metrics.scrape(self.sources.admins())
        now = self.clock()
        loads, self._totals = metrics.loads(now, gateways, self.sources.activator(), self._totals)
        self.observe(now, loads)

    # -- decisions ------------------------------------------------------------------------------------

    def decide(self, now: float, revisions: Iterable[str] | None = None) -> dict[str, Step]:
        """One tick over the given revisions (all by default): pure except for updating self.states."""
        steps = {}
        states, decisions, target = self.states, self.decisions, self.target
        decided_at = self.clock()
        for revision in list(states) if revisions is None else revisions:
            state = states.get(revision)
            if state is None:
                continue
            step = tick(state, now, ready=target.ready_instances(revision), reachable=target.reachable(revision))
            states[revision] = step.state
            if step.decision is not None:
                decisions[revision] = (decided_at, step)
            steps[revision] = step
        return steps

    async def tick_once(self, revisions: Iterable[str] | None = None) -> None:
        async with self._lock:
            started = time.perf_counter()
            steps = self.decide(self.observed_at if self.observed_at is not None else self.clock(), revisions)
            if revisions is None:
                self.last_tick = TickTiming(len(steps), time.perf_counter() - started)
            for revision, step in steps.items():
                await self.target.apply_step(revision, step)

    def poke(self, revision: str) -> None:
        """The activator holds requests for a revision without ready instances: decide for it now,
        once, however many requests arrive together."""
        if revision not in self.states or revision in self._waking:
            return
        self._waking[revision] = asyncio.get_running_loop().create_task(self._wake(revision), name=f"wake {revision}")

    async def _wake(self, revision: str) -> None:
        try:
            held = self.sources.activator().get(revision)
            state = self.states.get(revision)
            if state is not None and held is not None:
                self.observed_at = self.clock()
                self.states[revision] = wake(state, self.observed_at, held.in_flight)
            await self.tick_once([revision])
        finally:
            self._waking.pop(revision, None)

    # -- the loops ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Scrape every `scrape_s` and decide every `tick_s` until cancelled; errors are logged, not fatal."""
        await asyncio.gather(
            every(self.scrape_s, self.scrape_once, log, "autoscaler scrape"),
            every(self.tick_s, self.tick_once, log, "autoscaler tick"),
        )

    async def aclose(self) -> None:
        tasks = list(self._waking.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
