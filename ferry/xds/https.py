"""HTTPS at the gateway: the listener that serves it, and the certificates it serves, as SDS secrets.

The listener has one filter chain per certificate entry of routes.yaml, chosen by SNI (`server_names`: the entry's
hosts, *.wildcards included); each chain runs the HTTP connection manager of the plain listener
(resources.http_manager: the same host scopes, route tables and edge settings) behind a TLS transport socket that
names its certificate by secret name, fetched over the same ADS stream (sds_config: ads). A new version of a secret
under the same name is a rotation: Envoy swaps the certificate for new handshakes and drains nothing.

A client whose SNI matches no entry (or that sends none) finds no filter chain: its handshake fails, no certificate
is shown to it (see README, "HTTPS").

Which gateways get the listener and the private keys is the listener's own business: its metadata says which
groups (gateway.tls.groups), so that a follower that mirrors it applies the very policy the leader does
(xds/groups.py: serves_tls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from .resources import NO_OBSERVE, Observe, _ads_config_source, _any, http_filter_chain, http_manager
from .types import Resource

HTTPS_LISTENER_NAME = "ferry_https"
HTTPS_STAT_PREFIX = "ferry_https"
ALPN = ("h2", "http/1.1")
METADATA_KEY = "ferry"  # the listener's filter_metadata namespace
GROUPS_FIELD = "tlsGroups"  # in it: the groups that serve HTTPS, when gateway.tls.groups says


@dataclass(frozen=True, slots=True)
class TlsChain:
    """One certificate entry: the SNI names it answers, and the secret that holds its certificate and key."""

    secret: str
    hosts: tuple[str, ...]


def secret(name: str, certificate_chain: bytes, private_key: bytes) -> Resource:
    """A certificate and its key (PEM), inline: what the gateway serves for the chains that name `name`."""
    message = secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=certificate_chain),
            private_key=base_pb2.DataSource(inline_bytes=private_key),
        ),
    )
    return Resource.of(name, message.SerializeToString())


def _tls_socket(secret: str) -> base_pb2.TransportSocket:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_params=common_pb2.TlsParameters(tls_minimum_protocol_version=common_pb2.TlsParameters.TLSv1_2),
            tls_certificate_sds_secret_configs=[secret_pb2.SdsSecretConfig(name=secret,
                                                                           sds_config=_ads_config_source())],
            alpn_protocols=list(ALPN),
        ),
        require_sni=wrappers_pb2.BoolValue(value=True),
    )
    return base_pb2.TransportSocket(
        name="envoy.transport_sockets.tls",
        typed_config=_any("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                          context),
    )


_TLS_INSPECTOR = listener_components_pb2.ListenerFilter(
    name="envoy.filters.listener.tls_inspector",
    typed_config=_any("type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
                      tls_inspector_pb2.TlsInspector()),
)


def https_listener(host: str, port: int, chains: Sequence[TlsChain], *, groups: Sequence[str] | None = None,
                   name: str = HTTPS_LISTENER_NAME, mark: str = "public",
                   observe: Observe = NO_OBSERVE) -> Resource:
    """The gateway's HTTPS listener: a filter chain per certificate entry, chosen by SNI; it refers to the chains'
    secrets. `groups`: the gateway groups that serve it (None: ferry's own gateway only, groups.serves_tls)."""
    manager = http_manager(mark, stat_prefix=HTTPS_STAT_PREFIX, observe=observe)
    message = listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port)),
        listener_filters=[_TLS_INSPECTOR],  # reads the SNI off the ClientHello, for filter_chain_match
        filter_chains=[
            http_filter_chain(
                manager,
                name=chain.secret,
                filter_chain_match=listener_components_pb2.FilterChainMatch(server_names=list(chain.hosts),
                                                                            transport_protocol="tls"),
                transport_socket=_tls_socket(chain.secret),
            )
            for chain in chains
        ],
    )
    if groups is not None:
        fields = struct_pb2.Struct()
        fields.update({GROUPS_FIELD: list(groups)})
        message.metadata.filter_metadata[METADATA_KEY].CopyFrom(fields)
    return Resource.of(name, message.SerializeToString(), listener_secrets(message))


def listener_secrets(message: listener_pb2.Listener) -> frozenset[str]:
    """The secrets a listener's TLS filter chains name: its references, as a follower reads them from a listener it
    receives."""
    names: set[str] = set()
    for chain in message.filter_chains:
        socket = chain.transport_socket
        if not socket.typed_config.type_url.endswith(".DownstreamTlsContext"):
            continue
        context = tls_pb2.DownstreamTlsContext.FromString(socket.typed_config.value)
        names.update(config.name for config in context.common_tls_context.tls_certificate_sds_secret_configs)
    return frozenset(names)


def listener_groups(body: bytes) -> tuple[str, ...] | None:
    """The groups an HTTPS listener is for (its metadata), or None when it does not say."""
    message = listener_pb2.Listener.FromString(body)
    metadata = message.metadata.filter_metadata
    if METADATA_KEY not in metadata or GROUPS_FIELD not in metadata[METADATA_KEY].fields:
        return None
    return tuple(v.string_value for v in metadata[METADATA_KEY].fields[GROUPS_FIELD].list_value.values)
