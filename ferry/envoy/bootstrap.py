"""Envoy bootstrap: just enough static config for a gateway to find ferry; everything else comes over ADS."""

from __future__ import annotations

from dataclasses import dataclass

from ..xds.groups import ADMIN_METADATA_KEY, LISTEN_METADATA_KEY


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


def bootstrap(options: BootstrapOptions) -> dict:
    metadata = {ADMIN_METADATA_KEY: f"{options.admin_host}:{options.admin_port}"}
    if options.listen:
        metadata[LISTEN_METADATA_KEY] = options.listen
    node: dict = {"id": options.node_id, "cluster": options.group, "metadata": metadata}
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": node,
        # Histograms (upstream_rq_time, which rollout analysis reads) reach the admin API at each flush.
        "stats_flush_interval": "1s",
        "admin": {"address": {"socket_address": {"address": options.admin_host, "port_value": options.admin_port}}},
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
        "static_resources": {
            "clusters": [
                {
                    "name": "ferry_xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "ferry_xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": options.xds_host,
                                                    "port_value": options.xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }
