"""What the controller knows of each service and each revision it runs: plain state, no behaviour beyond
what can be read off it."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from ..backends.base import Endpoint, Workload
from ..rollout import machine
from ..routing.revisions import Revision
from ..routing.schema import ServiceSpec
from ..routing.traffic import ResolvedTraffic, Split
from ..xds import resources as xds

ENDED_BADLY = ("rolled-back", "aborted")
SCALE_EVENTS_KEPT = 20


@dataclass
class RevisionRuntime:
    revision: Revision
    workload: Workload | None  # None: endpoints given in the file (template.endpoints), not run by ferry
    instances: int  # how many the backend is asked to run
    endpoints: tuple[Endpoint, ...] = ()  # the ready ones
    retiring: bool = False
    retire_task: asyncio.Task | None = None
    activator_in_path: bool = False  # managed only: EDS points at the activator, not the instances
    scale_events: deque | None = None  # the latest scale changes, for status (made at the first: 600 B each)
    proven: bool = False  # became ready once (or starts at zero): the activator may wake it for a route

    def note_scale(self, event: dict) -> None:
        if self.scale_events is None:
            self.scale_events = deque(maxlen=SCALE_EVENTS_KEPT)
        self.scale_events.append(event)

    @property
    def managed(self) -> bool:
        """ferry runs its instances (and autoscales them); otherwise its endpoints come from the file."""
        return self.workload is not None

    @property
    def routable(self) -> bool:
        """Requests sent to it now are answered: it has ready instances, or the activator holds them
        while it wakes (Knative routes to a Ready revision even at zero)."""
        return bool(self.endpoints) or (self.managed and self.proven and self.activator_in_path)

    @property
    def name(self) -> str:
        return self.revision.name

    @property
    def cluster(self) -> str:
        return xds.cluster_name(self.revision.service, self.revision.name)


@dataclass
class ServiceRuntime:
    name: str
    spec: ServiceSpec
    current: Revision  # the revision of the file's template (Knative's latestCreatedRevision)
    routes: tuple[xds.HostRoute, ...] = ()  # what the route table holds for this service
    traffic: ResolvedTraffic | None = None  # the split those routes implement
    waiting: str | None = None  # why the file's traffic is not (yet) what gateways serve
    revisions: set[str] = field(default_factory=set)  # revisions this service keeps running
    wanted: frozenset[str] = frozenset()  # what the file's traffic names now, routed or still becoming ready
    rollout: machine.Rollout | None = None  # in progress, or the last one (for status)
    failed: frozenset[str] = frozenset()  # revisions whose rollout was rolled back or aborted (shared when none)
    override: tuple[Split, ...] | None = None  # `ferry traffic`: an imperative main split, until the file agrees
    rollback_ms: float | None = None  # the last rollback: failing check -> every gateway in sync

    @property
    def rolling_out(self) -> bool:
        return self.rollout is not None and self.rollout.active
