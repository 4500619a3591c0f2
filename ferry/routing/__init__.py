"""routes.yaml (or Knative Service manifests, knative.py): parse and validate it with precise errors, keep revision history, resolve traffic."""

from .errors import ConfigError, Problem
from .loader import LoadedRoutes, load_routes, validate
from .revisions import Revision, RevisionPlan, RevisionStore, default_store_path
from .schema import (
    Analysis,
    Backend,
    Gateway,
    HostPort,
    Readiness,
    Resources,
    Rollout,
    RoutesFile,
    Scale,
    ServiceSpec,
    Template,
    TrafficTarget,
    service_hosts,
    tag_host,
)
from .traffic import ResolvedTraffic, Split, Unresolved, resolve_traffic

__all__ = [
    "Analysis",
    "Backend",
    "ConfigError",
    "Gateway",
    "HostPort",
    "LoadedRoutes",
    "Problem",
    "Readiness",
    "Resources",
    "ResolvedTraffic",
    "Revision",
    "RevisionPlan",
    "RevisionStore",
    "Rollout",
    "RoutesFile",
    "Scale",
    "ServiceSpec",
    "Split",
    "Template",
    "TrafficTarget",
    "Unresolved",
    "default_store_path",
    "load_routes",
    "resolve_traffic",
    "service_hosts",
    "tag_host",
    "validate",
]
