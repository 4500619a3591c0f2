"""The dashboard's JSON, built for one page of services or one service at a time, so that its cost does not grow
with the number of services (past sorting and filtering their names: ~3 ms at 10,000).

- `matching` and `summaries`: a page of services matching a search, each as a summary row (URL, split, tags,
  ready, rollout).
- `service_detail`: one service: its view as /status has it, every revision (`ferry revisions`), the running
  revisions' instances and autoscaling (the scale changes are the instances over time and the autoscaler's
  decisions), the rollout with each check's verdict, and its revisions' traffic over the last 15 minutes.
- `overview`: the counts, the applied file, and the gateways with their sync state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from .history import TrafficHistory

MAX_LIMIT = 200
DEFAULT_LIMIT = 50
MAX_QUERY = 200


class UiLeader(Protocol):
    """What the dashboard asks of the leader (api.Leader's calls, and these)."""

    history: TrafficHistory

    def service_names(self) -> list[str]: ...

    def gateways_status(self) -> list[dict]: ...

    def config_status(self) -> dict: ...

    def revision_status(self, name: str) -> dict: ...

    def services_status(self, service: str | None) -> Iterable[dict]: ...

    def revisions_status(self, service: str | None) -> Iterable[dict]: ...


def page_bounds(query: dict) -> tuple[str, int, int]:
    """(search, offset, limit) from a query string, clamped. ValueError: not numbers."""
    q = str(query.get("q", ""))[:MAX_QUERY].strip().lower()
    offset = max(0, int(query.get("offset", 0)))
    limit = min(MAX_LIMIT, max(1, int(query.get("limit", DEFAULT_LIMIT))))
    return q, offset, limit


def matching(names: list[str], q: str) -> list[str]:
    """Names containing every word of the search (sorted as given)."""
    found = names
    for word in q.split():
        found = [name for name in found if word in name.lower()]
    return found


def summaries(leader: UiLeader, names: list[str]) -> Iterator[dict]:
    for name in names:
        try:
            (view,) = leader.services_status(name)
        except (KeyError, ValueError):
            continue  # gone since the names were read
        rollout = view.get("rollout")
        ready = next((c["status"] for c in view.get("conditions", ()) if c.get("type") == "Ready"), None)
        yield {
            "name": name, "url": view["url"], "latest_ready": view["latest_ready"],
            "latest_created": view["latest_created"], "routed": view["routed"], "waiting": view["waiting"],
            "split_owner": view["split_owner"], "ready": ready,
            "traffic": view["traffic"],
            "rollout": {"phase": rollout.get("phase"), "weight": rollout.get("weight")} if rollout else None,
        }


def service_detail(leader: UiLeader, name: str) -> dict:
    """KeyError: no such service. Costs the same at any number of services: one service's view, its revisions'
    entries, and the running ones' autoscaling (no walk over every revision, as /status?service= makes)."""
    (view,) = leader.services_status(name)
    revisions = list(leader.revisions_status(name))
    for entry in revisions:
        live = None
        if entry["state"] != "stopped":
            try:
                live = leader.revision_status(entry["name"])
            except KeyError:
                pass  # gone meanwhile
        entry["autoscaling"] = live.get("autoscaling") if live else None
        entry["endpoints"] = live.get("endpoints", []) if live else []
    return {"name": name, "service": view, "revisions": revisions, "gateways": leader.gateways_status(),
            "traffic_history": leader.history.for_service(name)}


def overview(leader: UiLeader) -> dict:
    gateways = leader.gateways_status()
    return {"services": len(leader.service_names()), "config": leader.config_status(), "gateways": gateways,
            "gateways_in_sync": sum(1 for g in gateways if g.get("connected") and g.get("in_sync")),
            "gateways_connected": sum(1 for g in gateways if g.get("connected")),
            "history": {"revisions": leader.history.tracked(), "every_s": leader.history.every_s}}
