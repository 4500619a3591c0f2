"""Several ferry replicas: one leader (it holds the Lease) computes the state, scales and writes; every other
replica, a follower, serves the same xDS state to the gateways that connect to it and forwards its API.

A follower is an ADS client of the leader (xds/mirror.py) and re-serves what it receives from its own
cache: same resources, same content versions, so when a follower becomes leader its gateways stay
connected and see no change. It finds the leader through what the leader writes on the Lease (its xDS and
API addresses), tells the leader which gateways it serves (their admin addresses feed the autoscaler), and
sends API requests, `ferry status` included, to the leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .api import LOCAL_PATHS
from .tasks import every
from .tls import SERVER_NAME, TlsFiles
from .ui.routes import is_ui_path
from .xds.cache import SnapshotCache
from .xds.mirror import XdsMirror
from .xds.server import GatewayRegistry, Tls

if TYPE_CHECKING:  # the kubernetes client is imported only when --leader-elect asks for it
    from .backends.kubernetes.lease import LeaseElector

log = logging.getLogger("ferry.replicas")

XDS_ANNOTATION = "ferry.dev/xds"  # on the Lease: where the leader serves xDS
API_ANNOTATION = "ferry.dev/api"  # and its HTTP API
REPORT_EVERY_S = 2.0
REPORT_TTL_S = 3 * REPORT_EVERY_S  # a follower that stopped reporting: its gateways no longer count


def gateways_report(gateways: GatewayRegistry) -> list[dict]:
    """The gateways connected to this replica, as the leader's status shows them, with where their stats are read."""
    return [stream.status() for stream in list(gateways.streams) if stream.node is not None]


class Follower:
    """The following role: what a replica does while another one leads."""

    def __init__(self, elector: LeaseElector, cache: SnapshotCache, gateways: GatewayRegistry, *,
                 token: str | None = None, tls: TlsFiles | None = None):
        self.identity = identity = elector.identity
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}  # replicas share the install's token
        self._elector = elector
        self._gateways = gateways
        self.mirror = XdsMirror(cache, self.leader_xds, node_id=f"ferry-replica/{identity}",
                                tls=Tls(*tls.read()) if tls else None)
        # Over mutual TLS, the leader's API is HTTPS and checks this replica's certificate (tls.py).
        self._scheme, self._ssl = ("https", tls.client_context()) if tls else ("http", True)
        self._tls_name = {"server_hostname": SERVER_NAME} if tls else {}
        self.following = True  # False once this replica leads: the API answers for itself again
        self._session: aiohttp.ClientSession | None = None
        self._followed: str | None = None
        self.last_report: dict | None = None

    def _leader_says(self, key: str) -> str | None:
        if not self.following or self._elector.leader in (None, self.identity):
            return None  # nobody leads, or this replica is about to: never follow itself
        return self._elector.leader_annotations.get(key)

    def leader_xds(self) -> str | None:
        return self._leader_says(XDS_ANNOTATION)

    def leader_api(self) -> str | None:
        return self._leader_says(API_ANNOTATION)

    async def until_leading(self, election: asyncio.Task, stop: asyncio.Event, ready: asyncio.Event) -> bool:
        """Mirror the leader (`ready` once a whole state arrived) until this replica leads: True; or is asked
        to stop: False. RuntimeError if the election fails."""
        following = asyncio.create_task(self.run(), name="follow the leader")

        def synced(task: asyncio.Task) -> None:
            if not task.cancelled():
                ready.set()
                log.info("serving the leader's state", extra={"leader": self._elector.leader})

        mirrored = asyncio.create_task(self.mirror.synced.wait())
        mirrored.add_done_callback(synced)
        leading = asyncio.create_task(self._elector.wait_leading())
        stopping = asyncio.create_task(stop.wait())
        log.info("following until the leader lease is ours", extra={"identity": self.identity})
        try:
            await asyncio.wait({leading, stopping, election}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (mirrored, leading, stopping, following):
                task.cancel()
            await asyncio.gather(following, return_exceptions=True)
        if election.done() and not election.cancelled() and election.exception() is not None:
            raise RuntimeError(f"leader election failed: {election.exception()}")
        if not self._elector.is_leader:
            return False
        self.following = False
        log.info("leading", extra={"identity": self.identity})
        return True

    async def run(self) -> None:
        """Mirror the leader and report to it until cancelled."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REPORT_EVERY_S))
        mirror = asyncio.create_task(self.mirror.run(), name="xds mirror")
        report = asyncio.create_task(every(REPORT_EVERY_S, self._report, log, "gateway report"), name="report")
        try:
            while True:  # the Lease is read every few seconds by the elector; follow a new leader at once
                address = self.leader_xds()
                if address != self._followed:
                    log.info("following", extra={"leader": self._elector.leader, "xds": address})
                    self._followed = address
                    self.mirror.notify_upstream_changed()
                await asyncio.sleep(0.2)
        finally:
            for task in (mirror, report):
                task.cancel()
            await asyncio.gather(mirror, report, return_exceptions=True)
            await self._session.close()

    async def _report(self) -> None:
        api = self.leader_api()
        if api is None or self._session is None:
            return
        body = {"gateways": gateways_report(self._gateways), "ttl_s": REPORT_TTL_S}
        try:
            async with self._session.put(f"{self._scheme}://{api}/replicas/{self.identity}/gateways", json=body,
                                         headers=self._auth, ssl=self._ssl, **self._tls_name) as response:
                response.raise_for_status()
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            if self.last_report is None or self.last_report.get("error") is None:  # once per failure streak
                log.warning("cannot report gateways to the leader", extra={"api": api, "error": repr(err)})
            self.last_report = {"at": time.time(), "error": repr(err)}
            return
        self.last_report = {"at": time.time(), "gateways": len(body["gateways"]), "error": None}

    def status(self) -> dict:
        return {
            "role": "follower" if self.following else "leader",
            "identity": self.identity,
            "leader": self._elector.leader,
            "leader_xds": self.leader_xds(),
            "leader_api": self.leader_api(),
            "mirror": self.mirror.status(),
            "last_report": self.last_report,
            "gateways": self._gateways.status(),
        }

    @web.middleware
    async def forward(self, request: web.Request, handler) -> web.StreamResponse:
        """While following, the API is the leader's: forward the request there (a port-forward to any pod
        works)."""
        if not self.following or request.path in LOCAL_PATHS:
            return await handler(request)
        api = self.leader_api()
        if api is None or self._session is None:
            return web.json_response(
                {"error": f"replica {self.identity} follows a leader, and none holds the lease now: "
                          "try again in a few seconds (GET /replica shows what this replica sees)"}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        if request.method in ("GET", "HEAD") and is_ui_path(request.path):
            headers.update(self._auth)  # the dashboard's reads, let through here by the token or this replica's session
        try:
            async with self._session.request(
                request.method, f"{self._scheme}://{api}{request.path_qs}", data=await request.read(),
                ssl=self._ssl, **self._tls_name, headers=headers,
                timeout=aiohttp.ClientTimeout(total=300),
            ) as upstream:
                body = await upstream.read()
                headers = {"Content-Type": upstream.headers.get("Content-Type", "application/json"),
                           "X-Ferry-Leader": self._elector.leader or ""}
                return web.Response(status=upstream.status, body=body, headers=headers)
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            return web.json_response(
                {"error": f"replica {self.identity} cannot reach the leader's API at {api}: {err}"}, status=502)

