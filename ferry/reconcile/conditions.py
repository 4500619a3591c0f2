"""Knative's conditions, derived from ferry's status views: pure functions of the JSON views status.py builds,
so `ferry service describe`, `ferry revision list` and `ferry wait` read the same verdicts the API gives.

A revision has Ready, ContainerHealthy, ResourcesAvailable and Active (Active is informational, as in Knative: a
revision at zero is Ready and not Active); a service has Ready, ConfigurationsReady (its latest created revision)
and RoutesReady (the gateways serve the file's traffic). Each condition is {"type", "status": "True" | "False" |
"Unknown", "reason", "message", "severity": "" | "Info"}. "Unknown" means not yet (starting, waiting, rolling out,
gateways not in sync); "False" means it failed and waiting will not help (a command that cannot start or keeps
exiting, a rolled-back rollout).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"
ENDED_BADLY = {"rolled-back": "RolledBack", "aborted": "RolloutAborted"}  # revision_results -> Ready's reason


def condition(type_: str, status: str, reason: str | None = None, message: str | None = None,
              severity: str = "") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message, "severity": severity}


def summary(type_: str, parts: Sequence[dict]) -> dict:
    """A "happy" condition over its parts (Knative's ConditionSet): the first False, else the first Unknown (with
    its reason and message), else True. Informational parts do not count."""
    counted = [c for c in parts if c["severity"] != "Info"]
    for status in (FALSE, UNKNOWN):
        for part in counted:
            if part["status"] == status:
                return condition(type_, status, part["reason"], part["message"])
    return condition(type_, TRUE)


def revision_conditions(revision: Mapping) -> list[dict]:
    """Conditions of one revision, from its entry in `GET /revisions/SERVICE` (state, ready, desired, managed,
    instances, rollout)."""
    state = revision["state"]
    ready = revision.get("ready") or 0
    if state == "stopped":
        message = "not running: no traffic names it"
        container = condition("ContainerHealthy", UNKNOWN, "Stopped", message)
        resources = condition("ResourcesAvailable", UNKNOWN, "Stopped", message)
    else:
        container = _container(revision, state, ready)
        resources = _resources(revision, state, ready)
    active = _active(state, ready)
    parts = [container, resources]
    rollout = revision.get("rollout") or {}
    if rollout.get("result") in ENDED_BADLY:
        # ferry keeps it out of latestRevision (until `ferry rollout retry`): for the service, it failed.
        failed = condition("Rollout", FALSE, ENDED_BADLY[rollout["result"]],
                           f"rollout {rollout['result']}" + (f": {rollout['reason']}" if rollout.get("reason") else ""))
        parts = [failed, *parts]
    return [summary("Ready", parts), container, resources, active]


def _container(revision: Mapping, state: str, ready: int) -> dict:
    """False while no instance is ready and some cannot start or keep exiting (ferry keeps retrying, with backoff)."""
    if not revision.get("managed", True):
        return condition("ContainerHealthy", TRUE, message="endpoints given in the file (ferry runs nothing)")
    instances = revision.get("instances") or ()
    cannot_start = [i for i in instances if i.get("error")]
    exited = [i for i in instances if not i.get("error") and i.get("restarts") and not i.get("ready")]
    if ready == 0 and cannot_start:
        first = cannot_start[0]
        return condition("ContainerHealthy", FALSE, "StartFailed",
                         f"{first['error']} ({_count(cannot_start, 'instance')}, {_restarts(cannot_start)})")
    if ready == 0 and exited:
        first = exited[0]
        log = f"; its log: {first['log']}" if first.get("log") else ""
        return condition("ContainerHealthy", FALSE, "ExitedBeforeReady",
                         f"{_count(exited, 'instance')} exited and {'is' if len(exited) == 1 else 'are'} being "
                         f"restarted ({_restarts(exited)}){log}")
    if ready:
        troubled = cannot_start + exited
        note = f"{_count(troubled, 'instance')} restarting ({_restarts(troubled)})" if troubled else None
        return condition("ContainerHealthy", TRUE, message=note)
    if state in ("at zero", "activating"):
        return condition("ContainerHealthy", TRUE)
    if state == "retiring":
        return condition("ContainerHealthy", UNKNOWN, "Retiring", "leaving: no traffic names it")
    return condition("ContainerHealthy", UNKNOWN, "Deploying", _not_ready_yet(revision))


def _resources(revision: Mapping, state: str, ready: int) -> dict:
    if ready or state in ("at zero", "activating"):  # at zero, or waking: it was ready, the activator holds requests
        return condition("ResourcesAvailable", TRUE)
    if state == "retiring":
        return condition("ResourcesAvailable", UNKNOWN, "Retiring", "leaving: no traffic names it")
    return condition("ResourcesAvailable", UNKNOWN, "Deploying", _not_ready_yet(revision))


def _active(state: str, ready: int) -> dict:
    if state in ("stopped", "retiring"):
        return condition("Active", FALSE, "NoTraffic", "no traffic names it", severity="Info")
    if state == "at zero":
        return condition("Active", FALSE, "NoTraffic", "scaled to zero: the activator wakes it on the next request",
                         severity="Info")
    if ready:
        return condition("Active", TRUE, severity="Info")
    if state == "activating":
        return condition("Active", UNKNOWN, "Activating", "waking from zero for a request", severity="Info")
    return condition("Active", UNKNOWN, "Deploying", severity="Info")


def _not_ready_yet(revision: Mapping) -> str:
    desired = revision.get("desired")
    of = f"/{desired}" if desired is not None else ""
    return f"{revision.get('ready') or 0}{of} instances ready (waiting for the readiness probe)"


def _count(items: Sequence, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _restarts(instances: Iterable[Mapping]) -> str:
    total = sum(i.get("restarts") or 0 for i in instances)
    return f"{total} restart{'' if total == 1 else 's'} so far"


def service_conditions(service: Mapping, latest: Mapping | None, gateways: Sequence[Mapping]) -> list[dict]:
    """Conditions of one service, from its view in `GET /status?service=NAME` (waiting, rollout, split owner),
    the entry of its latest created revision with that revision's conditions, and the gateways' status."""
    configurations = _configurations(service, latest)
    routes = _routes(service, gateways)
    return [summary("Ready", [configurations, routes]), configurations, routes]


def _configurations(service: Mapping, latest: Mapping | None) -> dict:
    """Knative's ConfigurationsReady: the latest created revision is ready."""
    name = service.get("latest_created")
    if latest is None:
        return condition("ConfigurationsReady", UNKNOWN, "RevisionMissing", f"revision {name} is not known yet")
    ready = latest["conditions"][0]
    if ready["status"] == TRUE:
        return condition("ConfigurationsReady", TRUE)
    if ready["status"] == FALSE:
        return condition("ConfigurationsReady", FALSE, "RevisionFailed",
                         f'Revision "{name}" failed with message: {ready["message"]}')
    return condition("ConfigurationsReady", UNKNOWN, ready["reason"],
                     f"revision {name} is not ready yet: {ready['message']}")


def _routes(service: Mapping, gateways: Sequence[Mapping]) -> dict:
    """Knative's RoutesReady: what the file's traffic says is what every gateway serves."""
    if service.get("waiting"):
        return condition("RoutesReady", UNKNOWN, "RevisionMissing",
                         f"{service['waiting']}; the gateways keep serving the previous traffic")
    rollout = service.get("rollout") or {}
    if rollout.get("active"):
        reason = "AwaitingPromotion" if rollout.get("phase") == "awaiting-promotion" else "RolloutInProgress"
        return condition("RoutesReady", UNKNOWN, reason,
                         f"{rollout.get('strategy')} rollout {rollout.get('stable')} -> {rollout.get('candidate')}: "
                         f"step {rollout.get('step')}, {rollout.get('weight')}% of main traffic to the candidate")
    connected = [g for g in gateways if g.get("connected")]
    if not connected:
        return condition("RoutesReady", UNKNOWN, "IngressNotConfigured", "no gateway is connected")
    behind = [g for g in connected if not g.get("in_sync")]
    if behind:
        nack = next((g["last_nack"] for g in behind if g.get("last_nack")), None)
        why = f"; last rejection ({nack['type']}): {nack['message'][:200]}" if nack else ""
        return condition("RoutesReady", UNKNOWN, "IngressNotConfigured",
                         f"gateway {', '.join(g['node'] for g in behind)} has not acknowledged the latest "
                         f"configuration yet{why}")
    owner = service.get("split_owner", "file")
    return condition("RoutesReady", TRUE, message=None if owner == "file" else f"main split: {owner} (ferry traffic)")


def is_true(conditions: Sequence[Mapping], type_: str = "Ready") -> bool:
    return any(c["type"] == type_ and c["status"] == TRUE for c in conditions)
