"""HTTPS at the gateway, end to end: `ferry up` with gateway.tls, a real Envoy, certificates made here (a CA and leaf
certificates with DNS names), clients that trust only that CA and choose the certificate by SNI."""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import ssl
import time

import aiohttp
import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from ferry.cli import format_status
from ferry.envoy.admin import EnvoyAdmin
from ferry.xds import https
from ferry.xds import resources as xds

from .ferry_process import FerryProcess, hello
from .helpers import free_port, h2_exchange, wait_until
from .tls_certs import Ca, fingerprint, write_atomically, write_pair
from .xds_client import delta, node, read

pytestmark = pytest.mark.timeout(180)

HOSTS = ("hello.example.com", "*.example.com")


class Tls:
    """The test's CA, certificate files beside routes.yaml, and TLS clients of the gateway's HTTPS listener."""

    def __init__(self, f: FerryProcess):
        self.f = f
        self.ca = Ca.make()
        self.port = free_port()
        self.certs = f.workdir / "certs"

    def issue(self, name: str, *hosts: str) -> str:
        """A new certificate for `hosts` in certs/<name>.crt and .key; its fingerprint."""
        pair = self.ca.issue(*hosts)
        write_pair(self.certs, name, pair)
        return fingerprint(pair[0])

    def block(self, *entries: tuple[str, tuple[str, ...]], extra: str = "") -> str:
        """gateway.tls with an entry per (file name, hosts)."""
        lines = [f"    - {{hosts: {json.dumps(list(hosts))}, cert: certs/{name}.crt, key: certs/{name}.key}}"
                 for name, hosts in entries]
        return f"tls:\n  listen: 127.0.0.1:{self.port}\n{extra}  certificates:\n" + "\n".join(lines)

    async def served(self, sni: str) -> str:
        """The fingerprint of the certificate a new handshake with `sni` gets."""
        _, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ca.client_context(),
                                                  server_hostname=sni)
        try:
            return fingerprint(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
        finally:
            writer.close()

    async def get(self, session: aiohttp.ClientSession, sni: str, host: str | None = None, path: str = "/headers"):
        async with session.get(f"https://127.0.0.1:{self.port}{path}", headers={"Host": host or sni},
                               ssl=self.ca.client_context(), server_hostname=sni, allow_redirects=False) as response:
            return response.status, await response.text(), response.headers

    async def refused(self, sni: str | None) -> bool:
        """Whether a handshake (without checking the certificate) with `sni` (None: no SNI) fails."""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=context, server_hostname=sni or "")
        except (ssl.SSLError, ConnectionError, OSError):
            return True
        writer.close()
        return False


def h2_get(port: int, context: ssl.SSLContext, sni: str, path: str = "/headers") -> tuple[str, dict, bytes]:
    """One HTTP/2 request over TLS (ALPN h2) with the h2 library: (negotiated protocol, response headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as sock:
            protocol = sock.selected_alpn_protocol()
            head, body = h2_exchange(sock, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                            (":authority", sni)])
    return protocol, {k.decode(): v.decode() for k, v in head.items()}, body


def service_with_hosts(*hosts: str, message: str = "v1") -> str:
    return hello(message).replace("hello:\n", f"hello:\n      hosts: {json.dumps(list(hosts))}\n", 1)


async def started(f: FerryProcess, tls: Tls, services: str, block: str) -> None:
    f.write_routes(services, gateway=block)
    await f.start()
    await f.wait_converged()


@pytest.mark.parametrize("delta_xds", [True, False], ids=["delta", "sotw"])
async def test_certificates_are_chosen_by_sni_and_served_over_http1_and_h2(ferry, delta_xds):
    f = ferry(delta=delta_xds)
    tls = Tls(f)
    example, other = tls.issue("example", *HOSTS), tls.issue("other", "other.test")
    await started(f, tls, service_with_hosts("hello.example.com", "other.test"),
                  tls.block(("example", HOSTS), ("other", ("other.test",))))
    assert await tls.served("hello.example.com") == example
    assert await tls.served("api.example.com") == example  # the wildcard
    assert await tls.served("other.test") == other
    # No SNI, or one no certificate covers: no filter chain, the handshake fails (no certificate is shown).
    assert await tls.refused(None) and await tls.refused("nobody.test")
    async with aiohttp.ClientSession() as session:
        status, body, headers = await tls.get(session, "other.test")
        assert status == 200 and headers["x-revision"] == "hello-00001"
        seen = json.loads(body)
        assert seen["x-forwarded-proto"] == "https" and seen["forwarded"] == "for=127.0.0.1;proto=https"
        # A client cannot claim https on the plain listener: Envoy sets the header at the edge.
        async with session.get(f"{f.gateway}/headers", headers={"Host": "hello.localhost",
                                                                "X-Forwarded-Proto": "https"}) as response:
            seen = await response.json()
        assert seen["x-forwarded-proto"] == "http" and seen["forwarded"] == "for=127.0.0.1;proto=http"
    protocol, headers, body = await asyncio.to_thread(h2_get, tls.port, tls.ca.client_context(alpn=("h2", "http/1.1")),
                                                      "hello.example.com")
    assert protocol == "h2" and headers[":status"] == "200" and headers["x-revision"] == "hello-00001"
    assert json.loads(body)["x-forwarded-proto"] == "https"
    status = await f.status()
    assert "SDS" in status["gateways"][0]["acked"] and status["gateways"][0]["last_nack"] is None
    assert {c["name"]: c["sha256"] for c in status["config"]["certificates"]} == {
        "ferry-tls/hello.example.com": example, "ferry-tls/other.test": other}
    assert "https: hello.example.com, *.example.com (until " in format_status(status)


class HttpsLoad:
    """Clients of the HTTPS listener until stopped: some on keep-alive connections, some on a new connection (a new
    handshake) per request; every failure is kept."""

    def __init__(self, tls: Tls, sni: str, *, keep_alive: int = 4, fresh: int = 4):
        self.tls, self.sni = tls, sni
        self.counts: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._workers = (keep_alive, fresh)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._sessions: list[aiohttp.ClientSession] = []

    async def __aenter__(self) -> HttpsLoad:
        keep_alive, fresh = self._workers
        for kind, n, force_close in (("keep-alive", keep_alive, False), ("new", fresh, True)):
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=force_close, limit=n))
            self._sessions.append(session)
            self._tasks += [asyncio.create_task(self._worker(session, kind)) for _ in range(n)]
        return self

    async def _worker(self, session: aiohttp.ClientSession, kind: str) -> None:
        while not self._stop.is_set():
            try:
                status, _, _ = await self.tls.get(session, self.sni, path="/")
                self.counts[kind] += 1
                if status != 200:
                    self.failures.append(f"{kind}: HTTP {status}")
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
                self.failures.append(f"{kind}: {type(err).__name__}: {err}")

    async def wait_for(self, requests: int) -> None:
        target = sum(self.counts.values()) + requests
        await wait_until(lambda: sum(self.counts.values()) >= target, 30, f"{requests} more requests")

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in self._sessions:
            await session.close()


async def _listener_stats(f: FerryProcess) -> dict[str, int]:
    _, body = await EnvoyAdmin("127.0.0.1", f.admin_port).get(
        "/stats?filter=^listener_manager\\.(listener_modified|listener_in_place_updated|total_filter_chains_draining)$")
    return {k: int(v) for k, v in (line.split(": ") for line in body.decode().strip().splitlines())}


async def test_rotation_under_load_drops_nothing_and_new_handshakes_see_it_within_a_second(ferry):
    f = ferry()
    tls = Tls(f)
    served = tls.issue("hello", "hello.example.com")
    await started(f, tls, service_with_hosts("hello.example.com"), tls.block(("hello", ("hello.example.com",))))
    assert await tls.served("hello.example.com") == served
    listeners = await _listener_stats(f)
    assert set(listeners) == {"listener_manager.listener_modified", "listener_manager.listener_in_place_updated",
                              "listener_manager.total_filter_chains_draining"}
    took = []
    async with HttpsLoad(tls, "hello.example.com") as load:
        await load.wait_for(100)
        for round_ in range(4):
            pair = tls.ca.issue("hello.example.com")
            wanted = fingerprint(pair[0])
            started_at = time.monotonic()
            if round_ % 2:  # written in place, the certificate first, the key a while later: half a pair meanwhile
                (tls.certs / "hello.crt").write_bytes(pair[0])
                await asyncio.sleep(0.05)
                (tls.certs / "hello.key").write_bytes(pair[1])
            else:  # written by rename, as editors and Kubernetes do
                write_pair(tls.certs, "hello", pair)
            while (fingerprint_now := await tls.served("hello.example.com")) != wanted:
                assert time.monotonic() - started_at < 1.0, f"still serving {fingerprint_now[:12]} after 1 s"
                await asyncio.sleep(0.005)
            took.append(time.monotonic() - started_at)
            await load.wait_for(50)
    assert not load.failures, load.failures[:10]
    assert load.counts["keep-alive"] > 100 and load.counts["new"] > 50, load.counts
    assert max(took) < 1.0, took
    # A rotation is an SDS update: the listener was not modified, and no filter chain drained.
    assert await _listener_stats(f) == listeners
    config = (await f.status())["config"]
    assert config["certificates_error"] is None and config["certificates"][0]["sha256"] == wanted


async def test_a_mismatched_key_is_rejected_with_its_place_and_the_old_certificate_keeps_serving(ferry):
    f = ferry()
    tls = Tls(f)
    served = tls.issue("hello", "hello.example.com")
    block = tls.block(("hello", ("hello.example.com",)))
    await started(f, tls, service_with_hosts("hello.example.com"), block)

    # The key file alone is replaced by another certificate's key.
    write_atomically(tls.certs / "hello.key", tls.ca.issue("hello.example.com")[1])

    async def reported() -> str | None:
        return (await f.status())["config"]["certificates_error"]

    error = await wait_until(reported, 10, "the certificate error in status")
    assert f"{f.routes}:" in error and "gateway.tls.certificates[0].key: the key in certs/hello.key does not match " \
                                      "the certificate in certs/hello.crt" in error
    assert await tls.served("hello.example.com") == served
    assert "certificate files rejected" in f.log_text and "BEGIN" not in f.log_text

    # A whole pair again: served, and the error is gone.
    wanted = tls.issue("hello", "hello.example.com")
    await wait_until(lambda: _serves(tls, "hello.example.com", wanted), 5, "the new certificate")
    assert await reported() is None

    # A routes.yaml edit naming a mismatched pair is rejected whole: nothing of it is served.
    write_pair(tls.certs, "bad", (tls.ca.issue("bad.example.com")[0], tls.ca.issue("bad.example.com")[1]))
    f.write_routes(service_with_hosts("hello.example.com"),
                   gateway=tls.block(("hello", ("hello.example.com",)), ("bad", ("bad.example.com",))))

    async def config_error() -> str | None:
        return (await f.status())["config"]["last_error"]

    error = await wait_until(config_error, 10, "the rejected file in status")
    assert "routes.yaml:" in error and "gateway.tls.certificates[1].key: the key in certs/bad.key does not match" in error
    assert await tls.served("hello.example.com") == wanted
    assert await tls.refused("bad.example.com")


async def _serves(tls: Tls, sni: str, wanted: str) -> bool:
    return await tls.served(sni) == wanted


async def test_redirect_sends_plain_http_for_tls_hosts_to_https_at_its_port(ferry):
    f = ferry()
    tls = Tls(f)
    tls.issue("example", *HOSTS)
    services = service_with_hosts("hello.example.com") + """
    other:
      template:
        endpoints: [127.0.0.1:9]
"""
    await started(f, tls, services, tls.block(("example", HOSTS), extra="  redirect: true\n"))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{f.gateway}/a/b?c=d", headers={"Host": "hello.example.com"},
                               allow_redirects=False) as response:
            assert response.status == 301
            assert response.headers["location"] == f"https://hello.example.com:{tls.port}/a/b?c=d"
        async with session.get(f"{f.gateway}/", headers={"Host": "hello.localhost"}) as response:
            assert response.status == 200  # a host no certificate covers stays plain
        status, _, headers = await tls.get(session, "hello.example.com", path="/")
        assert status == 200 and headers["x-revision"] == "hello-00001"
        # redirect: false again: plain HTTP is served for every host
        f.write_routes(services, gateway=tls.block(("example", HOSTS)))
        await wait_until(lambda: _plain_status(session, f, "hello.example.com", 200), 10, "no redirect")


async def _plain_status(session: aiohttp.ClientSession, f: FerryProcess, host: str, expected: int) -> bool:
    async with session.get(f"{f.gateway}/", headers={"Host": host}, allow_redirects=False) as response:
        return response.status == expected


async def test_a_remote_group_gets_the_keys_only_once_listed_in_tls_groups(ferry):
    f = ferry()
    tls = Tls(f)
    served = tls.issue("example", *HOSTS)
    services = service_with_hosts("hello.example.com")
    await started(f, tls, services, tls.block(("example", HOSTS)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{f.xds_port}") as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        await call.write(delta(xds.LISTENER, node_=node("edge-1", "edge")))
        lds = await read(call)
        assert {r.name for r in lds.resources} == {xds.LISTENER_NAME}
        await call.write(delta(xds.LISTENER, nonce=lds.nonce))
        await call.write(delta(xds.SECRET, subscribe=["*", "ferry-tls/hello.example.com"]))
        sds = await read(call)
        assert sds.type_url == xds.SECRET and not sds.resources
        await call.write(delta(xds.SECRET, nonce=sds.nonce))

        # Listed (with default, ferry's own): the HTTPS listener and the key reach it.
        f.write_routes(services, gateway=tls.block(("example", HOSTS), extra="  groups: [default, edge]\n"))
        got = {}
        while set(got) != {xds.LISTENER, xds.SECRET}:
            response = await read(call)
            got[response.type_url] = response
            await call.write(delta(response.type_url, nonce=response.nonce))
        assert https.HTTPS_LISTENER_NAME in {r.name for r in got[xds.LISTENER].resources}
        assert [r.name for r in got[xds.SECRET].resources] == ["ferry-tls/hello.example.com"]
        call.cancel()
    assert await tls.served("hello.example.com") == served  # ferry's own gateway serves it still
