"""The rollout loop: once a second, every active rollout's candidate counters in, the engine's next state out.

The engine (machine.py) decides; this shell reads the gateways and hands every changed state to the
`RolloutTarget` (the controller), which stores it, re-routes the service and waits for the gateways.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Protocol

from ..envoy.admin import EnvoyAdmin
from ..tasks import every
from . import machine
from .stats import read_samples

log = logging.getLogger("ferry.rollout")


class ActiveRollout(NamedTuple):
    rollout: machine.Rollout
    spec: machine.RolloutSpec
    cluster: str  # the candidate's cluster


class RolloutTarget(Protocol):
    def active_rollouts(self) -> Mapping[str, ActiveRollout]:
        """Service -> its rollout in progress."""

    async def rollout_changed(
        self, service: str, rollout: machine.Rollout, *, previous: machine.Rollout | None, decided_at: float
    ) -> None:
        """Store the new state and make the gateways follow it, unless the rollout moved on from `previous`
        meanwhile (a promote or abort while the stats were read)."""


class RolloutRunner:
    def __init__(
        self,
        target: RolloutTarget,
        admins: Callable[[], Iterable[EnvoyAdmin]],
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ):
        self.target = target
        self.admins = admins
        self.interval_s = interval_s
        self.clock = clock  # wall time: rollout state outlives the process

    async def observe_once(self) -> None:
        active = dict(self.target.active_rollouts())
        if not active:
            return
        samples = await read_samples(self.admins(), sorted({a.cluster for a in active.values()}))
        if samples is None:
            return  # some gateway did not answer: no verdict this second
        now = self.clock()
        for service, (rollout, spec, cluster) in active.items():
            following = machine.observe(rollout, spec, now=now, sample=samples[cluster])
            if following != rollout:
                await self.target.rollout_changed(
                    service, following, previous=rollout, decided_at=time.perf_counter()
                )

    async def run(self) -> None:
        await every(self.interval_s, self.observe_once, log, "rollout step")
