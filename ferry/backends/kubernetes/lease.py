"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's leaderelection semantics.

ferry can run as several replicas: one leader scales and writes; every replica serves xDS from the same
state. `LeaseElector.run()` keeps one replica the leader:

- the decision is the pure `decide()`; the elector does the I/O around it (read the Lease, write it with
  `metadata.resourceVersion` as precondition, so of two writers exactly one wins and the other gets 409);
- a follower measures a lease's expiry from when IT last saw the record change (`observed_at`, local
  monotonic clock) plus the record's leaseDurationSeconds, never from the remote renewTime: robust to skew
  between the replicas' wall clocks (as client-go does);
- the leader renews every `renew_every_s`; if no renew succeeds within `renew_deadline_s` of the last
  successful one (measured from when that request was sent, which is before any follower can have observed
  it), it steps down (is_leader False, then on_stopped_leading) while its lease is still valid for everyone
  else: renew_deadline_s < duration_s leaves `duration_s - renew_deadline_s` for on_stopped_leading, so two
  leaders never act at once;
- `release()` (shutdown) gives the lease up (holderIdentity unset), so a follower takes over at its next
  retry instead of after the lease duration (client-go's ReleaseOnCancel).

Callbacks (on_started_leading / on_stopped_leading) may be plain or async; they are awaited inline by the
election loop, so they must return promptly (start long-running work as a task, stop it on step-down).
Exceptions they raise are logged, never propagated.

Wire format: leaseDurationSeconds is an integer; a fractional duration_s is written rounded up (followers
then wait slightly longer, never shorter). acquireTime / renewTime are RFC 3339 MicroTime, informative only.

RBAC: in its namespace ferry needs `coordination.k8s.io` `leases`: get, create, update (see RBAC_RULES).

Threads: the blocking `kubernetes` client runs in the default executor (`asyncio.to_thread`), with
`_preload_content=False` and raw JSON bodies, like the backend (api.py). Every call carries a request
timeout; a call still running at the renew deadline is abandoned (its thread finishes on its own; a renew
landing late only extends a lease this replica will read back as its own).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import os
import random
import re
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from .api import json_call, reason, transient

log = logging.getLogger("ferry.backends.kubernetes.lease")

RBAC_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
)

Callback = Callable[[], "Awaitable[Any] | None"]


# ---- the record -------------------------------------------------------------------------------------


def format_micro_time(t: float) -> str:
    """Epoch seconds as Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_FRACTION = re.compile(r"\.(\d+)")


def parse_micro_time(text: str | None) -> float:
    """RFC 3339 (any fraction length, Z or offset) as epoch seconds; 0.0 when absent or unreadable."""
    if not text:
        return 0.0
    text = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec. Equality ignores resource_version: "the record changed" means its content changed."""

    holder: str | None
    acquired_at: float  # epoch seconds (the holder's wall clock; informative)
    renewed_at: float  # epoch seconds (the holder's wall clock; informative)
    duration_s: float
    transitions: int
    resource_version: str | None = field(default=None, compare=False)
    # What the holder tells the other replicas (ferry: where its xDS and API listen); not part of "changed".
    annotations: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @classmethod
    def from_lease(cls, obj: dict[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            acquired_at=parse_micro_time(spec.get("acquireTime")),
            renewed_at=parse_micro_time(spec.get("renewTime")),
            duration_s=float(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=(obj.get("metadata") or {}).get("resourceVersion"),
            annotations=tuple(sorted(((obj.get("metadata") or {}).get("annotations") or {}).items())),
        )

    def to_lease(self, name: str, namespace: str) -> dict[str, Any]:
        """The Lease object to write; carries resourceVersion (the update precondition) when known."""
        metadata: dict[str, Any] = {"name": name, "namespace": namespace}
        if self.resource_version is not None:
            metadata["resourceVersion"] = self.resource_version
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        spec: dict[str, Any] = {
            "leaseDurationSeconds": max(1, math.ceil(self.duration_s)),
            "acquireTime": format_micro_time(self.acquired_at),
            "renewTime": format_micro_time(self.renewed_at),
            "leaseTransitions": self.transitions,
        }
        if self.holder is not None:
            spec["holderIdentity"] = self.holder
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


# ---- the decision (pure) ----------------------------------------------------------------------------


class Action(enum.Enum):
    CREATE = "create"  # no lease: create it, holding it
    RENEW = "renew"  # we hold it: bump renewTime
    TAKE = "take"  # free (no holder) or expired: write ourselves as holder, transitions + 1
    WAIT = "wait"  # someone else holds a live lease


def decide(
    now: float, record: LeaseRecord | None, identity: str, duration_s: float, *, observed_at: float | None = None
) -> Action:
    """What to do with the lease.

    Expiry of someone else's lease: `observed_at + record.duration_s` when observed_at is given (the local
    time at which this replica last saw the record change; `now` must then be on the same local clock), else
    `record.renewed_at + record.duration_s` (remote wall clock; `now` wall clock: exposed to skew).
    `duration_s` is used only when the record carries no duration.
    """
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    if not record.holder:
        return Action.TAKE
    start = observed_at if observed_at is not None else record.renewed_at
    lease = record.duration_s if record.duration_s > 0 else duration_s
    return Action.TAKE if start + lease < now else Action.WAIT


# ---- the elector ------------------------------------------------------------------------------------


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class LeaseElector:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        name: str = "ferry",
        identity: str | None = None,
        duration_s: float = 15.0,
        renew_every_s: float = 5.0,
        retry_every_s: float = 2.0,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        *,
        renew_deadline_s: float | None = None,
        request_timeout_s: float | None = None,
        release_on_cancel: bool = False,
        clock: Callable[[], float] = time.time,
        advertise: dict[str, str] | None = None,
    ) -> None:
        if renew_deadline_s is None:
            renew_deadline_s = duration_s * 2 / 3  # client-go's defaults: 10 s of 15 s
        if not 0 < renew_every_s < renew_deadline_s < duration_s:
            raise ValueError(
                f"need 0 < renew_every_s ({renew_every_s}) < renew_deadline_s ({renew_deadline_s}) "
                f"< duration_s ({duration_s})"
            )
        if retry_every_s <= 0:
            raise ValueError(f"retry_every_s must be > 0, got {retry_every_s}")
        self._coord = k8s.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.duration_s = duration_s
        self.renew_every_s = renew_every_s
        self.retry_every_s = retry_every_s
        self.renew_deadline_s = renew_deadline_s
        t = request_timeout_s if request_timeout_s is not None else renew_deadline_s
        self._request_timeout = (t, t)
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._release_on_cancel = release_on_cancel
        self._wall = clock
        self._advertise = tuple(sorted((advertise or {}).items()))  # written on the Lease while we hold it
        self.observed_record: LeaseRecord | None = None
        self.observed_at = 0.0  # time.monotonic() when observed_record last changed
        self._renewed_mono = 0.0  # time.monotonic() when our last successful write was sent
        self._leading = False
        self._leading_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    # ---- public -------------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def leader(self) -> str | None:
        """The holder as last observed (may be stale; None = no lease or free)."""
        return self.observed_record.holder if self.observed_record else None

    @property
    def leader_annotations(self) -> dict[str, str]:
        """What the current holder advertised on the Lease (empty when nobody holds it)."""
        record = self.observed_record
        return dict(record.annotations) if record is not None and record.holder else {}

    async def wait_leading(self) -> None:
        await self._leading_event.wait()

    async def run(self) -> None:
        """Elect until cancelled: acquire (retrying every retry_every_s), lead while renewals succeed, repeat."""
        self._task = asyncio.current_task()
        try:
            while True:
                await self._acquire()
                await self._start_leading()
                await self._renew_until_lost()
                await self._stop_leading()
        finally:
            if self._leading:
                await self._stop_leading()
            if self._release_on_cancel:
                await self._release_lease()

    async def release(self) -> None:
        """Shutdown: stop run() (if running here), then give the lease up if this replica still holds it."""
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])
        if self._leading:
            await self._stop_leading()
        await self._release_lease()

    # ---- loops --------------------------------------------------------------------------------------

    async def _acquire(self) -> None:
        while True:
            sent = time.monotonic()
            if await self._try_acquire_or_renew(timeout=self.renew_deadline_s):
                self._renewed_mono = sent
                return
            await asyncio.sleep(self.retry_every_s * (1 + 0.2 * random.random()))  # client-go's jitter 1.2

    async def _renew_until_lost(self) -> None:
        while True:
            await asyncio.sleep(max(0.0, self._renewed_mono + self.renew_every_s - time.monotonic()))
            deadline = self._renewed_mono + self.renew_deadline_s
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("lease not renewed before the renew deadline; stepping down",
                                extra={"lease": self.name, "identity": self.identity})
                    return
                sent = time.monotonic()
                if await self._try_acquire_or_renew(timeout=remaining, leading=True):
                    self._renewed_mono = sent
                    break
                if self.observed_record is not None and self.observed_record.holder not in (None, self.identity):
                    log.warning("lease taken by another replica; stepping down",
                                extra={"lease": self.name, "holder": self.observed_record.holder})
                    return
                await asyncio.sleep(max(0.0, min(self.retry_every_s, deadline - time.monotonic())))

    async def _start_leading(self) -> None:
        self._leading = True
        self._leading_event.set()
        log.info("became leader", extra={"lease": self.name, "identity": self.identity})
        await self._callback(self._on_started, "on_started_leading")

    async def _stop_leading(self) -> None:
        self._leading = False  # first: nothing reading is_leader acts after this point
        self._leading_event.clear()
        log.info("stopped leading", extra={"lease": self.name, "identity": self.identity})
        await self._callback(self._on_stopped, "on_stopped_leading")

    async def _callback(self, fn: Callback | None, what: str) -> None:
        if fn is None:
            return
        try:
            result = fn()
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 - a callback must not kill the election
            log.exception("leader election callback failed", extra={"callback": what})

    # ---- one round ----------------------------------------------------------------------------------

    async def _try_acquire_or_renew(self, *, timeout: float, leading: bool = False) -> bool:
        """One read-decide-write round (bounded by `timeout`); True when we hold the lease afterwards."""
        try:
            async with asyncio.timeout(timeout):
                ok = await self._round(leading)
        except TimeoutError:
            ok = False
            self._note_failure("timed out")
        except ApiException as e:
            if not transient(e):
                log.warning("lease request rejected", extra={"lease": self.name, "error": reason(e)})
            ok = False
            self._note_failure(reason(e))
        except Exception as e:  # noqa: BLE001 - connection errors and the like: retried by the loops
            ok = False
            self._note_failure(reason(e))
        else:
            if self._failing:
                self._failing = False
                log.info("lease API reachable again", extra={"lease": self.name})
        return ok

    def _note_failure(self, reason: str) -> None:
        if not self._failing:
            self._failing = True
            log.warning("lease request failed; retrying", extra={"lease": self.name, "error": reason})

    async def _round(self, leading: bool) -> bool:
        # Fast path (client-go): the leader renews on the record it last wrote, without reading first.
        if leading and self.observed_record is not None and self.observed_record.holder == self.identity:
            written = await self._write(Action.RENEW, self.observed_record)
            if written:
                return True
        record = await self._read()
        self._observe(record)
        action = decide(time.monotonic(), record, self.identity, self.duration_s, observed_at=self.observed_at)
        if action is Action.WAIT:
            return False
        return await self._write(action, record)

    def _observe(self, record: LeaseRecord | None) -> None:
        if record != self.observed_record or record is None:
            self.observed_at = time.monotonic()
        self.observed_record = record

    async def _write(self, action: Action, current: LeaseRecord | None) -> bool:
        """Create / renew / take; False on 409 (someone else wrote first: the next round re-reads)."""
        now = self._wall()
        if action is Action.CREATE or current is None:
            new = LeaseRecord(self.identity, now, now, self.duration_s, 0, annotations=self._advertise)
        elif action is Action.RENEW:
            new = replace(current, renewed_at=now, duration_s=self.duration_s, annotations=self._advertise)
        else:  # TAKE
            new = LeaseRecord(self.identity, now, now, self.duration_s, current.transitions + 1,
                              current.resource_version, annotations=self._advertise)
        body = new.to_lease(self.name, self.namespace)
        try:
            if action is Action.CREATE:
                body["metadata"].pop("resourceVersion", None)
                stored = await self._call(self._coord.create_namespaced_lease, self.namespace, body)
            else:
                stored = await self._call(self._coord.replace_namespaced_lease, self.name, self.namespace, body)
        except ApiException as e:
            if e.status in (404, 409):  # lost a race (or the lease was deleted): re-read next round
                log.debug("lease write lost a race", extra={"lease": self.name, "action": action.value})
                return False
            raise
        self.observed_record = LeaseRecord.from_lease(stored)
        self.observed_at = time.monotonic()
        if action is Action.TAKE:
            log.info("lease taken over", extra={"lease": self.name, "previous": current.holder if current else None,
                                                "transitions": new.transitions})
        return True

    async def _read(self) -> LeaseRecord | None:
        try:
            obj = await self._call(self._coord.read_namespaced_lease, self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return LeaseRecord.from_lease(obj)

    async def _release_lease(self) -> None:
        record = self.observed_record
        if record is None or record.holder != self.identity:
            return
        now = self._wall()
        # client-go's release: no holder, 1 s duration; the transition is counted by whoever takes it next.
        released = LeaseRecord(None, now, now, 1.0, record.transitions, record.resource_version)
        try:
            stored = await asyncio.wait_for(
                self._call(self._coord.replace_namespaced_lease, self.name, self.namespace,
                           released.to_lease(self.name, self.namespace)),
                self.renew_deadline_s,
            )
        except Exception as e:  # noqa: BLE001 - best effort: followers take over after the duration anyway
            log.warning("lease release failed", extra={"lease": self.name, "error": reason(e)})
            return
        self.observed_record = LeaseRecord.from_lease(stored)
        self.observed_at = time.monotonic()
        log.info("lease released", extra={"lease": self.name, "identity": self.identity})

    async def _call(self, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
        return await asyncio.to_thread(
            json_call, fn, *args, _preload_content=False, _request_timeout=self._request_timeout
        )
