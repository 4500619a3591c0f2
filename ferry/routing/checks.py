"""Rules that relate parts of a routes file to each other, which no single model can see.

Pure functions over already-validated models, each returning every Problem it finds, so the loader
can run them even when other parts of the file are broken.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import Problem, format_path
from .fields import HostPort, ip_of, is_loopback
from .schema import (
    PREVIEW_TAG,
    Gateway,
    Rollout,
    ServiceSpec,
    TrafficTarget,
    service_hosts,
    tag_host,
)


def check_routes(gateway: Gateway | None, services: Mapping[str, ServiceSpec],
                 claims: HostClaims | None = None) -> list[Problem]:
    """Every cross-field problem; `gateway` None (itself invalid) skips the host checks that need its domain."""
    problems: list[Problem] = []
    for name, spec in services.items():
        problems += check_service(name, spec)
    if gateway is not None:
        problems += check_hosts(gateway, services, claims)
        if gateway.internal is None:
            problems += [
                Problem(format_path(("services", name, "visibility")),
                        "a private service is served only on gateway.internal, which is not set: add "
                        "gateway.internal (e.g. internal: 127.0.0.1:8081) or make the service public")
                for name, spec in services.items() if spec.visibility == "private"]
    return problems


def check_service(name: str, spec: ServiceSpec) -> list[Problem]:
    problems: list[Problem] = []
    revision_name = spec.template.name
    if revision_name is not None and not revision_name.startswith(f"{name}-"):
        problems.append(
            Problem(
                format_path(("services", name, "template", "name")),
                f"revision name {revision_name!r} must start with '{name}-' (the service name and a dash), "
                f"e.g. '{name}-{revision_name}'",
            )
        )
    if spec.traffic is not None:
        problems += check_traffic(name, spec.traffic)
    if spec.rollout is not None:
        problems += check_rollout(name, spec.rollout, spec.traffic)
    return problems


def check_rollout(service: str, rollout: Rollout, traffic: tuple[TrafficTarget, ...] | None) -> list[Problem]:
    """A rollout moves main traffic to the new revision and ends at the file's traffic, with the new revision
    as the latest: so that traffic must give latestRevision a share; blue-green owns the `preview` tag."""
    base = ("services", service, "rollout")
    problems: list[Problem] = []
    if traffic:  # None: 100% to the latest revision; empty is reported by check_traffic
        latest = [i for i, target in enumerate(traffic) if target.latestRevision]
        if not latest:
            problems.append(
                Problem(
                    format_path(base),
                    "traffic has no latestRevision: true target, so the new revision would never receive traffic "
                    f"once the rollout ends: add a latestRevision: true target to {format_path(base[:2] + ('traffic',))} "
                    "or remove the rollout",
                )
            )
        elif not any(traffic[i].percent for i in latest):
            where = ", ".join(f"traffic[{i}]" for i in latest)
            problems.append(
                Problem(
                    format_path(base),
                    f"the latestRevision: true target ({where}) has percent 0, so the new revision would never "
                    "receive main traffic once the rollout ends: give it a percent above 0 or remove the rollout",
                )
            )
    if rollout.strategy == "blue-green":
        label = f"{PREVIEW_TAG}-{service}"
        if len(label) > 63:
            problems.append(
                Problem(
                    format_path((*base, "strategy")),
                    f"blue-green previews the new revision at the host {label}.<domain>, whose first label is "
                    f"{len(label)} characters; a DNS label holds at most 63: shorten the service name or use "
                    "strategy: canary or gradual",
                )
            )
        for i, target in enumerate(traffic or ()):
            if target.tag == PREVIEW_TAG:
                problems.append(
                    Problem(
                        format_path(("services", service, "traffic", i, "tag")),
                        f"tag {PREVIEW_TAG!r} is taken by the blue-green rollout, which previews the new revision "
                        f"at {label}.<domain>: rename this tag",
                    )
                )
                break  # a repeated tag is reported by check_traffic
    return problems


def check_traffic(service: str, traffic: tuple[TrafficTarget, ...]) -> list[Problem]:
    """Knative's route rules: percents sum to 100, tags are unique, no target is given twice."""
    base = ("services", service, "traffic")
    problems: list[Problem] = []
    total = sum(t.percent for t in traffic)
    if not traffic:
        problems.append(
            Problem(
                format_path(base),
                "traffic is empty: add targets whose percents sum to 100, or remove "
                "traffic to send 100% to the latest ready revision",
            )
        )
    elif total != 100:
        problems.append(
            Problem(
                format_path(base),
                f"percents sum to {total}, they must sum to exactly 100: adjust the percents of {format_path(base)}",
            )
        )
    tags: dict[str, int] = {}
    untagged: dict[str | None, int] = {}  # revision (None = latestRevision) -> first index sending it untagged traffic
    for i, target in enumerate(traffic):
        if target.tag is not None:
            first = tags.setdefault(target.tag, i)
            if first != i:
                problems.append(
                    Problem(
                        format_path((*base, i, "tag")),
                        f"tag {target.tag!r} is already used by traffic[{first}]: "
                        "tags must be unique within a service: rename or remove one",
                    )
                )
            label = f"{target.tag}-{service}"
            if len(label) > 63:
                problems.append(
                    Problem(
                        format_path((*base, i, "tag")),
                        f"the tag's host starts with {label!r}, {len(label)} "
                        "characters; a DNS label holds at most 63: shorten the tag",
                    )
                )
            continue
        first = untagged.setdefault(target.revision, i)
        if first != i:
            what = f"revision {target.revision}" if target.revision else "the latest ready revision"
            merged = traffic[first].percent + target.percent
            problems.append(
                Problem(
                    format_path((*base, i)),
                    f"traffic[{first}] already sends untagged traffic to {what}: "
                    f"merge the two targets into one with percent: {merged}",
                )
            )
    return problems


Loc = tuple[str | int, ...]
HostClaims = dict[str, tuple[ServiceSpec, Gateway, tuple[tuple[str, Loc], ...]]]
"""service -> (its spec, the gateway, the hosts it claims with their YAML paths): kept between loads, so a
one-service edit at 10,000 services re-derives one service's hosts, not all of them."""


def host_claims(name: str, spec: ServiceSpec, gateway: Gateway) -> tuple[tuple[str, Loc], ...]:
    """Every host the service routes, with where the file claims it."""
    hosts = service_hosts(name, spec, gateway)
    claims: list[tuple[str, Loc]] = [(hosts[0], ("services", name))]
    claims += [(host, ("services", name, "hosts", i)) for i, host in enumerate(hosts[1:])]
    seen_tags: set[str] = set()
    for i, target in enumerate(spec.traffic or ()):
        if target.tag is not None and target.tag not in seen_tags:  # a repeated tag is reported elsewhere
            seen_tags.add(target.tag)
            claims.append((tag_host(target.tag, name, gateway), ("services", name, "traffic", i, "tag")))
    if spec.rollout is not None and spec.rollout.strategy == "blue-green" and PREVIEW_TAG not in seen_tags:
        claims.append((tag_host(PREVIEW_TAG, name, gateway), ("services", name, "rollout")))  # a `preview` tag is reported
    return tuple(claims)


def check_hosts(gateway: Gateway, services: Mapping[str, ServiceSpec], cache: HostClaims | None = None) -> list[Problem]:
    """A host routes to one service: service hosts, extra hosts and tag hosts share one namespace. `cache` keeps
    each service's claims for as long as its spec and the gateway are the same objects."""
    owners: dict[str, tuple[str | int, ...]] = {}  # host -> location of the first claim
    problems: list[Problem] = []

    def claim(host: str, loc: tuple[str | int, ...]) -> None:
        first = owners.setdefault(host, loc)
        if first is not loc:
            problems.append(
                Problem(
                    format_path(loc),
                    f"host {host} is claimed by both {_claimant(first)} at {format_path(first)} "
                    f"and {_claimant(loc)}: a host routes to one service only: remove or rename one",
                )
            )

    for name, spec in services.items():
        entry = cache.get(name) if cache is not None else None
        if entry is not None and entry[0] is spec and entry[1] is gateway:
            claims = entry[2]
        else:
            claims = host_claims(name, spec, gateway)
            if cache is not None:
                cache[name] = (spec, gateway, claims)
        for host, loc in claims:
            claim(host, loc)
    if cache is not None and len(cache) > 2 * len(services):  # services removed since: forget them
        for name in [n for n in cache if n not in services]:
            del cache[name]
    return problems


def _claimant(loc: tuple[str | int, ...]) -> str:
    service = loc[1]
    if len(loc) == 2:
        return f"service {service} (its own host)"
    if loc[2] == "hosts":
        return f"service {service} (in its hosts)"
    if loc[2] == "rollout":
        return f"service {service} (the preview host of its blue-green rollout)"
    return f"service {service} (the host of its tag)"


_ANY_HOST = ("0.0.0.0", "::", "")


def _is_listener(endpoint: HostPort, listener: HostPort) -> bool:
    """Whether connecting to `endpoint` reaches `listener` (a wildcard listener is reached on loopback too). Addresses
    are compared as IP addresses (::ffff:127.0.0.1 is 127.0.0.1, 0:0::1 is ::1), names as written."""
    if endpoint.port != listener.port:
        return False
    if _same_host(endpoint.host, listener.host) or (is_loopback(endpoint.host) and is_loopback(listener.host)):
        return True
    return _is_any(listener.host) and (is_loopback(endpoint.host) or _is_any(endpoint.host))


def _same_host(a: str, b: str) -> bool:
    if a == b:
        return True
    ip_a, ip_b = ip_of(a), ip_of(b)
    return ip_a is not None and ip_a == ip_b


def _is_any(host: str) -> bool:
    if host in _ANY_HOST:
        return True
    ip = ip_of(host)
    return ip is not None and ip.is_unspecified


def check_own_listeners(gateway: Gateway | None, services: Mapping[str, ServiceSpec],
                        own: Mapping[HostPort, str]) -> list[Problem]:
    """Endpoints that are one of ferry's own listeners (`own`: address -> what listens there, e.g. its API or
    Envoy's admin) or the gateway itself: published as a revision, anyone who reaches the gateway would reach
    them (ferry's API through the public gateway), or requests would loop."""
    listeners = dict(own)
    if gateway is not None:
        listeners.setdefault(gateway.listen, "the gateway itself (gateway.listen): requests would loop")
        if gateway.internal is not None:
            listeners.setdefault(gateway.internal, "the gateway itself (gateway.internal): requests would loop")
    problems = []
    for name, spec in services.items():
        for i, endpoint in enumerate(spec.template.endpoints or ()):
            what = next((what for listener, what in listeners.items() if _is_listener(endpoint, listener)), None)
            if what is not None:
                problems.append(Problem(
                    format_path(("services", name, "template", "endpoints", i)),
                    f"endpoint {endpoint} is ferry's own listener ({what}): the gateway would serve it to anyone "
                    "who reaches it; give the address of the service's instance"))
    return problems
