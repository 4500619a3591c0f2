"""Revision history: every template a service ever had, as immutable, numbered revisions, in SQLite.

Knative keeps Revisions as API objects; ferry keeps them in a small WAL-mode database beside the
routes file, so names, generations and "latest ready" survive restarts and re-applies.
A template is identified by a digest of its canonical JSON: re-applying it creates nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from .errors import ConfigError, Problem, format_path
from .schema import RoutesFile, Template

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    name       TEXT PRIMARY KEY,
    service    TEXT NOT NULL,
    generation INTEGER NOT NULL,      -- per service, 1, 2, 3...; never reused
    digest     TEXT NOT NULL,         -- sha256 of the template's canonical JSON
    template   TEXT NOT NULL,         -- that canonical JSON
    created_at REAL NOT NULL,
    UNIQUE (service, generation)
);
CREATE TABLE IF NOT EXISTS services (
    name         TEXT PRIMARY KEY,
    latest_ready TEXT REFERENCES revisions (name)
);
CREATE TABLE IF NOT EXISTS rollouts (       -- a service's rollout in progress (or its last), as the engine's JSON
    service    TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revision_results (  -- how a revision's rollout ended: promoted, rolled-back, aborted
    revision TEXT PRIMARY KEY REFERENCES revisions (name),
    result   TEXT NOT NULL,
    reason   TEXT,
    at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS traffic_overrides (  -- `ferry traffic`: an imperative split, until reset
    service TEXT PRIMARY KEY,
    splits  TEXT NOT NULL,              -- JSON [[revision, percent], ...]
    at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (  -- the last configuration applied: what a surviving data plane serves
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    path TEXT NOT NULL,
    text TEXT NOT NULL,
    at   REAL NOT NULL
);
PRAGMA user_version = 1;
"""
log = logging.getLogger("ferry.routing")
_SHOWN_NAMES = 10  # known revisions listed in a message


@dataclass(frozen=True)
class Revision:
    service: str
    name: str
    generation: int
    digest: str
    template: Template
    created_at: float


class _Newest(NamedTuple):
    """A service's newest revision, without its template."""

    name: str
    generation: int
    digest: str
    created_at: float


@dataclass(frozen=True)
class RevisionPlan:
    """Per service, the revision its current template maps to (existing or to be created), and which are new."""

    current: dict[str, Revision]
    new: tuple[Revision, ...]


@dataclass
class History:
    """A revision history kept elsewhere (on Kubernetes: the Deployments), for RevisionStore.import_history."""

    revisions: list[Revision] = field(default_factory=list)
    latest_ready: dict[str, str] = field(default_factory=dict)  # service -> revision
    results: dict[str, tuple[str, str | None, float]] = field(default_factory=dict)  # revision -> result
    rollouts: dict[str, tuple[str, float]] = field(default_factory=dict)  # service -> (state JSON, at)
    traffic: dict[str, tuple[list[tuple[str, int]] | None, float]] = field(default_factory=dict)


def canonical_template(template: Template) -> str:
    """Fields left at their defaults are omitted, so adding a field with a default to ferry later does not
    change the digest of every existing template (which would restart every service)."""
    data = template.model_dump(mode="json", exclude_defaults=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def template_digest(template: Template) -> str:
    return hashlib.sha256(canonical_template(template).encode()).hexdigest()


def default_store_path(routes_path: Path) -> Path:
    """Where the revision history of a routes file lives unless told otherwise: .ferry/state.db beside it."""
    return Path(routes_path).absolute().parent / ".ferry" / "state.db"


def revision_name(service: str, generation: int) -> str:
    return f"{service}-{generation:05d}"


class StoreObserver(Protocol):
    """Told of every write after the fact, to keep a copy elsewhere (Kubernetes: the Deployments)."""

    def latest_ready_set(self, service: str, revision: str, at: float) -> None: ...

    def result_set(self, revision: str, result: str | None, reason: str | None, at: float) -> None: ...

    def rollout_saved(self, service: str, state: str, at: float) -> None: ...

    def traffic_set(self, service: str, splits: list[tuple[str, int]] | None, at: float) -> None: ...


class RevisionStore:
    """Owned by one process at a time for writes; other processes (`ferry validate`) may read concurrently."""

    observer: StoreObserver | None = None

    def __init__(self, path: Path | str):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        if str(path) != ":memory:":
            # Private: templates' env values are in it. SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            os.chmod(path, 0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes; WAL keeps it consistent
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(_SCHEMA)

    def __enter__(self) -> RevisionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- planning -----------------------------------------------------------------------------------

    def plan(self, spec: RoutesFile) -> RevisionPlan:
        """Which revision each service's template maps to; reads only. Raises ConfigError (no file, no lines)."""
        plan, problems = self.draft(spec)
        if problems:
            raise ConfigError("", problems)
        return plan

    def draft(self, spec: RoutesFile, known: Mapping[str, Revision] | None = None) -> tuple[RevisionPlan, list[Problem]]:
        """plan() without raising: a plan for the services that have no problem, and the problems.

        `known` maps services to the revision their (unchanged) template already is; they cost nothing."""
        known = known or {}
        changed = [name for name in spec.services if name not in known]
        newest = self._newest_revisions() if len(changed) > 100 else self._newest_of(changed)
        current: dict[str, Revision] = {}
        planned: dict[str, Revision] = {}  # the new revisions, by name
        problems: list[Problem] = []
        now = time.time()
        for service, service_spec in spec.services.items():
            if service in known:
                current[service] = known[service]
                continue
            template = service_spec.template
            digest = template_digest(template)
            existing = self._existing(service, template, digest, newest.get(service), planned)
            if isinstance(existing, Problem):
                problems.append(existing)
            elif existing is not None:
                current[service] = existing
            else:
                revision = self._next(service, template, digest, newest.get(service), planned, now)
                current[service] = planned[revision.name] = revision
        return RevisionPlan(current, tuple(planned.values())), problems

    def _existing(
        self, service: str, template: Template, digest: str, newest: _Newest | None, planned: dict[str, Revision]
    ) -> Revision | Problem | None:
        """The revision the template already is (None: it needs a new one), or why it cannot be applied."""
        if template.name is None:
            if newest is not None and newest.digest == digest:  # re-applied unchanged
                return Revision(service, newest.name, newest.generation, digest, template, newest.created_at)
            return None  # new, or changed, or back to an older template: Knative makes a new revision
        named = planned.get(template.name) or self.get(template.name)
        if named is None:
            return None
        where = format_path(("services", service, "template", "name"))
        if named.service != service:
            return Problem(
                where, f"revision {named.name} already belongs to service {named.service}: choose another template.name"
            )
        if named.digest != digest:
            return Problem(
                where,
                f"revision {named.name} already exists with a different template; revisions are immutable: "
                "choose a new template.name or remove it",
            )
        return Revision(service, named.name, named.generation, digest, template, named.created_at)

    def _next(
        self,
        service: str,
        template: Template,
        digest: str,
        newest: _Newest | None,
        planned: dict[str, Revision],
        now: float,
    ) -> Revision:
        """A new revision: the service's next generation, named by template.name or <service>-<generation>."""
        generation = newest.generation + 1 if newest else 1
        if template.name is not None:
            return Revision(service, template.name, generation, digest, template, now)
        while self._owner(name := revision_name(service, generation)) or name in planned:
            generation += 1  # taken by a revision named by hand: skip the number rather than fail
        return Revision(service, name, generation, digest, template, now)

    def check_references(
        self, spec: RoutesFile, plan: RevisionPlan, skip: Mapping[str, object] | None = None
    ) -> list[Problem]:
        """Every `revision:` in traffic must name a revision of that service, stored or about to be.
        Services in `skip` are unchanged since they were last checked (revisions are never deleted)."""
        problems: list[Problem] = []
        planned = {r.name: r.service for r in plan.new}
        for service, service_spec in spec.services.items():
            if skip and service in skip:
                continue
            for i, target in enumerate(service_spec.traffic or ()):
                name = target.revision
                if name is None:
                    continue
                owner = planned.get(name) or self._owner(name)
                if owner == service:
                    continue
                where = format_path(("services", service, "traffic", i, "revision"))
                if owner is not None:
                    message = (
                        f"revision {name} belongs to service {owner}, not {service}: "
                        f"name a revision of {service} or use latestRevision: true"
                    )
                else:
                    message = (
                        f"revision {name} does not exist for service {service}; "
                        f"{self._known(service, plan)}: name one of them or use latestRevision: true"
                    )
                problems.append(Problem(where, message))
        return problems

    def commit(self, plan: RevisionPlan) -> None:
        """Insert the plan's new revisions, all or none."""
        rows = [
            (r.name, r.service, r.generation, r.digest, canonical_template(r.template), r.created_at) for r in plan.new
        ]
        try:
            with _transaction(self._db):
                self._db.executemany("INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as exc:
            raise RuntimeError(f"revision history changed since this plan was made ({exc}): plan again") from exc

    # -- reading ------------------------------------------------------------------------------------

    def revisions(self, service: str) -> list[Revision]:
        """The service's revisions, oldest first."""
        rows = self._db.execute(f"{_SELECT} WHERE service = ? ORDER BY generation", (service,))
        return [_revision(row) for row in rows]

    def get(self, name: str) -> Revision | None:
        row = self._db.execute(f"{_SELECT} WHERE name = ?", (name,)).fetchone()
        return _revision(row) if row else None

    def listing(self, service: str) -> list[tuple[str, str, int, float]]:
        """(service, name, generation, created_at) of the service's revisions, oldest first: revisions() without
        reading their templates (what a list of revisions needs, at a fraction of the cost)."""
        return self._db.execute(
            "SELECT service, name, generation, created_at FROM revisions WHERE service = ? ORDER BY generation",
            (service,)).fetchall()

    def latest_created(self, service: str) -> Revision | None:
        row = self._db.execute(f"{_SELECT} WHERE service = ? ORDER BY generation DESC LIMIT 1", (service,)).fetchone()
        return _revision(row) if row else None

    def latest_ready(self, service: str) -> str | None:
        row = self._db.execute("SELECT latest_ready FROM services WHERE name = ?", (service,)).fetchone()
        return row[0] if row else None

    def set_latest_ready(self, service: str, revision: str) -> None:
        """Persisted, so after a restart latestRevision keeps pointing where it did."""
        self.set_latest_ready_many({service: revision})

    def set_latest_ready_many(self, latest: Mapping[str, str]) -> None:
        """set_latest_ready for many services in one transaction (10,000 services becoming ready at once)."""
        for service, revision in latest.items():
            if self._owner(revision) != service:
                raise ValueError(f"revision {revision} is not a revision of service {service}")
        with _transaction(self._db):
            self._db.executemany(
                "INSERT INTO services (name, latest_ready) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET latest_ready = excluded.latest_ready",
                latest.items(),
            )
        if self.observer is not None:
            now = time.time()
            for service, revision in latest.items():
                self.observer.latest_ready_set(service, revision, now)

    def import_history(self, history: History) -> int:
        """Take in a history kept elsewhere (another replica's, from Kubernetes); it wins over what this store
        holds, except for a revision whose name or generation this store gave a different template: that one is
        kept and reported. Returns how many revisions were new here. Not told to the observer (it came from there)."""
        added = 0
        with _transaction(self._db):
            for r in history.revisions:
                row = self._db.execute(
                    "SELECT name, digest FROM revisions WHERE name = ? OR (service = ? AND generation = ?)",
                    (r.name, r.service, r.generation),
                ).fetchone()
                if row is None:
                    self._db.execute("INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?)", (
                        r.name, r.service, r.generation, r.digest, canonical_template(r.template), r.created_at))
                    added += 1
                elif row != (r.name, r.digest):
                    log.warning("revision history differs from the shared one; keeping this store's",
                                extra={"revision": r.name, "stored_as": row[0]})
            for service, revision in history.latest_ready.items():
                if self._owner(revision) == service:
                    self._db.execute(
                        "INSERT INTO services (name, latest_ready) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET latest_ready = excluded.latest_ready", (service, revision))
            for revision, (result, reason, at) in history.results.items():
                if self._owner(revision) is not None:
                    self._db.execute(
                        "INSERT INTO revision_results VALUES (?, ?, ?, ?) ON CONFLICT (revision) DO UPDATE SET"
                        " result = excluded.result, reason = excluded.reason, at = excluded.at",
                        (revision, result, reason, at))
            for service, (state, at) in history.rollouts.items():
                self._db.execute(
                    "INSERT INTO rollouts VALUES (?, ?, ?) ON CONFLICT (service) DO UPDATE SET state = excluded.state,"
                    " updated_at = excluded.updated_at WHERE excluded.updated_at >= rollouts.updated_at",
                    (service, state, at))
            for service, (splits, at) in history.traffic.items():
                if splits is None:
                    self._db.execute("DELETE FROM traffic_overrides WHERE service = ? AND at <= ?", (service, at))
                else:
                    self._db.execute(
                        "INSERT INTO traffic_overrides VALUES (?, ?, ?) ON CONFLICT (service) DO UPDATE SET"
                        " splits = excluded.splits, at = excluded.at WHERE excluded.at >= traffic_overrides.at",
                        (service, json.dumps(splits), at))
        return added

    # -- rollouts, their results, and imperative traffic --------------------------------------------

    def rollout(self, service: str) -> str | None:
        row = self._db.execute("SELECT state FROM rollouts WHERE service = ?", (service,)).fetchone()
        return row[0] if row else None

    def save_rollout(self, service: str, state: str) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO rollouts VALUES (?, ?, ?) ON CONFLICT (service) DO UPDATE SET state = excluded.state,"
            " updated_at = excluded.updated_at",
            (service, state, now),
        )
        if self.observer is not None:
            self.observer.rollout_saved(service, state, now)

    def set_result(self, revision: str, result: str, reason: str | None = None) -> None:
        now = time.time()
        self._db.execute(
            "INSERT INTO revision_results VALUES (?, ?, ?, ?) ON CONFLICT (revision) DO UPDATE SET"
            " result = excluded.result, reason = excluded.reason, at = excluded.at",
            (revision, result, reason, now),
        )
        if self.observer is not None:
            self.observer.result_set(revision, result, reason, now)

    def clear_result(self, revision: str) -> None:
        self._db.execute("DELETE FROM revision_results WHERE revision = ?", (revision,))
        if self.observer is not None:
            self.observer.result_set(revision, None, None, time.time())

    def results(self, service: str) -> dict[str, tuple[str, str | None, float]]:
        """revision -> (result, reason, when) for the service's revisions that went through a rollout."""
        rows = self._db.execute(
            "SELECT r.revision, r.result, r.reason, r.at FROM revision_results r JOIN revisions v ON v.name = r.revision"
            " WHERE v.service = ?",
            (service,),
        )
        return {revision: (result, reason, at) for revision, result, reason, at in rows}

    def save_applied(self, path: Path, text: str) -> None:
        """The configuration now served, so that a ferry restarted after a crash first serves exactly that."""
        self._db.execute("INSERT INTO applied VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET path = excluded.path,"
                         " text = excluded.text, at = excluded.at", (str(path), text, time.time()))

    def last_applied(self) -> tuple[Path, str] | None:
        row = self._db.execute("SELECT path, text FROM applied WHERE id = 1").fetchone()
        return (Path(row[0]), row[1]) if row else None

    def traffic_override(self, service: str) -> list[tuple[str, int]] | None:
        row = self._db.execute("SELECT splits FROM traffic_overrides WHERE service = ?", (service,)).fetchone()
        return [tuple(split) for split in json.loads(row[0])] if row else None

    def set_traffic_override(self, service: str, splits: list[tuple[str, int]] | None) -> None:
        now = time.time()
        if splits is None:
            self._db.execute("DELETE FROM traffic_overrides WHERE service = ?", (service,))
        else:
            self._db.execute(
                "INSERT INTO traffic_overrides VALUES (?, ?, ?) ON CONFLICT (service) DO UPDATE SET"
                " splits = excluded.splits, at = excluded.at",
                (service, json.dumps(splits), now),
            )
        if self.observer is not None:
            self.observer.traffic_set(service, splits, now)

    def _newest_revisions(self) -> dict[str, _Newest]:
        # SQLite returns the other columns from the row holding MAX(generation).
        rows = self._db.execute(
            "SELECT service, name, MAX(generation), digest, created_at FROM revisions GROUP BY service"
        )
        return {service: _Newest(*rest) for service, *rest in rows}

    def _newest_of(self, services: list[str]) -> dict[str, _Newest]:
        """_newest_revisions for a few services: one indexed lookup each instead of a scan of all."""
        newest = {}
        for service in services:
            row = self._db.execute(
                "SELECT name, generation, digest, created_at FROM revisions WHERE service = ? "
                "ORDER BY generation DESC LIMIT 1",
                (service,),
            ).fetchone()
            if row:
                newest[service] = _Newest(*row)
        return newest

    def _owner(self, name: str) -> str | None:
        row = self._db.execute("SELECT service FROM revisions WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def _known(self, service: str, plan: RevisionPlan) -> str:
        names = [
            name
            for (name,) in self._db.execute(
                "SELECT name FROM revisions WHERE service = ? ORDER BY generation", (service,)
            )
        ]
        names += [r.name for r in plan.new if r.service == service]
        if not names:
            return f"service {service} has no revisions"
        older = len(names) - _SHOWN_NAMES
        shown = ", ".join(names[-_SHOWN_NAMES:])
        return f"known revisions: {shown}" + (f" (and {older} older)" if older > 0 else "")


_SELECT = "SELECT service, name, generation, digest, template, created_at FROM revisions"


def _revision(row: tuple[str, str, int, str, str, float]) -> Revision:
    service, name, generation, digest, template, created_at = row
    return Revision(service, name, generation, digest, Template.model_validate_json(template), created_at)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection runs in autocommit mode)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
