"""The gateway census: every gateway this control plane serves, directly or through a follower replica, with
where its stats are read (the autoscaler's and the rollout analysis' sources) and whether all of them run the
latest configuration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from ..envoy.admin import EnvoyAdmin
from ..routing.fields import HostPort
from ..xds.server import GatewayRegistry


class GatewayCensus:
    def __init__(self, gateways: GatewayRegistry, local_admins: Iterable[EnvoyAdmin] = (), *,
                 reconnect_grace_s: float = 0.0):
        self.gateways = gateways
        self.local_admins = list(local_admins)  # ferry's own Envoy
        self._replicas: dict[str, tuple[float, list[dict]]] = {}  # replica -> (expires, its gateways)
        # After a restart, gateways that outlived the last ferry are out there but not connected yet: "every
        # gateway in sync" means nothing until they had time to come back (they retry at least once a second).
        self._settled_at = time.monotonic() + reconnect_grace_s

    async def wait_in_sync(self, timeout: float) -> bool:
        """Until every gateway runs the current config, ferry's own Envoy included (it must be connected):
        False on timeout."""
        deadline = time.monotonic() + timeout
        if (early := self._settled_at - time.monotonic()) > 0:
            await asyncio.sleep(min(early, timeout))
        return await self.gateways.wait_in_sync(max(0.0, deadline - time.monotonic()), len(self.local_admins))

    def report(self, replica: str, gateways: list[dict], ttl_s: float) -> None:
        """What a follower replica serves: its gateways count for autoscaling and status until `ttl_s` passes
        without a new report (a follower that died takes its gateways' reports with it)."""
        self._replicas[replica] = (time.monotonic() + ttl_s, gateways)

    def _via_replicas(self) -> list[tuple[str, dict]]:
        now = time.monotonic()
        for replica in [r for r, (expires, _) in self._replicas.items() if expires < now]:
            del self._replicas[replica]
        return [(r, g) for r, (_, gateways) in self._replicas.items() for g in gateways]

    def status(self) -> list[dict]:
        return self.gateways.status() + [{**gateway, "via": replica} for replica, gateway in self._via_replicas()]

    def admins(self) -> list[EnvoyAdmin]:
        """Where each gateway's stats are read: ferry's own Envoy's admin API, and the read-only stats listener of
        every gateway that has one, at the address its xDS stream comes from (directly, or a follower's)."""
        admins = {(a.host, a.port): a for a in self.local_admins}
        addresses = [stream.stats_address() for stream in list(self.gateways.streams)]
        for _, gateway in self._via_replicas():  # a follower says where it read them (it is trusted: the token)
            try:
                addresses.append(tuple(HostPort.parse(gateway.get("stats"))))
            except ValueError:
                continue
        for address in addresses:
            if address is not None:
                admins.setdefault(address, EnvoyAdmin(*address, timeout=1.0))
        return list(admins.values())
