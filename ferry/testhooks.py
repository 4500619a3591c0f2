"""Hooks for tests and benches, mounted as POST /debug/<name> only with `ferry up --test-hooks` (a hidden flag).

They reach into the running controller from outside, so that no production class carries a test branch:
- `poison-routes`: publish a route table that passes ferry's checks but that Envoy rejects (a duplicate
  domain), to exercise NACK handling end to end. The service's next route change replaces it.
- `endpoints`: an endpoint change as a backend would report it, without running instances (the bench).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from envoy.config.route.v3 import route_pb2

from .routing.fields import HostPort
from .xds import resources as xds

if TYPE_CHECKING:
    from .daemon.roles import Leading


async def poison_routes(leading: Leading, body: dict) -> None:
    controller = leading.controller
    service = next((s for s in controller.services.values() if s.routes), None)
    if service is None:
        return
    table = xds.route_table(service.name, service.routes)
    message = route_pb2.RouteConfiguration.FromString(table.body)
    message.virtual_hosts.append(message.virtual_hosts[0])  # a duplicate domain: Envoy must reject the table
    controller.publisher.put(xds.ROUTE, xds.Resource.of(table.name, message.SerializeToString(), table.refs))
    controller.publisher.publish()


async def set_endpoints(leading: Leading, body: dict) -> None:
    leading.controller.on_endpoints(body["revision"], [HostPort.parse(e) for e in body["endpoints"]])


HOOKS = {"poison-routes": poison_routes, "endpoints": set_endpoints}
