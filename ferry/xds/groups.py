"""Which snapshot a gateway gets: go-control-plane's NodeHash, and the one way ferry specialises a group.

Gateways share a snapshot by group (Envoy's node.cluster). A gateway that asks for its own listen address
(node metadata `ferry.listen`, which `ferry bootstrap --listen` writes) gets a snapshot of its own, keyed
`<group>@<host:port>`: the group's resources, but for the HTTP listener, which listens where it asked.
The key carries the address, so the policy needs no memory: a cache a follower filled and a leader took over
specialises its groups exactly as the leader would have.

The leader's cache and a follower's mirror use this same policy.

HTTPS is served by groups that are meant to (`serves_tls`): the HTTPS listener and the private keys (SDS secrets)
stay in every snapshot, and a stream withholds them from any other gateway. Secure by default: unless
gateway.tls.groups names groups, only ferry's own gateway serves HTTPS (group `default`, listening at the file's
addresses: the snapshot key `default`); a gateway bootstrapped elsewhere gets the keys only once its group is
listed. Replicas (followers) get everything: they serve the groups that are listed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache

from envoy.config.listener.v3 import listener_pb2
from google.protobuf.message import DecodeError

from .https import HTTPS_LISTENER_NAME, listener_groups
from .resources import LISTENER_NAME
from .types import LISTENER, SECRET, Changes, Resource

DEFAULT_GROUP = "default"  # node.cluster of ferry's own gateway (and of `ferry bootstrap` without --group)
LISTEN_METADATA_KEY = "ferry.listen"  # node metadata: this gateway's own listen address
# Set in a follower's node metadata (mirror.py), so that the leader can tell replicas from gateways.
REPLICA_METADATA_KEY = "ferry.replica"
# node metadata: the port of this gateway's read-only stats listener, read at the address its xDS stream comes
# from (a gateway never names a host for ferry to call)
STATS_METADATA_KEY = "ferry.stats"


def snapshot_key(group: str, metadata: Mapping[str, str]) -> str:
    """The snapshot a gateway of `group` with node `metadata` is served from."""
    listen = metadata.get(LISTEN_METADATA_KEY)
    if listen and parse_listen(listen) is not None:
        return f"{group}@{listen}"
    return group


def own_listen(key: str) -> tuple[str, int] | None:
    """The listen address a snapshot key asks for, or None for a plain group."""
    _, at, listen = key.rpartition("@")
    return parse_listen(listen) if at else None


def parse_listen(text: str) -> tuple[str, int] | None:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port); None if it is not an IP address and a port."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def specialise(key: str, changes: Changes) -> Changes:
    """`changes` as group `key` takes them: in a group with its own address, the HTTP listener is put with that
    address and never deleted (it did not come from the file); every other group takes them as they are."""
    listen = own_listen(key)
    entries = changes.get(LISTENER)
    if listen is None or not entries or LISTENER_NAME not in entries:
        return changes
    listener = entries[LISTENER_NAME]
    adjusted = dict(entries)
    if listener is None:
        del adjusted[LISTENER_NAME]
    else:
        adjusted[LISTENER_NAME] = moved(listener, listen)
    return {**changes, LISTENER: adjusted}


def moved(listener: Resource, listen: tuple[str, int]) -> Resource:
    """The same listener, listening at `listen`."""
    message = listener_pb2.Listener()
    try:
        message.ParseFromString(listener.body)
    except DecodeError:
        return listener
    address = message.address.socket_address
    address.address, address.port_value = listen
    return Resource.of(listener.name, message.SerializeToString(), listener.refs)


def tls_only(type_url: str, name: str) -> bool:
    """A resource only gateways that serve HTTPS get: a secret (a private key), the HTTPS listener."""
    return type_url == SECRET or (type_url == LISTENER and name == HTTPS_LISTENER_NAME)


def serves_tls(key: str, group: str, metadata: Mapping[str, str], listeners: Mapping[str, Resource]) -> bool:
    """Whether a gateway of node.cluster `group`, served from snapshot `key`, serves HTTPS: its group is one the
    HTTPS listener names (gateway.tls.groups), or the listener names none and the gateway is ferry's own (`key` is
    the default group's, with no listen address of its own). Replicas always: they serve other gateways."""
    if metadata.get(REPLICA_METADATA_KEY) == "true":
        return True
    listener = listeners.get(HTTPS_LISTENER_NAME)
    if listener is None:
        return False
    allowed = _groups_of(listener.version, listener.body)
    return key == DEFAULT_GROUP if allowed is None else group in allowed


@lru_cache(maxsize=16)
def _groups_of(version: str, body: bytes) -> tuple[str, ...] | None:
    try:
        return listener_groups(body)
    except DecodeError:
        return ()
