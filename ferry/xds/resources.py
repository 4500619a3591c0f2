"""Pure builders: ferry's routing model -> Envoy resources, serialized, with the names they refer to.

Everything here is a function of its arguments. Each builder returns a `Resource`: the serialized message
(what travels in an Any; serialized once per change, so a change to one service never re-encodes ten
thousand others) and, for route tables and host scopes, the names they refer to, read off what was built.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, extension_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import grpc_service_pb2, substitution_format_string_pb2
from envoy.config.trace.v3 import http_tracer_pb2
from envoy.config.trace.v3 import opentelemetry_pb2 as otel_tracer_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2 as file_log_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2 as stream_log_pb2
from envoy.extensions.filters.http.grpc_stats.v3 import config_pb2 as grpc_stats_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_mutation_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.upstreams.http.v3 import (
    http_protocol_options_pb2 as http_options_pb2,
)
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from envoy.type.matcher.v3 import string_pb2 as string_matcher_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2

# The type names are re-exported: callers spell them xds.CLUSTER beside the builders.
from .types import CLUSTER, ENDPOINT, LISTENER, PUSH_ORDER, ROUTE, SCOPED_ROUTE, SECRET, Resource  # noqa: F401

LISTENER_NAME = "ferry_http"
INTERNAL_LISTENER_NAME = "ferry_internal"
SCOPES_NAME = "ferry_hosts"
REVISION_HEADER = "ferry-revision"
SERVICE_HEADER = "ferry-service"
TAG_HEADER = "ferry-tag"  # on a service's main host, selects that tag's revision (Knative's tag header routing)
KNATIVE_TAG_HEADER = "knative-serving-tag"  # Knative's name for the same (its tag-header-based-routing)
TAG_HEADERS = (TAG_HEADER, KNATIVE_TAG_HEADER)
# Gateways add it on the hop to the activator only (see `cluster`); the activator serves no request without it.
ACTIVATOR_KEY_HEADER = "ferry-activator-key"
# The activator's EDS endpoint carries the key as metadata ({"ferry": {"key": KEY}}); an instance's carries none.
KEY_METADATA = ("ferry", "key")
# Which listener a request came in on, set by the listener itself before routing (whatever the client sent):
# a private service's routes match only requests with LISTENER_HEADER: internal.
LISTENER_HEADER = "ferry-listener"

# The gateway's listener, as Envoy's edge best practices ask: a client gets this long to send its request headers,
# a stream with no activity ends after 5 minutes (Envoy's default, kept explicit; a route's own timeout, the
# revision's, overrides it), an idle connection after an hour.
EDGE_HEADERS_TIMEOUT_S = 10.0
EDGE_STREAM_IDLE_TIMEOUT_S = 300.0
EDGE_CONNECTION_IDLE_TIMEOUT_S = 3600.0
# When Envoy ends an HTTP/1.1 connection (a response cut by a timeout, a local reply with `connection: close`), it
# waits this long for the client to close first, so the client reads what was sent before a reset (restarted by
# every byte written). Envoy's default of 1 s made a 1 s timeout end at 2 s for the client.
DELAYED_CLOSE_S = 0.1

# Retry only where no request byte reached an app: safe for any method, and what turns an instance that
# is stopping or just crashed into zero client errors.
_RETRY_ON = "connect-failure,refused-stream,reset-before-request"


def cluster_name(service: str, revision: str) -> str:
    """Interned: the name is made wherever a revision's cluster is named (its cluster, its endpoints, the route
    tables' references, each gateway's state); one string for all of them (~2.5 MiB at 10,000 services)."""
    return sys.intern(f"{service}/{revision}")


@dataclass(frozen=True, slots=True)
class WeightedTarget:
    cluster: str
    revision: str
    weight: int


@dataclass(frozen=True, slots=True)
class HostRoute:
    """One virtual host: the hosts it answers and where its traffic goes."""

    name: str
    service: str
    domains: tuple[str, ...]
    targets: tuple[WeightedTarget, ...]  # weight > 0 only
    timeout_s: float
    tagged: tuple[tuple[str, WeightedTarget], ...] = ()  # (tag, its revision): chosen by the ferry-tag header
    sticky_cookie: str | None = None  # a split sets this cookie to the revision a client got, and honours it
    idle_timeout_s: float | None = None  # no byte either way for this long ends a request; None = timeout_s
    internal_only: bool = False  # a private service's host: routed only on the internal listener


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _header(name: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _any(type_url: str, message) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString())


def _ads_config_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


_RETRY_POLICY = route_components_pb2.RetryPolicy(
    retry_on=_RETRY_ON,
    num_retries=wrappers_pb2.UInt32Value(value=3),
    retry_host_predicate=[
        route_components_pb2.RetryPolicy.RetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts",
            typed_config=_any(
                "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
                previous_hosts_pb2.PreviousHostsPredicate(),
            ),
        )
    ],
    host_selection_retry_max_attempts=3,
)


def _action(route: HostRoute, **fields) -> route_components_pb2.RouteAction:
    """Where a request goes, bounded by the revision's timeout (until the whole response) and its idle timeout
    (no byte either way; the timeout when none is set, over the listener's default)."""
    idle = route.timeout_s if route.idle_timeout_s is None else route.idle_timeout_s
    return route_components_pb2.RouteAction(timeout=_duration(route.timeout_s), idle_timeout=_duration(idle),
                                            retry_policy=_RETRY_POLICY, **fields)


_INTERNAL_ONLY = route_components_pb2.HeaderMatcher(
    name=LISTENER_HEADER, string_match=string_matcher_pb2.StringMatcher(exact="internal"))


def _match(route: HostRoute, *headers: route_components_pb2.HeaderMatcher) -> route_components_pb2.RouteMatch:
    """Every request of the host (prefix /) with `headers`; on a private service's host, from the internal
    listener only."""
    gate = (_INTERNAL_ONLY,) if route.internal_only else ()
    return route_components_pb2.RouteMatch(prefix="/", headers=[*headers, *gate])


def virtual_host(route: HostRoute) -> route_components_pb2.VirtualHost:
    """A VirtualHost: weighted clusters by percent, each split naming its revision in a header;
    first, a route per tag for requests that name it in the ferry-tag header (an unknown tag falls through)."""
    service_header = _header(SERVICE_HEADER, route.service)
    routes = [
        route_components_pb2.Route(
            name=f"{route.name}/{header}/{tag}",
            match=_match(route, route_components_pb2.HeaderMatcher(
                name=header, string_match=string_matcher_pb2.StringMatcher(exact=tag))),
            route=_action(route, cluster=target.cluster),
            request_headers_to_add=[service_header, _header(REVISION_HEADER, target.revision)],
        )
        for tag, target in route.tagged
        for header in TAG_HEADERS
    ]
    sticky = route.sticky_cookie if len(route.targets) > 1 else None
    if sticky:
        routes += [_sticky_route(route, sticky, target, service_header) for target in route.targets]
    action = _action(route)
    if len(route.targets) == 1:
        (target,) = route.targets
        action.cluster = target.cluster
        headers = [service_header, _header(REVISION_HEADER, target.revision)]
    else:
        action.weighted_clusters.CopyFrom(
            route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(
                        name=t.cluster,
                        weight=wrappers_pb2.UInt32Value(value=t.weight),
                        request_headers_to_add=[_header(REVISION_HEADER, t.revision)],
                        response_headers_to_add=[_set_cookie(sticky, t.revision)] if sticky else [],
                    )
                    for t in route.targets
                ]
            )
        )
        headers = [service_header]
    routes.append(
        route_components_pb2.Route(
            name=route.name,
            match=_match(route),
            route=action,
            request_headers_to_add=headers,
        )
    )
    return route_components_pb2.VirtualHost(name=route.name, domains=list(route.domains), routes=routes)


def _sticky_route(route: HostRoute, cookie: str, target: WeightedTarget, service_header) -> route_components_pb2.Route:
    """A client that carries the cookie for one of the split's revisions stays on it."""
    pattern = rf"(^|.*;\s*){re.escape(cookie)}={re.escape(target.revision)}(;.*|\s*)$"
    return route_components_pb2.Route(
        name=f"{route.name}/sticky/{target.revision}",
        match=_match(route, route_components_pb2.HeaderMatcher(
            name="cookie",
            string_match=string_matcher_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=pattern)))),
        route=_action(route, cluster=target.cluster),
        request_headers_to_add=[service_header, _header(REVISION_HEADER, target.revision)],
    )


def _set_cookie(cookie: str, revision: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="set-cookie", value=f"{cookie}={revision}; Path=/; HttpOnly; SameSite=Lax"),
        append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
    )


def route_table(name: str, routes: Sequence[HostRoute], *, add: Mapping[str, str] | None = None,
                remove: Sequence[str] = (), https_redirect: HttpsRedirect | None = None) -> Resource:
    """One service's route table (its main host and tag hosts); it refers to every cluster its hosts send to.
    `add`: headers set on every request it routes (whatever the client sent); `remove`: headers dropped from them;
    `https_redirect`: plain-HTTP requests for the hosts it covers are sent to https instead."""
    vhosts = [virtual_host(r) for r in routes]
    if https_redirect is not None:
        for vhost in vhosts:
            https_redirect.apply(vhost)
    message = route_pb2.RouteConfiguration(
        name=name,
        request_headers_to_add=[
            # x-forwarded-proto is the scheme of the client's connection: the edge listener (use_remote_address,
            # no trusted hops) overwrites whatever the client sent, before routing.
            _header("forwarded", "for=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%;proto=%REQ(x-forwarded-proto)%"),
            *(_header(header, value) for header, value in (add or {}).items()),
        ],
        request_headers_to_remove=list(remove),
        virtual_hosts=vhosts,
    )
    return Resource.of(name, message.SerializeToString(), route_clusters(message))


@dataclass(frozen=True, slots=True)
class HttpsRedirect:
    """gateway.tls.redirect: a plain-HTTP request (x-forwarded-proto http, which the edge listener sets) on the
    public listener for a host a certificate entry covers gets 301 to https, at `port` (443: the URL's default)."""

    hosts: frozenset[str]  # exact names, and *.wildcards (one label, as SNI matches them)
    port: int = 443

    def covers(self, host: str) -> bool:
        if host in self.hosts:
            return True
        _, dot, parent = host.partition(".")
        return bool(dot) and f"*.{parent}" in self.hosts

    def apply(self, vhost: route_components_pb2.VirtualHost) -> None:
        """Put the redirect first in `vhost`, for those of its domains that are covered (all of them, usually)."""
        covered = [d for d in vhost.domains if self.covers(d)]
        if not covered:
            return
        headers = [
            route_components_pb2.HeaderMatcher(
                name="x-forwarded-proto", string_match=string_matcher_pb2.StringMatcher(exact="http")),
            # not on the internal listener: cluster-local clients speak plain HTTP on purpose
            route_components_pb2.HeaderMatcher(
                name=LISTENER_HEADER, string_match=string_matcher_pb2.StringMatcher(exact="public")),
        ]
        if len(covered) < len(vhost.domains):
            pattern = "|".join(re.escape(d) for d in covered)
            headers.append(route_components_pb2.HeaderMatcher(
                name=":authority", string_match=string_matcher_pb2.StringMatcher(
                    safe_regex=regex_pb2.RegexMatcher(regex=f"^(?:{pattern})$"))))
        redirect = route_components_pb2.Route(
            name=f"{vhost.name}/https",
            match=route_components_pb2.RouteMatch(prefix="/", headers=headers),
            redirect=route_components_pb2.RedirectAction(
                https_redirect=True, port_redirect=0 if self.port == 443 else self.port,
                response_code=route_components_pb2.RedirectAction.MOVED_PERMANENTLY),
        )
        vhost.routes.insert(0, redirect)


def route_clusters(table: route_pb2.RouteConfiguration) -> frozenset[str]:
    """Every cluster a route table sends to (single and weighted), across all its hosts: its references, as
    a follower reads them from a table it receives."""
    names: set[str] = set()
    for vhost in table.virtual_hosts:
        for route in vhost.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            kind = action.WhichOneof("cluster_specifier")
            if kind == "cluster":
                names.add(action.cluster)
            elif kind == "weighted_clusters":
                names.update(weight.name for weight in action.weighted_clusters.clusters)
    return frozenset(names)


def host_scope(host: str, route_configuration_name: str, refs: frozenset[str] | None = None) -> Resource:
    """A scope: requests whose Host is `host` use that service's route table.

    Scopes are why a change to one service is one small RDS push at any scale: each service has its own
    RouteConfiguration instead of one table of every virtual host that Envoy must rebuild on each change.
    """
    body = scoped_route_pb2.ScopedRouteConfiguration(
        name=host,
        route_configuration_name=route_configuration_name,
        key=scoped_route_pb2.ScopedRouteConfiguration.Key(
            fragments=[scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(string_key=host)]
        ),
    ).SerializeToString()
    return Resource.of(host, body, refs if refs is not None else frozenset((route_configuration_name,)))


# gateway.accessLog: one JSON line per request. Named fields only, never arbitrary headers: no Authorization, no
# cookies, and the path without its query string (tokens travel there too).
ACCESS_LOG_FORMAT: dict[str, str] = {
    "time": "%START_TIME%",
    "host": "%REQ(:AUTHORITY)%",
    "method": "%REQ(:METHOD)%",
    "path": "%PATH(NQ:ORIG_OR_PATH)%",  # NQ: without the query string (tokens travel there)
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "service": f"%REQ({SERVICE_HEADER})%",
    "revision": f"%REQ({REVISION_HEADER})%",
    "instance": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "response_flags": "%RESPONSE_FLAGS%",
}
OTLP_CLUSTER = "ferry_otlp"  # gateway.tracing's collector, published with the listeners
TRACING_SERVICE_NAME = "ferry-gateway"
# Span attributes from the headers the routes set: which service and revision served the request.
TRACING_TAGS = (("ferry.service", SERVICE_HEADER), ("ferry.revision", REVISION_HEADER))


@dataclass(frozen=True)
class Observe:
    """What the HTTP connection manager records besides stats (gateway.accessLog, gateway.tracing). The default,
    nothing, leaves the manager as it was before either existed, byte for byte."""

    access_log: str | None = None  # "stdout", or an absolute file path; None: no request logs
    tracing: bool = False  # spans to OTLP_CLUSTER
    sampling: float = 1.0  # the share of requests traced, 0..1


NO_OBSERVE = Observe()


def _access_log(target: str) -> accesslog_pb2.AccessLog:
    fields = struct_pb2.Struct()
    fields.update(ACCESS_LOG_FORMAT)
    log_format = substitution_format_string_pb2.SubstitutionFormatString(json_format=fields)
    if target == "stdout":
        return accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=_any(
            "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            stream_log_pb2.StdoutAccessLog(log_format=log_format)))
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=_any(
        "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        file_log_pb2.FileAccessLog(path=target, log_format=log_format)))


def _tracing(sampling: float) -> hcm_pb2.HttpConnectionManager.Tracing:
    provider = http_tracer_pb2.Tracing.Http(name="envoy.tracers.opentelemetry", typed_config=_any(
        "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        otel_tracer_pb2.OpenTelemetryConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=OTLP_CLUSTER)),
            service_name=TRACING_SERVICE_NAME)))
    return hcm_pb2.HttpConnectionManager.Tracing(
        provider=provider,
        random_sampling=percent_pb2.Percent(value=round(sampling * 100, 6)),
        # Envoy's default (100%) traces every request that carries x-client-trace-id, whatever random_sampling
        # says: any client could make the gateway export its spans at sampling 0. `sampling` alone decides.
        client_sampling=percent_pb2.Percent(value=0),
        custom_tags=[custom_tag_pb2.CustomTag(tag=tag, request_header=custom_tag_pb2.CustomTag.Header(name=header))
                     for tag, header in TRACING_TAGS],
    )


def otlp_cluster(host: str, port: int) -> Resource:
    """gateway.tracing's collector: HTTP/2 (gRPC) to HOST:PORT, an IP address or a DNS name."""
    try:
        ipaddress.ip_address(host)
        kind = cluster_pb2.Cluster.STATIC
    except ValueError:
        kind = cluster_pb2.Cluster.STRICT_DNS
    message = cluster_pb2.Cluster(
        name=OTLP_CLUSTER,
        type=kind,
        connect_timeout=_duration(1.0),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=OTLP_CLUSTER,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host,
                                                                                         port_value=port))))])]),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                http_options_pb2.HttpProtocolOptions(explicit_http_config=http_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                    http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))),
        },
    )
    return Resource.of(OTLP_CLUSTER, message.SerializeToString())


def http_manager(mark: str = "public", *, stat_prefix: str = "ferry",
                 observe: Observe = NO_OBSERVE) -> hcm_pb2.HttpConnectionManager:
    """The HTTP connection manager every gateway listener runs: host scopes (SRDS) and route tables (RDS) over the
    same ADS stream, Envoy's edge settings, and `mark` in LISTENER_HEADER on every request before it is routed
    (whatever the client sent), so that a private service's routes match on the internal listener only. Its stats
    are http.<stat_prefix>.*; the HTTPS listener's chains run the same (xds/https.py). `observe`: request logs and
    traces (gateway.accessLog, gateway.tracing)."""
    manager = _http_manager(mark, stat_prefix)
    if observe.access_log is not None:
        manager.access_log.append(_access_log(observe.access_log))
    if observe.tracing:
        manager.tracing.CopyFrom(_tracing(observe.sampling))
    return manager


def _http_manager(mark: str, stat_prefix: str) -> hcm_pb2.HttpConnectionManager:
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,  # HTTP/1.1 and h2c; over TLS, what ALPN chose (h2, http/1.1)
        scoped_routes=hcm_pb2.ScopedRoutes(
            name=SCOPES_NAME,
            # The scope key is the Host header without its port.
            scope_key_builder=hcm_pb2.ScopedRoutes.ScopeKeyBuilder(
                fragments=[
                    hcm_pb2.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder(
                        header_value_extractor=hcm_pb2.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
                            name=":authority", element_separator=":", index=0
                        )
                    )
                ]
            ),
            rds_config_source=_ads_config_source(),
            scoped_rds=hcm_pb2.ScopedRds(scoped_rds_config_source=_ads_config_source()),
        ),
        early_header_mutation_extensions=[_mark_listener(mark)],
        http_filters=[_GRPC_STATS, _ROUTER],
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        strip_any_host_port=True,
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        # Envoy's edge best practices (configuration/best_practices/edge): bounded header reads, no header names
        # that proxies disagree on, one canonical path.
        request_headers_timeout=_duration(EDGE_HEADERS_TIMEOUT_S),
        stream_idle_timeout=_duration(EDGE_STREAM_IDLE_TIMEOUT_S),
        delayed_close_timeout=_duration(DELAYED_CLOSE_S),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=_duration(EDGE_CONNECTION_IDLE_TIMEOUT_S),
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
        ),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT,
    )


def _mark_listener(mark: str) -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(
        name="envoy.http.early_header_mutation.header_mutation",
        typed_config=_any(
            "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            early_mutation_pb2.HeaderMutation(mutations=[
                mutation_rules_pb2.HeaderMutation(append=_header(LISTENER_HEADER, mark))]),
        ),
    )


# gRPC answers failures in HTTP 200s (grpc-status in the trailers): this filter counts calls per grpc-status per
# revision cluster (cluster.<c>.grpc.<code>), which rollout analysis reads beside the HTTP classes.
_GRPC_STATS = hcm_pb2.HttpFilter(
    name="envoy.filters.http.grpc_stats",
    typed_config=_any("type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                      grpc_stats_pb2.FilterConfig(stats_for_all_methods=wrappers_pb2.BoolValue(value=False))),
)
_ROUTER = hcm_pb2.HttpFilter(
    name="envoy.filters.http.router",
    typed_config=_any("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", router_pb2.Router()),
)


def http_filter_chain(manager: hcm_pb2.HttpConnectionManager, **fields) -> listener_components_pb2.FilterChain:
    return listener_components_pb2.FilterChain(
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager",
                typed_config=_any(
                    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    manager,
                ),
            )
        ],
        **fields,
    )


def listener(host: str, port: int, *, name: str = LISTENER_NAME, mark: str = "public",
             observe: Observe = NO_OBSERVE) -> Resource:
    """A gateway's plain HTTP listener: `name` LISTENER_NAME for public services, INTERNAL_LISTENER_NAME (mark
    internal) for every service, private ones included."""
    message = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port)),
        filter_chains=[http_filter_chain(http_manager(mark, observe=observe))],
    )
    return Resource.of(name, message.SerializeToString())


_UNLIMITED = wrappers_pb2.UInt32Value(value=1_000_000)


# On a revision cluster that can point at the activator: an upstream filter sets ACTIVATOR_KEY_HEADER from the chosen
# endpoint's metadata, so the key goes on the hop to the activator and nowhere else (an instance's endpoint has no
# metadata: the value is empty, and Envoy adds no header with an empty value). Evaluated per upstream request, after
# the endpoint is chosen (the route table's own headers are not: there the metadata always reads empty).
_KEY_FROM_ENDPOINT = hcm_pb2.HttpFilter(
    name="envoy.filters.http.header_mutation",
    typed_config=_any(
        "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        header_mutation_pb2.HeaderMutation(mutations=header_mutation_pb2.Mutations(request_mutations=[
            mutation_rules_pb2.HeaderMutation(append=_header(
                ACTIVATOR_KEY_HEADER, f"%UPSTREAM_METADATA({':'.join(KEY_METADATA)})%"))])),
    ),
)
_UPSTREAM_CODEC = hcm_pb2.HttpFilter(
    name="envoy.filters.http.upstream_codec",
    typed_config=_any("type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
                      upstream_codec_pb2.UpstreamCodec()),
)


def cluster(name: str, connect_timeout_s: float = 1.0, *, http2: bool = False, keyed: bool = False) -> Resource:
    """An EDS cluster for one revision; `http2`: HTTP/2 without TLS to its instances (h2c, gRPC); `keyed`: a
    revision ferry runs, whose EDS may name the activator: requests to an endpoint with the key in its metadata
    (`load_assignment(key=...)`) carry it in ACTIVATOR_KEY_HEADER. Revisions of `endpoints:` never point at the
    activator, and get no filter (at 10,000 services they are 20,000 clusters).

    Circuit breakers are opened wide: queueing belongs to the autoscaler and the activator, and Envoy's
    default of 1,024 would hide the real concurrency from both.
    """
    explicit = (http_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                    http2_protocol_options=protocol_pb2.Http2ProtocolOptions())
                if http2 else http_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                    http_protocol_options=protocol_pb2.Http1ProtocolOptions()))
    message = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads_config_source()),
        connect_timeout=_duration(connect_timeout_s),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(
                    max_connections=_UNLIMITED,
                    max_pending_requests=_UNLIMITED,
                    max_requests=_UNLIMITED,
                    max_retries=wrappers_pb2.UInt32Value(value=1_000),
                )
            ]
        ),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                http_options_pb2.HttpProtocolOptions(
                    # Below typical app keep-alive timeouts, so Envoy closes idle connections before the app does.
                    common_http_protocol_options=protocol_pb2.HttpProtocolOptions(idle_timeout=_duration(4)),
                    explicit_http_config=explicit,
                    http_filters=[_KEY_FROM_ENDPOINT, _UPSTREAM_CODEC] if keyed else [],
                ),
            )
        },
    )
    return Resource.of(name, message.SerializeToString())


def load_assignment(cluster_name_: str, endpoints: Sequence[tuple[str, int]], *, key: str | None = None) -> Resource:
    """A revision's endpoints; `key`: they are the activator, and requests to them carry it (see `cluster`)."""
    metadata = None
    if key is not None:
        namespace, field = KEY_METADATA
        metadata = base_pb2.Metadata()
        metadata.filter_metadata[namespace].update({field: key})
    message = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name_,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                            )
                        ),
                        metadata=metadata,
                    )
                    for host, port in endpoints
                ]
            )
        ]
        if endpoints
        else [],
    )
    return Resource.of(cluster_name_, message.SerializeToString())
