"""Rollout bookkeeping: what the controller records when a rollout starts, steps, ends, is resumed after a restart
or is acted on by hand, and the two facts rollouts change: a service's latest ready revision and the floor under
its stable revision's scale. The engine (rollout/machine.py) decides; this records and keeps the store in step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from ..autoscaler.decision import Settings
from ..autoscaler.settings import settings_for
from ..rollout import machine
from ..rollout.config import rollout_spec
from ..rollout.runner import ActiveRollout
from ..routing.revisions import Revision, RevisionStore
from ..routing.traffic import Split
from ..xds import resources as xds
from .model import ENDED_BADLY, ServiceRuntime

log = logging.getLogger("ferry.reconcile")


class LatestReady:
    """Knative's latestReadyRevision per service. The store is the truth across restarts; this process is its
    only writer, so reads come from memory, and writes go back in one transaction per publish (10,000 services
    may become ready at once)."""

    def __init__(self, store: RevisionStore):
        self._store = store
        self._known: dict[str, str | None] = {}
        self._unsaved: dict[str, str] = {}

    def get(self, service: str) -> str | None:
        if service not in self._known:
            self._known[service] = self._store.latest_ready(service)
        return self._known[service]

    def set(self, service: str, revision: str) -> None:
        self._known[service] = revision
        self._unsaved[service] = revision

    def save(self) -> None:
        if self._unsaved:
            self._store.set_latest_ready_many(self._unsaved)
            self._unsaved = {}


class Floor:
    """While a rollout may fall back to its stable revision, that revision's scale at the rollout's start is a
    floor under its autoscaling (Flagger keeps the primary scaled the same way)."""

    def __init__(self, changed: Callable[[str], None]):
        self._floors: dict[str, int] = {}
        self._changed = changed  # told the revision whose floor changed: its autoscaling settings did

    def settings(self, revision: Revision) -> Settings:
        """The revision's autoscaling settings, its floor included."""
        settings = settings_for(revision.template)
        floor = self._floors.get(revision.name)
        if floor is None:
            return settings
        if settings.max_scale:
            floor = min(floor, settings.max_scale)
        return replace(settings, min_scale=max(settings.min_scale, floor))

    def protect(self, revision: str, instances: int | None) -> None:
        self._floors[revision] = max(1, instances or 1)
        self._changed(revision)

    def release(self, revision: str) -> None:
        if self._floors.pop(revision, None) is not None:
            self._changed(revision)


class RolloutBook:
    def __init__(self, store: RevisionStore, latest: LatestReady, floor: Floor,
                 instances: Callable[[str], int | None]):
        self._store = store
        self._latest = latest
        self._floor = floor
        self._instances = instances  # a revision's instances now, None if it does not run

    @staticmethod
    def spec(service: ServiceRuntime) -> machine.RolloutSpec:
        block = service.spec.rollout
        return rollout_spec(block) if block is not None else machine.RolloutSpec(strategy=service.rollout.strategy)

    def active(self, services: Mapping[str, ServiceRuntime]) -> dict[str, ActiveRollout]:
        return {
            name: ActiveRollout(s.rollout, self.spec(s), xds.cluster_name(name, s.rollout.candidate))
            for name, s in services.items() if s.rolling_out
        }

    def restore(self, service: ServiceRuntime) -> None:
        """After a restart: which revisions failed, any `ferry traffic` override, and a rollout to resume at
        the step it had reached (its analysis window starts afresh: the gateways' counters did too)."""
        results = self._store.results(service.name)
        service.failed = frozenset(revision for revision, (result, _, _) in results.items() if result in ENDED_BADLY)
        override = self._store.traffic_override(service.name)
        service.override = tuple(Split(r, p) for r, p in override) if override else None
        text = self._store.rollout(service.name)
        if text:
            rollout = machine.Rollout.from_json(text)
            if rollout.active:
                rollout = machine.resume(rollout, now=time.time())
                self._floor.protect(rollout.stable, self._instances(rollout.stable))
            service.rollout = rollout
        self.follow_file(service)

    def follow_file(self, service: ServiceRuntime) -> None:
        """A rollout in progress ends when the file moves on: a newer template supersedes its candidate (which
        then counts as aborted), and a removed rollout block leaves the file's split in charge."""
        rollout = service.rollout
        if rollout is None or not rollout.active:
            return
        if rollout.candidate != service.current.name:
            self.end(service, machine.abort(
                rollout, now=time.time(), reason=f"superseded by the newer revision {service.current.name}"))
        elif service.spec.rollout is None:
            self.end(service, machine.promote(rollout, self.spec(service), now=time.time()))

    def start(self, service: ServiceRuntime, *, stable: str, candidate: str) -> None:
        rollout = machine.start(self.spec(service), service=service.name, stable=stable, candidate=candidate,
                                now=time.time())
        service.rollout = rollout
        service.rollback_ms = None  # belongs to the rollout it measured
        self._store.save_rollout(service.name, rollout.to_json())
        self._floor.protect(stable, self._instances(stable))
        log.info("rollout started", extra={"service": service.name, "strategy": rollout.strategy,
                                            "stable": stable, "candidate": candidate, "weight": rollout.weight})

    def step(self, service: ServiceRuntime, rollout: machine.Rollout, previous: machine.Rollout | None) -> None:
        """The engine's next state: an end, or a step to record."""
        if previous is not None and previous.active and not rollout.active:
            self.end(service, rollout)
            return
        service.rollout = rollout
        self._store.save_rollout(service.name, rollout.to_json())
        if previous is not None and rollout.weight != previous.weight:
            log.info("rollout step", extra={"service": service.name, "candidate": rollout.candidate,
                                             "weight": rollout.weight, "step": rollout.step})

    def end(self, service: ServiceRuntime, rollout: machine.Rollout) -> None:
        """Record how it ended. A failure makes the stable revision the latest again and keeps the candidate
        out of latestRevision until a retry."""
        service.rollout = rollout
        self._store.save_rollout(service.name, rollout.to_json())
        self._floor.release(rollout.stable)
        self._store.set_result(rollout.candidate, rollout.phase, rollout.reason)
        if rollout.phase in ENDED_BADLY:
            service.failed = service.failed | {rollout.candidate}
            if self._latest.get(service.name) == rollout.candidate:
                self._latest.set(service.name, rollout.stable)
            log.warning("rollout %s", rollout.phase, extra={
                "service": service.name, "candidate": rollout.candidate, "stable": rollout.stable,
                "reason": rollout.reason})
        else:
            log.info("rollout promoted", extra={"service": service.name, "candidate": rollout.candidate})

    def decide(self, service: ServiceRuntime, action: str) -> machine.Rollout:
        """`ferry rollout promote|abort|retry`: the rollout's next state (a retry is recorded at once).
        ValueError: not possible now, and why."""
        rollout, name, now = service.rollout, service.name, time.time()
        if action == "retry":
            if rollout is None or rollout.phase not in ENDED_BADLY:
                raise ValueError(f"service {name} has no rolled-back or aborted rollout to retry")
            if rollout.candidate != service.current.name:
                raise ValueError(f"revision {rollout.candidate} is no longer the newest ({service.current.name} is); "
                                 "a template change starts a fresh rollout by itself")
            following = machine.retry(rollout, self.spec(service), now=now)
            self._store.clear_result(rollout.candidate)
            service.failed = service.failed - {rollout.candidate}
            service.rollback_ms = None
            self._floor.protect(following.stable, self._instances(following.stable))
            service.rollout = following
            self._store.save_rollout(name, following.to_json())
            return following
        if rollout is None or not rollout.active:
            raise ValueError(f"service {name} has no rollout in progress")
        if action == "promote":
            return machine.promote(rollout, self.spec(service), now=now)
        if action == "abort":
            return machine.abort(rollout, now=now, reason="aborted with `ferry rollout abort`")
        raise ValueError(f"unknown rollout action {action!r}: promote, abort or retry")

    # -- `ferry traffic` ---------------------------------------------------------------------------------

    def check_override(self, service: ServiceRuntime, splits: list[tuple[str, int]]) -> None:
        """ValueError saying what is wrong with an imperative split."""
        name = service.name
        if service.rolling_out:
            raise ValueError(f"a rollout owns the split of {name}; promote or abort it first")
        known = {r.name for r in self._store.revisions(name)}
        unknown = [r for r, _ in splits if r not in known]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a revision of {name} "
                             f"(known: {', '.join(sorted(known)[-10:])})")
        if sum(p for _, p in splits) != 100 or any(not 0 <= p <= 100 for _, p in splits):
            raise ValueError(f"percents must be 0..100 and sum to exactly 100, got {sum(p for _, p in splits)}")
        if len({r for r, _ in splits}) != len(splits):
            raise ValueError("each revision may appear once")

    def set_override(self, service: ServiceRuntime, splits: list[tuple[str, int]] | None) -> None:
        self._store.set_traffic_override(service.name, splits)
        service.override = tuple(Split(r, p) for r, p in splits if p > 0) if splits is not None else None

    def clear_override(self, service: ServiceRuntime, why: str) -> None:
        self.set_override(service, None)
        log.info("traffic override cleared", extra={"service": service.name, "why": why})
