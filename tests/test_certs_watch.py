"""reconcile/certs.py without Envoy: what a gateway.tls change stages, and the watch of the certificate files (a pair
is published only whole; a half-written pair is neither published nor an error that stays)."""

from __future__ import annotations

import asyncio

import pytest

from ferry.reconcile import certs
from ferry.reconcile.certs import HttpsState, watch_certificates
from ferry.reconcile.publisher import Publisher
from ferry.routing import load_routes
from ferry.xds import https
from ferry.xds import resources as xds
from ferry.xds.cache import SnapshotCache

from .helpers import wait_until, write_routes
from .tls_certs import Ca, fingerprint, write_pair

pytestmark = pytest.mark.timeout(60)

CA = Ca.make()
NAME = "ferry-tls/hello.example.com"


def routes(tmp_path, extra: str = "") -> str:
    return ("gateway:\n  tls:\n" + extra + "    certificates:\n"
            "      - {hosts: [hello.example.com], cert: certs/hello.crt, key: certs/hello.key}\nservices: {}\n")


class Harness:
    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.cache = SnapshotCache()
        self.publisher = Publisher(self.cache)
        self.state = HttpsState(self.publisher)
        self.rotations: list[str] = []

    def apply(self, text: str, previous=None):
        loaded = load_routes(write_routes(self.tmp_path, text), previous=previous)
        self.state.configure(loaded)
        self.publisher.publish()
        return loaded

    async def rotate(self, tls, pairs) -> bool:
        if not self.state.rotate(tls, pairs):
            return False
        self.publisher.publish()
        self.rotations.append(pairs[0].sha256)
        return True

    def served(self) -> str:
        from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

        body = self.cache.group("default").stores[xds.SECRET].entries[NAME].body
        return fingerprint(secret_pb2.Secret.FromString(body).tls_certificate.certificate_chain.inline_bytes)


async def test_gateway_tls_changes_stage_the_listener_and_secrets_and_removing_it_removes_both(tmp_path):
    h = Harness(tmp_path)
    pair = CA.issue("hello.example.com", "www.example.com")
    write_pair(tmp_path / "certs", "hello", pair)
    loaded = h.apply(routes(tmp_path))
    stores = h.cache.group("default").stores
    assert set(stores[xds.SECRET].entries) == {NAME}
    assert stores[xds.LISTENER].entries[https.HTTPS_LISTENER_NAME].refs == {NAME}
    assert h.served() == fingerprint(pair[0]) and h.state.redirect() is None
    version = stores[xds.LISTENER].entries[https.HTTPS_LISTENER_NAME].version
    loaded = h.apply(routes(tmp_path, "    redirect: true\n"), loaded)
    assert h.state.redirect() == xds.HttpsRedirect(frozenset({"hello.example.com"}), 8443)
    assert stores[xds.LISTENER].entries[https.HTTPS_LISTENER_NAME].version == version  # the listener is the same
    h.apply("gateway: {}\nservices: {}\n", loaded)
    assert not stores[xds.SECRET].entries and https.HTTPS_LISTENER_NAME not in stores[xds.LISTENER].entries
    assert h.state.status() == {}


async def test_half_written_pairs_are_never_published_and_a_lasting_problem_is_reported_then_cleared(tmp_path):
    assert certs.REPORT_AFTER_S >= 1.0  # a second for the key to follow its certificate
    h = Harness(tmp_path)
    write_pair(tmp_path / "certs", "hello", CA.issue("hello.example.com"))
    h.apply(routes(tmp_path))
    watcher = asyncio.create_task(watch_certificates(h.state, h.rotate))
    try:
        await asyncio.sleep(0.3)  # the watch is in place (its first read changed nothing)
        assert h.rotations == []

        # The certificate first, the key 200 ms later: the mismatch in between is neither served nor reported.
        new = CA.issue("hello.example.com")
        (tmp_path / "certs" / "hello.crt").write_bytes(new[0])
        await asyncio.sleep(0.2)
        assert h.rotations == [] and h.state.error is None
        (tmp_path / "certs" / "hello.key").write_bytes(new[1])
        await wait_until(lambda: h.rotations == [fingerprint(new[0])], 5, "the whole pair published")
        assert h.served() == fingerprint(new[0])

        # A key that stays wrong: reported (at its place in the routes file), the last good pair still served.
        (tmp_path / "certs" / "hello.key").write_bytes(CA.issue("hello.example.com")[1])
        await wait_until(lambda: h.state.error is not None, 5, "the error")
        assert "routes.yaml:4: gateway.tls.certificates[0].key: the key in certs/hello.key does not match" \
               in h.state.error
        assert h.served() == fingerprint(new[0]) and len(h.rotations) == 1

        # A whole pair again: published, and the error is gone.
        newer = CA.issue("hello.example.com")
        write_pair(tmp_path / "certs", "hello", newer)
        await wait_until(lambda: h.served() == fingerprint(newer[0]), 5, "the new pair")
        assert h.state.error is None and h.state.status()["certificates"][0]["sha256"] == fingerprint(newer[0])
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def test_the_watch_follows_a_new_file_when_gateway_tls_names_it(tmp_path):
    h = Harness(tmp_path)
    write_pair(tmp_path / "certs", "hello", CA.issue("hello.example.com"))
    loaded = h.apply(routes(tmp_path))
    watcher = asyncio.create_task(watch_certificates(h.state, h.rotate))
    try:
        write_pair(tmp_path / "other", "b", CA.issue("hello.example.com"))
        h.apply(routes(tmp_path).replace("certs/hello.", "other/b."), loaded)
        await asyncio.sleep(0.3)
        newer = CA.issue("hello.example.com")
        write_pair(tmp_path / "other", "b", newer)
        await wait_until(lambda: h.served() == fingerprint(newer[0]), 5, "the file gateway.tls names now")
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def test_request_logs_or_traces_changing_re_put_the_https_listener(tmp_path):
    h = Harness(tmp_path)
    write_pair(tmp_path / "certs", "hello", CA.issue("hello.example.com"))
    loaded = load_routes(write_routes(tmp_path, routes(tmp_path)))
    entries = h.cache.group("default").stores[xds.LISTENER].entries
    assert h.state.configure(loaded) is True
    h.publisher.publish()
    plain = entries[https.HTTPS_LISTENER_NAME]
    logged = xds.Observe(access_log="stdout", tracing=True)
    assert h.state.configure(loaded, logged) is False  # the same gateway.tls: route tables stay
    h.publisher.publish()
    assert entries[https.HTTPS_LISTENER_NAME] != plain
    assert "envoy.access_loggers.stdout".encode() in entries[https.HTTPS_LISTENER_NAME].body
    assert entries[https.HTTPS_LISTENER_NAME].refs == {NAME}
    h.state.configure(loaded)
    h.publisher.publish()
    assert entries[https.HTTPS_LISTENER_NAME] == plain
