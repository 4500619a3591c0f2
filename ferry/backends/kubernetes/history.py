"""Revision history kept where every ferry replica can read it: on the revisions' own Deployments.

A replica's SQLite is its own (an emptyDir, in deploy/), so without this a replica that becomes leader would
start a history of its own: name the current template hello-00001 when it is hello-00007 (and adopt the old
hello-00001 Deployment running other code), forget which revision was latest ready, and retry a canary that was
rolled back. So the leader writes each fact of the history as an annotation of the revision's Deployment while
it writes SQLite, and a replica imports them before its first apply.

Pure: which annotations say what, and what a set of Deployments says. The writes are the backend's.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable, Mapping

from ...routing.revisions import History, Revision, RevisionStore, canonical_template
from ...routing.schema import Template

log = logging.getLogger("ferry.backends.kubernetes.history")

GENERATION = "ferry.dev/generation"
DIGEST = "ferry.dev/digest"  # also read by the backend when it adopts an existing Deployment
TEMPLATE = "ferry.dev/template"
CREATED_AT = "ferry.dev/created-at"
LATEST_READY_AT = "ferry.dev/latest-ready-at"  # on the revision that became the service's latest ready
RESULT = "ferry.dev/result"  # how its rollout ended: {"result", "reason", "at"}
ROLLOUT = "ferry.dev/rollout"  # on a rollout's candidate: {"state": the engine's JSON, "at"}
TRAFFIC = "ferry.dev/traffic"  # on the service's newest revision: `ferry traffic` {"splits": [...] | null, "at"}

Annotate = Callable[[str, Mapping[str, str | None]], None]  # revision -> annotations to set (None: remove)


def creation_annotations(revision: Revision) -> dict[str, str]:
    """What a revision's Deployment carries from its creation: enough to rebuild the revision."""
    return {
        GENERATION: str(revision.generation),
        DIGEST: revision.digest,
        TEMPLATE: canonical_template(revision.template),
        CREATED_AT: repr(revision.created_at),
    }


def read_history(deployments: Iterable[Mapping[str, Any]], *, service_label: str, revision_label: str) -> History:
    """Every fact the Deployments carry; per service, the newest write of each fact wins. A Deployment without
    ferry's history annotations (made by an older ferry) or with unreadable ones is skipped, with a warning."""
    history = History()
    ready_at: dict[str, float] = {}
    for obj in deployments:
        meta = obj.get("metadata") or {}
        notes = meta.get("annotations") or {}
        labels = meta.get("labels") or {}
        name = labels.get(revision_label) or meta.get("name")
        service = labels.get(service_label)
        if not name or not service or GENERATION not in notes:
            continue
        try:
            revision = Revision(
                service=service, name=name, generation=int(notes[GENERATION]), digest=notes[DIGEST],
                template=Template.model_validate_json(notes[TEMPLATE]), created_at=float(notes[CREATED_AT]),
            )
            history.revisions.append(revision)
            if LATEST_READY_AT in notes:
                at = float(notes[LATEST_READY_AT])
                if at >= ready_at.get(service, float("-inf")):
                    ready_at[service] = at
                    history.latest_ready[service] = name
            if RESULT in notes:
                result = json.loads(notes[RESULT])
                history.results[name] = (str(result["result"]), result.get("reason"), float(result["at"]))
            if ROLLOUT in notes:
                rollout = json.loads(notes[ROLLOUT])
                if float(rollout["at"]) >= history.rollouts.get(service, ("", float("-inf")))[1]:
                    history.rollouts[service] = (str(rollout["state"]), float(rollout["at"]))
            if TRAFFIC in notes:
                traffic = json.loads(notes[TRAFFIC])
                if float(traffic["at"]) >= history.traffic.get(service, (None, float("-inf")))[1]:
                    splits = traffic["splits"]
                    history.traffic[service] = (
                        None if splits is None else [(str(r), int(p)) for r, p in splits], float(traffic["at"]))
        except (KeyError, TypeError, ValueError) as err:
            log.warning("deployment has unreadable revision history; skipped", extra={"deployment": meta.get("name"),
                                                                                      "error": str(err)})
    history.revisions.sort(key=lambda r: (r.service, r.generation))
    return history


class DeploymentHistory:
    """RevisionStore's observer on Kubernetes: each fact the leader stores is also written to a Deployment."""

    def __init__(self, store: RevisionStore, annotate: Annotate):
        self._store = store
        self._annotate = annotate

    def latest_ready_set(self, service: str, revision: str, at: float) -> None:
        self._annotate(revision, {LATEST_READY_AT: repr(at)})

    def result_set(self, revision: str, result: str | None, reason: str | None, at: float) -> None:
        value = None if result is None else json.dumps({"result": result, "reason": reason, "at": at})
        self._annotate(revision, {RESULT: value})

    def rollout_saved(self, service: str, state: str, at: float) -> None:
        candidate = json.loads(state).get("candidate")
        if candidate:
            self._annotate(candidate, {ROLLOUT: json.dumps({"state": state, "at": at})})

    def traffic_set(self, service: str, splits: list[tuple[str, int]] | None, at: float) -> None:
        newest = self._store.latest_created(service)
        if newest is not None:
            self._annotate(newest.name, {TRAFFIC: json.dumps({"splits": splits, "at": at})})
