"""Envoy bootstrap: just enough static config for a gateway to find ferry; everything else comes over ADS.

Secure by default: the admin API (which can quit Envoy and dump its whole config) listens on loopback only. A
gateway on another machine or pod offers ferry its stats through a static, read-only listener (`stats`) that
routes nothing but GET /stats... and GET /ready to the admin API (as Istio's :15090 and Envoy Gateway's :19001);
its port goes to ferry as node metadata, and ferry reads it at the address the gateway's xDS connection comes
from, never at an address the gateway names. The overload manager bounds Envoy's heap and its connections.

Envoy keeps only the stats ferry and its users read (`KEPT_STATS`, as Istio's inclusion lists do). By default it
keeps about 100 per cluster, 2 million at 10,000 services (20,000 clusters), in memory, and walks them all on its
main thread at every flush while xDS updates wait (an EDS push -> ACK took seconds instead of 2 ms). A cluster's
traffic stats are made at its first request (deferred creation), so idle revisions cost none. `all_stats`
(routes.yaml `gateway.stats: all`) restores Envoy's defaults.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..xds.groups import LISTEN_METADATA_KEY, STATS_METADATA_KEY

MAX_HEAP_BYTES = 4 * 1024**3  # Envoy stops accepting requests near this (and shrinks its heap before)
MAX_DOWNSTREAM_CONNECTIONS = 50_000

# What autoscaling and rollout analysis read per revision cluster (request counts and classes, in-flight
# requests, the latency histogram), the few timeouts and resets worth alerting on, the xDS update counters, and
# the server-wide families (small and not per service). Revision names are DNS labels: no dots.
KEPT_STATS: tuple[dict, ...] = (
    *({"prefix": p} for p in ("server.", "cluster_manager.", "listener_manager.", "control_plane.", "overload.",
                              "runtime.", "listener.", "main_thread.", "workers.", "http.admin.", "http.ferry_stats.",
                              "cluster.ferry_")),
    {"safe_regex": {"regex": r"^cluster\.[^.]+\.(upstream_rq_(total|active|pending_active|[1-5]xx|time|timeout"
                             r"|retry|pending_overflow|rx_reset|tx_reset)|upstream_cx_(active|connect_fail))$"}},
    {"safe_regex": {"regex": r"^cluster\.[^.]+\.grpc\.(\d+|total)$"}},  # gRPC calls by grpc-status (rollout analysis)
    {"safe_regex": {"regex": r"^http\.[^.]+\.(downstream_(rq|cx)_[a-z0-9_]+|no_route|no_cluster|rq_total"
                             r"|rq_direct_response|(rds|scoped_rds)\.[^.]+\.update_(success|rejected))$"}},
)


@dataclass(frozen=True)
class XdsTls:
    """Files for mutual TLS with ferry's xDS server (`ferry certs` makes them)."""

    cert: str
    key: str
    ca: str
    server_name: str = "ferry"  # the name ferry's certificate carries


@dataclass(frozen=True)
class BootstrapOptions:
    node_id: str
    xds_host: str = "127.0.0.1"
    xds_port: int = 18000
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    group: str = "default"  # node.cluster: gateways in one group share one snapshot
    delta: bool = True  # Delta xDS: a change costs the same at any number of services
    listen: str | None = None  # this gateway's HTTP listener, when it differs from routes.yaml's gateway.listen
    stats: tuple[str, int] | None = None  # the read-only stats listener (host, port); None: ferry reads admin itself
    xds_tls: XdsTls | None = None
    max_heap_bytes: int = MAX_HEAP_BYTES
    all_stats: bool = False  # keep every stat Envoy makes, not only KEPT_STATS


def stats_config(all_stats: bool) -> dict:
    """Bootstrap fields that choose which stats Envoy keeps."""
    if all_stats:
        return {}
    return {
        "stats_config": {"stats_matcher": {"inclusion_list": {"patterns": list(KEPT_STATS)}}},
        "deferred_stat_options": {"enable_deferred_creation_stats": True},
    }


# A worker makes its copy of a cluster at the first request that needs it: at 20,000 clusters that is 56 MiB
# less, as most revisions are idle on most workers.
CLUSTER_MANAGER = {"enable_deferred_cluster_creation": True}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name: str, host: str, port: int, **extra) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": _address(host, port)}}]}]},
        **extra,
    }


def _stats_listener(host: str, port: int) -> dict:
    """GET /stats... and GET /ready, to the admin API; nothing else, no other method."""
    def to_admin(match: dict) -> dict:
        return {"match": {**match, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
                "route": {"cluster": "ferry_admin"}}

    return {
        "name": "ferry_stats",
        "address": _address(host, port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": "ferry_stats",
                "request_headers_timeout": "5s",
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                "route_config": {"name": "ferry_stats", "virtual_hosts": [{
                    "name": "stats", "domains": ["*"],
                    "routes": [to_admin({"prefix": "/stats"}), to_admin({"path": "/ready"})],
                }]},
            },
        }]}],
    }


def _overload_manager(max_heap_bytes: int) -> dict:
    heap = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {"name": heap, "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": max_heap_bytes}},
            {"name": "envoy.resource_monitors.global_downstream_max_connections", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                         ".DownstreamConnectionsConfig",
                "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS}},
        ],
        "actions": [
            {"name": "envoy.overload_actions.shrink_heap",
             "triggers": [{"name": heap, "threshold": {"value": 0.95}}]},
            {"name": "envoy.overload_actions.stop_accepting_requests",
             "triggers": [{"name": heap, "threshold": {"value": 0.98}}]},
        ],
    }


def _xds_transport_socket(tls: XdsTls) -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "alpn_protocols": ["h2"],
                "tls_certificates": [{"certificate_chain": {"filename": tls.cert},
                                      "private_key": {"filename": tls.key}}],
                "validation_context": {
                    "trusted_ca": {"filename": tls.ca},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": tls.server_name}}],
                },
            },
        },
    }


def bootstrap(options: BootstrapOptions) -> dict:
    if not _is_loopback(options.admin_host):
        raise ValueError(f"Envoy's admin API on {options.admin_host} would be reachable from the network (it can "
                         "quit Envoy and dump its config): keep it on 127.0.0.1, and let ferry read stats through "
                         "the read-only stats listener (--stats)")
    metadata = {}
    if options.listen:
        metadata[LISTEN_METADATA_KEY] = options.listen
    if options.stats is not None:
        metadata[STATS_METADATA_KEY] = str(options.stats[1])
    node: dict = {"id": options.node_id, "cluster": options.group, "metadata": metadata}
    ads = {"ads": {}, "resource_api_version": "V3"}
    xds_cluster = _cluster(
        "ferry_xds", options.xds_host, options.xds_port,
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
    )
    if options.xds_tls is not None:
        xds_cluster["transport_socket"] = _xds_transport_socket(options.xds_tls)
    static: dict = {"clusters": [xds_cluster]}
    if options.stats is not None:
        static["clusters"].append(_cluster("ferry_admin", options.admin_host, options.admin_port))
        static["listeners"] = [_stats_listener(*options.stats)]
    return {
        "node": node,
        # Histograms (upstream_rq_time, which rollout analysis reads) reach the admin API at each flush.
        "stats_flush_interval": "1s",
        **stats_config(options.all_stats),
        "cluster_manager": CLUSTER_MANAGER,
        "admin": {"address": _address(options.admin_host, options.admin_port)},
        "overload_manager": _overload_manager(options.max_heap_bytes),
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if options.delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": "ferry_xds",
                            # A restarted ferry is found again within a second, not Envoy's default 30 s backoff.
                            "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}},
                        }
                    }
                ],
            },
            "lds_config": ads,
            "cds_config": ads,
        },
        "static_resources": static,
    }
